import pytest

from tests.harness import BusClient, Network, new_home


@pytest.fixture
def home(tmp_path):
    return new_home(tmp_path / "home")


@pytest.fixture
def network(home):
    """Broker, Vault and EventLogger running as real processes, each seen healthy."""
    net = Network(home).start_healthy("broker", "vault", "event_logger")
    yield net
    net.close()


@pytest.fixture
def clients():
    """Make BusClients that are closed at the end of the test."""
    made = []

    def make(home, name, prefixes=(), **kw):
        c = BusClient(home, name, prefixes, **kw)
        made.append(c)
        return c
    yield make
    failures = []
    for c in made:
        try:
            c.close()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
