import pytest

from tests.harness import BusClient, Network, new_home, topic_is


@pytest.fixture
def home(tmp_path):
    return new_home(tmp_path / "home")


@pytest.fixture
def network(home):
    """Broker, Vault and EventLogger running as real processes, each seen healthy."""
    net = Network(home).start("broker", "vault", "event_logger")
    watcher = BusClient(home, "admin", prefixes=["health"])
    try:
        for name in ("broker", "vault", "event_logger"):
            watcher.expect(topic_is(f"health.{name}", status="ok"), timeout=20, what=f"health.{name}")
    finally:
        watcher.close()
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
    for c in made:
        c.close()
