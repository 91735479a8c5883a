import pytest

from tests import pg
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


# -- PostgreSQL ----------------------------------------------------------------------------------
# Once per run (in the xdist controller: the workers inherit DCTRL_TEST_PG_URL): the machine's
# server if it answers, else a throwaway one (tests/pg.py), stopped at the end. In CI the
# PostgreSQL tests are never skipped: without either the run fails here, saying why.

_PG = pytest.StashKey[dict]()


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has done it
        return
    state = config.stash[_PG] = {"server": None, "note": None, "warning": None}
    try:
        _url, state["server"], state["note"] = pg.ensure()
    except pg.Unavailable as exc:
        if pg.in_ci():
            pytest.exit(f"{exc} In CI the PostgreSQL tests are never skipped.",
                        returncode=pytest.ExitCode.TESTS_FAILED)
        state["note"] = state["warning"] = f"WARNING: {exc} The PostgreSQL tests will fail."


def pytest_report_header(config):
    state = config.stash.get(_PG, None)
    return state["note"] if state else None


def pytest_terminal_summary(terminalreporter, config):
    state = config.stash.get(_PG, None)
    if state and state["warning"]:
        terminalreporter.write_line(state["warning"], yellow=True, bold=True)


def pytest_unconfigure(config):
    state = config.stash.get(_PG, None)
    if state and state["server"] is not None:
        state["server"].stop()
