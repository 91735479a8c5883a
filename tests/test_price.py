"""Prices: the parsers against the real APIs' shapes, every fault over real HTTP, the
aggregation rule (with hypothesis), the PriceNotifier polling the simulator, and the
notifier on the real bus with `dctrl price show`."""

import argparse
import json
import logging
import threading
import types
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from actors import price_sources as ps
from actors.price_notifier import PriceNotifier
from actors.runtime import Runtime
from keys.home import Home
from proto.errors import ConfigError, DctrlError
from proto.topics import REGISTRY
from scripts.cli import price as price_cli
from scripts.cli import sim as sim_cli
from scripts.sim import exchanges as sim_exchanges
from tests.harness import dctrl, free_port, topic_is, wait_for

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "prices"
PRICE = Decimal("128400.00")
FX = Decimal("1.382")
SOURCE_CLASSES = {"kraken": ps.Kraken, "coinbase": ps.Coinbase, "bitstamp": ps.Bitstamp,
                  "coingecko": ps.CoinGecko, "fx": ps.BankOfCanadaFX}


def fixture_bytes(name) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture(scope="module")
def sim_server():
    with sim_exchanges.running(0) as server:
        yield server


@pytest.fixture
def sim(sim_server):
    """The simulator, reset to every source ok at the default price."""
    state = sim_server.state
    state.set("all", {"mode": "ok", "price": str(PRICE), "delay": 10})
    state.set("fx", {"price": None})
    with state.lock:
        state.fx = FX
        for s in state.sources.values():
            s["requests"] = 0
    return sim_server


def set_sim(sim, source, **change):
    """Through the control API, as `dctrl sim exchange-set` does."""
    req = urllib.request.Request(f"{sim.url}/_sim/{source}", data=json.dumps(change).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


# -- parsers against the fixture files -------------------------------------------------

def test_parsers_read_the_real_response_shapes_as_decimals():
    kraken = ps.Kraken("http://x").parse(fixture_bytes("kraken_ticker_xbtcad.json"))
    coinbase = ps.Coinbase("http://x").parse(fixture_bytes("coinbase_spot_btc_cad.json"))
    bitstamp = ps.Bitstamp("http://x").parse(fixture_bytes("bitstamp_ticker_btcusd.json"))
    coingecko = ps.CoinGecko("http://x").parse(fixture_bytes("coingecko_simple_price_cad.json"))
    for value in (kraken, coinbase, bitstamp, coingecko):
        assert type(value) is Decimal
    # Decimal == float compares exactly, so a float parse of 128377.41 would fail here.
    assert (kraken, coinbase, bitstamp, coingecko) == (
        Decimal("128430.00000"), Decimal("128410.37"), Decimal("92911"), Decimal("128377.41"))
    # Bitstamp is USD: times the FX rate, exactly.
    fx = ps.FxRate(FX, "2026-11-24", 0)
    assert ps.to_cad(ps.Quote("bitstamp", bitstamp, 0, "USD"), fx).price == Decimal("128403.002")
    # The fixtures agree with each other: the median of all four.
    quotes = [ps.Quote("kraken", kraken, 0), ps.Quote("coinbase", coinbase, 0), ps.Quote("coingecko", coingecko, 0),
              ps.to_cad(ps.Quote("bitstamp", bitstamp, 0, "USD"), fx)]
    agg = ps.aggregate(quotes, now=1)
    assert agg.price == Decimal("128406.69") and agg.outliers == [] and len(agg.used) == 4


def test_error_fixtures_are_clear_refusals():
    with pytest.raises(ps.SourceError) as e:
        ps.Kraken("http://x").parse(fixture_bytes("kraken_error_unknown_pair.json"))
    assert e.value.source == "kraken" and "EQuery:Unknown asset pair" in str(e.value)
    # A 429 body served with HTTP 200 is still no price.
    with pytest.raises(ps.SourceError, match="coinbase: missing field data"):
        ps.Coinbase("http://x").parse(fixture_bytes("coinbase_error_rate_limited.json"))
    with pytest.raises(ps.SourceError, match="coingecko: missing field bitcoin"):
        ps.CoinGecko("http://x").parse(fixture_bytes("coingecko_error_rate_limited.json"))


def _shape(doc):
    """Keys and value kinds, not values: the structure a parser relies on."""
    if isinstance(doc, dict):
        return {k: _shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_shape(v) for v in doc]
    return "str" if isinstance(doc, str) else "number"


@pytest.mark.parametrize("source,ok,errors", [
    ("kraken", "kraken_ticker_xbtcad.json", {"error": "kraken_error_unknown_pair.json"}),
    ("coinbase", "coinbase_spot_btc_cad.json", {"error": "coinbase_error_rate_limited.json",
                                                "rate_limited": "coinbase_error_rate_limited.json"}),
    ("bitstamp", "bitstamp_ticker_btcusd.json", {}),
    ("coingecko", "coingecko_simple_price_cad.json", {"error": "coingecko_error_rate_limited.json",
                                                      "rate_limited": "coingecko_error_rate_limited.json"}),
])
def test_simulator_answers_in_the_fixtures_shapes(source, ok, errors):
    fixture = json.loads(fixture_bytes(ok), parse_float=Decimal)
    body = json.loads(sim_exchanges.ok_body(source, PRICE, FX, 1795612345), parse_float=Decimal)
    assert _shape(body) == _shape(fixture)
    for mode, name in errors.items():
        assert json.loads(sim_exchanges.fault_answer(source, mode)[2]) == json.loads(fixture_bytes(name))


# -- every fault over real HTTP ----------------------------------------------------------

FAULTS = {
    "down": dict.fromkeys(SOURCE_CLASSES, "connection closed without a response"),
    "slow": dict.fromkeys(SOURCE_CLASSES, "timed out after 0.3 s"),
    "html": dict.fromkeys(SOURCE_CLASSES, "HTML instead of JSON"),
    "truncated": dict.fromkeys(SOURCE_CLASSES, "truncated JSON"),
    "zero": {**dict.fromkeys(SOURCE_CLASSES, "not positive"), "fx": "implausible USD->CAD rate 0.0000"},
    "error": {"kraken": "API error: EQuery:Unknown asset pair", "coinbase": "HTTP 429: Too many requests",
              "bitstamp": "API error: Invalid currency pair", "coingecko": "HTTP 429: You've exceeded the Rate Limit",
              "fx": "HTTP 404: Series not found"},
    "rate_limited": {**dict.fromkeys(SOURCE_CLASSES, "HTTP 429"), "kraken": "API error: EAPI:Rate limit exceeded"},
}


def test_every_source_fetches_from_the_simulator(sim):
    for name, cls in SOURCE_CLASSES.items():
        got = cls(sim.url, timeout=2).fetch()
        expected = {"fx": FX, "bitstamp": (PRICE / FX).quantize(Decimal(1))}.get(name, PRICE)
        assert (got.rate if name == "fx" else got.price) == expected


@pytest.mark.parametrize("mode", sorted(FAULTS))
@pytest.mark.parametrize("source", sorted(SOURCE_CLASSES))
def test_each_fault_is_a_source_error_with_its_reason(sim, source, mode):
    set_sim(sim, source, mode=mode, delay=5)
    with pytest.raises(ps.SourceError) as e:
        SOURCE_CLASSES[source](sim.url, timeout=0.3).fetch()
    assert e.value.source == source
    assert FAULTS[mode][source] in e.value.reason, e.value.reason


def test_refused_connection_absurd_price_and_odd_bodies(sim):
    with pytest.raises(ps.SourceError, match="kraken: connection refused"):
        ps.Kraken(f"http://127.0.0.1:{free_port()}", timeout=1).fetch()
    set_sim(sim, "coinbase", price="100000000")
    with pytest.raises(ps.SourceError, match=r"coinbase: implausible price 100000000.00 CAD: outside 1000..10000000"):
        ps.Coinbase(sim.url, timeout=1).fetch()
    # The bounds are the caller's: a wider one accepts it.
    bounds = (Decimal(1), Decimal(10) ** 9)
    assert ps.Coinbase(sim.url, timeout=1, bounds=bounds).fetch().price == Decimal("100000000.00")
    with pytest.raises(ps.SourceError, match=r"kraken: missing field result.XXBTZCAD"):
        ps.Kraken("http://x").parse(b'{"error":[],"result":{"XXBTZUSD":{"c":["1","1"]}}}')
    with pytest.raises(ps.SourceError, match="coingecko: not JSON"):
        ps.CoinGecko("http://x").parse(b'{"bitcoin":{"cad":NaN}}')
    with pytest.raises(ps.SourceError, match="bitcoin.cad is str, expected a JSON number"):
        ps.CoinGecko("http://x").parse(b'{"bitcoin":{"cad":"128000"}}')
    with pytest.raises(ps.SourceError, match="data.amount .* not a number"):
        ps.Coinbase("http://x").parse(b'{"data":{"amount":"12,8000.00"}}')
    with pytest.raises(ps.SourceError, match="fx: observation of 2026-01-02 is more than 10 days old"):
        ps.BankOfCanadaFX("http://x").parse(b'{"observations":[{"d":"2026-01-02","FXUSDCAD":{"v":"1.3820"}}]}',
                                            now=1795612345)


# -- aggregation -----------------------------------------------------------------------------

def q(source, price, at=1000.0):
    return ps.Quote(source, Decimal(price), at)


def test_median_is_exact_decimal_and_quantized_half_even():
    agg = ps.aggregate([q("a", "100000.10"), q("b", "100000.20")], now=1000)
    assert agg.price == Decimal("100000.15") and str(agg.price) == "100000.15"
    assert ps.aggregate([q("a", "1000.005"), q("b", "1000.005")], now=1000).price == Decimal("1000.00")
    assert ps.aggregate([q("a", "1000.015"), q("b", "1000.015")], now=1000).price == Decimal("1000.02")
    assert ps.cad_string(Decimal("1.3E+5")) == "130000.00"
    with pytest.raises(TypeError):
        ps.aggregate([ps.Quote("a", 128400.0, 1000), q("b", "128400")], now=1000)


def test_outlier_is_dropped_and_the_others_used():
    quotes = [q("kraken", "128400"), q("coinbase", "128410"), q("bitstamp", "128390"), q("coingecko", "166920")]
    agg = ps.aggregate(quotes, now=1000)
    assert agg.outliers == ["coingecko"] and agg.used == ["kraken", "coinbase", "bitstamp"]
    assert agg.price == Decimal("128400.00")
    # Exactly outlier_pct away is kept; a hair beyond is not.
    edge = [q("a", "100"), q("b", "100"), q("c", "110")]
    assert ps.aggregate(edge, now=1000, outlier_pct=10).used == ["a", "b", "c"]
    assert ps.aggregate([*edge[:2], q("c", "110.01")], now=1000, outlier_pct=10).used == ["a", "b"]


def test_too_few_fresh_or_agreeing_sources_is_stale():
    old = q("coinbase", "128400", at=1000 - 121)
    agg = ps.aggregate([q("kraken", "128400"), old], now=1000, max_age=120)
    assert agg.stale and agg.fresh == ["kraken"] and agg.reason == "1 fresh source, 2 needed"
    assert not ps.aggregate([q("kraken", "128400"), q("coinbase", "128400", at=880)], now=1000).stale
    # Two sources 30% apart: neither can be believed.
    agg = ps.aggregate([q("kraken", "100000"), q("coinbase", "130000")], now=1000)
    assert agg.stale and "disagree" in agg.reason and agg.used == []
    assert ps.aggregate([q("a", "1"), q("b", "1"), q("c", "1")], now=1000, min_sources=4).stale


# Quotes around a common centre, as real sources give them: most within 2 % of it, the others up
# to 80 % away, so that most examples get a price (median, cents, the outlier rule) and many drop
# an outlier or find the sources disagreeing. Up to 8 quotes, more often 4 or more; most fresh,
# some past max_age. (Prices drawn each from anywhere in 1000..10^7 CAD, and short lists, left
# about 12 % of examples priced.) `--hypothesis-show-statistics` shows the share of each outcome:
# about 60 to 70 % priced, 15 to 25 % of all with an outlier dropped.
CENTRES = st.decimals(min_value=Decimal(1000), max_value=Decimal(10_000_000), places=2)
OFFSETS_BP = st.one_of(st.integers(-200, 200), st.integers(-8000, 8000))  # basis points from the centre
COUNTS = st.one_of(st.integers(0, 8), st.integers(4, 8))
AGES = st.one_of(st.integers(0, 120), st.integers(0, 240))


@settings(max_examples=300, deadline=None)
@given(n=COUNTS, centre=CENTRES, offsets=st.lists(OFFSETS_BP, min_size=8, max_size=8),
       ages=st.lists(AGES, min_size=8, max_size=8), pct=st.integers(1, 50), min_sources=st.integers(2, 4))
def test_aggregate_properties(n, centre, offsets, ages, pct, min_sources):
    prices = [(centre + centre * bp / 10_000).quantize(Decimal("0.00001")) for bp in offsets[:n]]
    quotes = [ps.Quote(f"s{i}", p, 1000 - ages[i]) for i, p in enumerate(prices)]
    agg = ps.aggregate(quotes, now=1000, max_age=120, outlier_pct=pct, min_sources=min_sources)
    fresh = [x.price for x in quotes if ages[int(x.source[1:])] <= 120]
    assert agg.fresh == [x.source for x in quotes if ages[int(x.source[1:])] <= 120]
    if len(fresh) < min_sources:
        event("stale: too few fresh quotes")
        assert agg.stale
        return
    assert min(fresh) <= ps.median(fresh) <= max(fresh)
    if agg.stale:
        event("stale: sources disagree")
        assert len(agg.used) < min_sources
        return
    event(f"priced, {'with' if agg.outliers else 'without'} outliers")
    # The price is a Decimal in cents, within the fresh quotes' range (up to the rounding).
    assert type(agg.price) is Decimal and agg.price.as_tuple().exponent == -2
    assert min(fresh) - Decimal("0.005") <= agg.price <= max(fresh) + Decimal("0.005")
    assert len(agg.used) >= min_sources and set(agg.used) <= set(agg.fresh)
    center = ps.median(fresh)
    for x in quotes:
        if x.source in agg.used:
            assert abs(x.price - center) * 100 <= center * pct
    assert f"{agg.price:f}" == ps.cad_string(agg.price)


# -- the notifier polling the simulator (no bus) ------------------------------------------------

class RecordingNotifier(PriceNotifier):
    """Records what it would publish, each body checked against its topic's schema."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sent = []

    def publish(self, topic, body):
        REGISTRY.schema_for(topic).check(body)
        self.sent.append((topic, body))


def price_config(url, sources=True, **over) -> str:
    # A generous request timeout: on a loaded 2-core machine a loopback answer took longer than
    # 0.5 s, and the source counted as failed (a CI failure). Tests of timeouts set their own.
    cfg = {"poll_interval": 0.05, "timeout": 5, **over}
    lines = ["[price]"] + [f"{k} = {json.dumps(v)}" for k, v in cfg.items()]
    if sources:
        lines += ["[price.sources]"] + [f'{name} = "{url}"' for name in SOURCE_CLASSES]
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_notifier(tmp_path, sim):
    pool = ThreadPoolExecutor(8)

    def make(clock=None, **cfg):
        root = tmp_path / f"home{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        (root / "config.toml").write_text(price_config(sim.url, **cfg))
        n = RecordingNotifier(Home(root), **({"clock": clock} if clock else {}))
        n.runtime = types.SimpleNamespace(pool=pool)  # tick() submits here, as to the runtime's pool
        return n
    yield make
    pool.shutdown(wait=True)


def poll(n):
    """Run the notifier's job as the scheduler would until one more poll has finished and
    published, with none under way after it: the test may change the sim before the next.
    (It used to tick before looking: a finished poll let it start the next at once, whose
    fetches then raced the test's next change of the sim, a flake seen in CI.)"""
    done, sent = n.polls, len(n.sent)

    def finished():
        if n.polls == done:
            n.tick()  # (starts one only when none is under way)
            return False
        return len(n.sent) > sent and not n._polling

    wait_for(finished, what="a poll to finish")
    return n.sent[-1]


def by_name(body):
    return {s["name"]: s for s in body["sources"]}


def test_notifier_publishes_the_median_with_every_sources_health(make_notifier):
    n = make_notifier()
    topic, body = poll(n)
    assert topic == "price.btc_cad" and body["cad_per_btc"] == "128400.00" and body["used"] == 4
    src = by_name(body)
    assert set(src) == {"kraken", "coinbase", "bitstamp", "coingecko"}
    assert all(s["fresh"] and s["used"] and s["error"] is None and s["age_s"] == 0 for s in src.values())
    bitstamp = Decimal(src["bitstamp"]["price"])
    assert bitstamp == (Decimal("92909") * FX).quantize(Decimal("0.01"))  # USD last times 1.382
    status, detail = n.health()
    assert status == "ok" and detail.startswith("128400.00 CAD") and "fx 1.3820" in detail
    assert all(name in detail for name in src)


def test_one_source_30_percent_away_is_dropped(make_notifier, sim):
    set_sim(sim, "coingecko", price=str(PRICE * Decimal("1.3")))
    topic, body = poll(make_notifier())
    assert topic == "price.btc_cad" and body["cad_per_btc"] == "128400.00" and body["used"] == 3
    gecko = by_name(body)["coingecko"]
    assert gecko["fresh"] and not gecko["used"] and gecko["price"] == "166920.00"


def test_one_fresh_source_is_stale_on_every_poll_until_recovery(make_notifier, sim, caplog):
    for name, mode in (("kraken", "down"), ("coinbase", "error"), ("coingecko", "truncated")):
        set_sim(sim, name, mode=mode)
    n = make_notifier()
    caplog.set_level(logging.INFO, logger="actors.price_notifier")
    for _ in range(3):  # stale again on every poll, not once
        topic, body = poll(n)
        assert topic == "price.stale" and body["fresh"] == 1 and body["needed"] == 2
        assert body["reason"] == "1 fresh source, 2 needed"
    src = by_name(body)
    assert src["bitstamp"]["used"] is False and src["bitstamp"]["fresh"] and src["bitstamp"]["price"]
    assert src["kraken"] == {"name": "kraken", "fresh": False, "price": None, "age_s": None,
                             "error": "connection closed without a response", "used": False}
    assert src["coinbase"]["error"] == "HTTP 429: Too many requests"
    assert n.health()[0] == "degraded"
    # Each source's error is logged once, not on every poll.
    failing = [r.getMessage() for r in caplog.records if "failing" in r.getMessage()]
    assert sorted(failing) == ["coinbase failing: HTTP 429: Too many requests",
                               "coingecko failing: truncated JSON (29 bytes)",
                               "kraken failing: connection closed without a response"]
    set_sim(sim, "all", mode="ok")
    topic, body = poll(n)
    assert topic == "price.btc_cad" and body["used"] == 4 and body["cad_per_btc"] == "128400.00"
    assert all(s["error"] is None for s in body["sources"])
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 3


def test_quotes_stay_fresh_for_max_age_then_the_price_goes_stale(make_notifier, sim):
    now = [1_795_612_345.0]
    n = make_notifier(clock=lambda: now[0], max_age=120)
    assert poll(n)[0] == "price.btc_cad"
    set_sim(sim, "all", mode="html")
    now[0] += 100  # the last good quotes are still fresh: the price stands, errors shown
    topic, body = poll(n)
    assert topic == "price.btc_cad" and body["as_of"] == int((now[0] - 100) * 1000)
    assert all(s["age_s"] == 100 and s["fresh"] and s["error"].startswith("HTML") for s in body["sources"])
    now[0] += 21
    topic, body = poll(n)
    assert topic == "price.stale" and body["fresh"] == 0 and body["reason"] == "0 fresh sources, 2 needed"


def test_bitstamp_needs_the_fx_rate(make_notifier, sim):
    set_sim(sim, "fx", mode="error")
    n = make_notifier()
    topic, body = poll(n)
    assert topic == "price.btc_cad" and body["used"] == 3
    assert by_name(body)["bitstamp"]["error"] == "no USD->CAD rate (fx: HTTP 404: Series not found)"
    set_sim(sim, "fx", mode="ok", price="1.40")  # FX is retried on every poll while missing
    usd = (PRICE / Decimal("1.40")).quantize(Decimal(1))  # the sim's USD price follows its FX rate
    for _ in range(5):  # (on a loaded machine one poll's Bitstamp fetch may time out: its last quote,
        topic, body = poll(n)  # still fresh, was taken at the old rate)
        bitstamp = by_name(body)["bitstamp"]
        if bitstamp["price"] == f"{usd * Decimal('1.40'):.2f}":
            break
    assert (bitstamp["price"], bitstamp["used"], bitstamp["error"]) == (f"{usd * Decimal('1.40'):.2f}", True, None)
    assert "fx 1.4000" in n.health()[1]


def test_a_poll_never_overlaps_the_previous_one(make_notifier, sim):
    set_sim(sim, "all", mode="slow", delay=5)
    n = make_notifier(timeout=0.4)
    poll(n)  # tick() is called every few ms while this poll waits for its timeouts
    requests = {name: s["requests"] for name, s in sim.state.snapshot()["sources"].items()}
    assert requests == dict.fromkeys(SOURCE_CLASSES, 1)
    assert n.sent[-1][0] == "price.stale"


@pytest.mark.parametrize("over,message", [
    ({"min_sources": 1}, "min_sources must be an integer >= 2"),
    ({"outlier_pct": 10.5}, "outlier_pct must be an integer or a decimal string"),
    ({"poll_interval": 0}, "poll_interval must be a positive number"),
])
def test_bad_price_config_is_refused(tmp_path, over, message):
    (tmp_path / "config.toml").write_text(price_config("http://x", **over))
    with pytest.raises(ConfigError, match=message):
        PriceNotifier(Home(tmp_path))
    (tmp_path / "config.toml").write_text('[price.sources]\nbinance = "http://x"\n')
    with pytest.raises(ConfigError, match="unknown"):
        PriceNotifier(Home(tmp_path))


def test_add_commands_wires_price_and_sim():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    price_cli.register(sub)  # as scripts/cli/__init__.py build_parser does
    sim_cli.register(sub)
    a = p.parse_args(["price", "show", "--json", "--timeout", "3", "--home", "H"])
    assert (a.fn, a.json, a.timeout, a.home, a.as_name) == (price_cli.cmd_price_show, True, 3.0, "H", "admin")
    a = p.parse_args(["sim", "exchanges", "--port", "9000"])
    assert (a.fn, a.port) == (price_cli.cmd_sim_exchanges, 9000)
    a = p.parse_args(["sim", "exchange-set", "kraken", "--mode", "down", "--home", "H"])
    assert (a.fn, a.source, a.mode, a.price, a.url) == (price_cli.cmd_sim_exchange_set, "kraken", "down", None,
                                                        "http://127.0.0.1:7480")


def test_sim_exchange_set_command(sim, capsys):
    price_cli.cmd_sim_exchange_set(argparse.Namespace(source="bitstamp", price="130000", mode="zero", url=sim.url))
    state = json.loads(capsys.readouterr().out)
    assert state["sources"]["bitstamp"]["mode"] == "zero" and state["sources"]["bitstamp"]["price"] == "130000"
    with pytest.raises(DctrlError, match="unknown mode"):
        price_cli.cmd_sim_exchange_set(argparse.Namespace(source="kraken", price=None, mode="sideways", url=sim.url))
    with pytest.raises(DctrlError, match="not reachable"):
        price_cli.cmd_sim_exchange_set(argparse.Namespace(source="kraken", price=None, mode="ok",
                                                          url=f"http://127.0.0.1:{free_port()}"))


# -- on the bus -------------------------------------------------------------------------------------

@pytest.fixture
def price_network(home, sim, request):
    """The price_notifier identity and grant (unless `dctrl init` made them), and [price]
    pointing at the simulator, before the network starts."""
    if not home.key_file("price_notifier").exists():
        dctrl(home, "keys", "add", "price_notifier", "--role", "actor")
    if "[identity.price_notifier]" not in home.policy_path.read_text():
        with open(home.policy_path, "a") as f:
            f.write('\n[identity.price_notifier]\npublish = ["price"]\n')
    # `dctrl init` pointed [price.sources] at the home's own exchanges port: use this test's simulator.
    config = home.root / "config.toml"
    text = config.read_text().replace(f"http://127.0.0.1:{home.config['demo']['exchanges_port']}", sim.url)
    config.write_text(text + "\n" + price_config(sim.url, sources=False, poll_interval=0.25, max_age=1.5,
                                                   min_sources=3))
    return request.getfixturevalue("network")


def test_notifier_on_the_bus_and_price_show(home, price_network, sim, clients, capsys):
    rx = clients(home, "admin", prefixes=["price", "health.price_notifier"])
    rt = Runtime(PriceNotifier(Home(home.root)), home.bus_settings("price_notifier"))
    t = threading.Thread(target=rt.run, daemon=True)
    t.start()
    try:
        d = rx.expect(topic_is("price.btc_cad"), what="a price")
        assert d.message.sender == "price_notifier" and d.message.body["used"] == 4
        assert abs(Decimal(d.message.body["cad_per_btc"]) - PRICE) <= Decimal("0.01")
        rx.expect(topic_is("health.price_notifier", status="ok"), what="the notifier's heartbeat")
        set_sim(sim, "all", price="130000.55")
        rx.expect(topic_is("price.btc_cad", cad_per_btc="130000.55"), what="the new price")

        set_sim(sim, "kraken", mode="down")
        set_sim(sim, "coingecko", mode="rate_limited")
        d = rx.expect(topic_is("price.stale"), what="price.stale after two sources went down")
        assert (d.message.body["fresh"], d.message.body["needed"]) == (2, 3)
        rx.expect(topic_is("price.stale"), what="price.stale again on the next poll")
        assert price_cli.cmd_price_show(argparse.Namespace(home=str(home.root), json=True, timeout=10)) == 1
        shown = json.loads(capsys.readouterr().out)
        assert shown["topic"] == "price.stale" and shown["stale"] is True and shown["sender"] == "price_notifier"
        assert by_name(shown)["kraken"]["error"] == "connection closed without a response"

        set_sim(sim, "all", mode="ok")
        rx.expect(topic_is("price.btc_cad", cad_per_btc="130000.55"), what="recovery")
        assert price_cli.cmd_price_show(argparse.Namespace(home=str(home.root), json=False, timeout=10)) == 0
        out = capsys.readouterr().out
        assert out.startswith("BTC-CAD 130000.55 (median of 4 sources")
        assert any(line.split()[:3] == ["kraken", "yes", "yes"] for line in out.splitlines())
    finally:
        rt.stop()
        t.join(15)
    assert not t.is_alive()
