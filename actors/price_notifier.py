"""PriceNotifier: the robust BTC-CAD price on ``price.btc_cad``, or ``price.stale``.

Every ``poll_interval`` seconds it fetches every source in parallel on the
runtime's thread pool (each with its own timeout; a poll never overlaps the
previous one), keeps each source's last good quote, and publishes after every
poll, from the worker that finished it:

- ``price.btc_cad`` while at least ``min_sources`` quotes are fresh (no older
  than ``max_age``) and agree (outliers more than ``outlier_pct`` % from the
  median dropped): the median, quantized to 0.01 CAD;
- else ``price.stale``, again on every poll while it lasts: no sales.

Both carry every source's health (fresh, age, last error, price, used), as
does the heartbeat's detail. A source's error is logged once per change, not
every poll. Bitstamp quotes USD, converted with the Bank of Canada USD->CAD
rate, fetched every ``fx_interval`` seconds (every poll while it has none).

Config, ``[price]`` in config.toml over :data:`DEFAULTS`::

    [price]
    poll_interval = 15
    [price.sources]               # name = base URL; "" disables a source
    kraken = "https://api.kraken.com"
    coinbase = "https://api.coinbase.com"
    bitstamp = "https://www.bitstamp.net"
    coingecko = "https://api.coingecko.com"
    fx = "https://www.bankofcanada.ca"
"""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal, InvalidOperation

from keys.home import Home, merge
from proto.errors import ConfigError

from . import price_sources as ps
from .runtime import Actor, every

log = logging.getLogger(__name__)

SIM_URL = "http://127.0.0.1:7480"  # where `dctrl sim exchanges` listens by default

DEFAULTS = {
    "poll_interval": 15,      # seconds between polls
    "max_age": 120,           # seconds a quote stays fresh
    "outlier_pct": 10,        # % from the median of the fresh quotes beyond which a quote is dropped
    "min_sources": 2,         # fresh, agreeing sources needed for a price
    "timeout": 5,             # seconds per request
    "min_cad": 1_000,         # sanity bounds per BTC (CAD, and USD before FX)
    "max_cad": 10_000_000,
    "fx_interval": 3600,      # seconds between USD->CAD fetches
    "fx_max_age": 172_800,    # seconds a fetched USD->CAD rate stays usable
    "sources": {name: SIM_URL for name in (*ps.PRICE_SOURCES, ps.FX_SOURCE)},
}


def _money(cfg, key) -> Decimal:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"[price] {key} must be an integer or a decimal string, not {type(value).__name__}")
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ConfigError(f"[price] {key} = {value!r} is not a number") from None


def _seconds(cfg, key) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"[price] {key} must be a positive number of seconds")
    return float(value)


class SourceState:
    """What the notifier knows about one price source (guarded by the notifier's lock)."""

    def __init__(self, source: ps.Source):
        self.source = source
        self.quote: ps.Quote | None = None   # last good quote, in CAD
        self.error: str | None = None        # reason of the last failure, None after a success
        self.used = False

    def health(self, now, max_age) -> dict:
        q = self.quote
        return {
            "name": self.source.name,
            "fresh": q is not None and now - q.fetched_at <= max_age,
            "price": ps.cad_string(q.price) if q else None,
            "age_s": max(0, int(now - q.fetched_at)) if q else None,
            "error": self.error[:512] if self.error else None,
            "used": self.used,
        }


class PriceNotifier(Actor):
    def __init__(self, home: Home, *, clock=time.time):
        self.home = home
        self.clock = clock
        cfg = merge(DEFAULTS, home.config.get("price", {}))
        self.poll_interval = _seconds(cfg, "poll_interval")
        self.max_age = _seconds(cfg, "max_age")
        self.timeout = _seconds(cfg, "timeout")
        self.fx_interval = _seconds(cfg, "fx_interval")
        self.fx_max_age = _seconds(cfg, "fx_max_age")
        self.outlier_pct = _money(cfg, "outlier_pct")
        self.bounds = (_money(cfg, "min_cad"), _money(cfg, "max_cad"))
        self.min_sources = cfg["min_sources"]
        if isinstance(self.min_sources, bool) or not isinstance(self.min_sources, int) or self.min_sources < 2:
            raise ConfigError("[price] min_sources must be an integer >= 2 (one source is no check at all)")
        unknown = set(cfg["sources"]) - set(ps.PRICE_SOURCES) - {ps.FX_SOURCE}
        if unknown:
            raise ConfigError(f"[price.sources] unknown {sorted(unknown)}; known: "
                              f"{', '.join([*ps.PRICE_SOURCES, ps.FX_SOURCE])}")
        urls = {name: url for name, url in cfg["sources"].items() if url}
        self.states = [SourceState(cls(urls[name], timeout=self.timeout, bounds=self.bounds))
                       for name, cls in ps.PRICE_SOURCES.items() if name in urls]
        if len(self.states) < self.min_sources:
            raise ConfigError(f"[price.sources] names {len(self.states)} price sources; "
                              f"min_sources is {self.min_sources}")
        needs_fx = any(s.source.currency == "USD" for s in self.states)
        self.fx_source = ps.BankOfCanadaFX(urls[ps.FX_SOURCE], timeout=self.timeout) \
            if needs_fx and ps.FX_SOURCE in urls else None
        self.fx: ps.FxRate | None = None
        self.fx_error: str | None = None if self.fx_source or not needs_fx else "no [price.sources] fx configured"
        self._fx_due = 0.0
        self._lock = threading.Lock()
        self._polling = False
        self._next_poll = 0.0
        self._pending = 0
        self._results: dict[str, object] = {}
        self.last: tuple[str, dict] | None = None  # the last (topic, body) published
        self.polls = 0

    # -- polling -----------------------------------------------------------------

    @every(0.1)
    def tick(self):
        """Start a poll when one is due and the previous one has finished."""
        now = time.monotonic()
        if self._polling or now < self._next_poll:
            return
        self._next_poll = now + self.poll_interval
        self.start_poll(self.runtime.pool.submit)

    def start_poll(self, submit) -> None:
        """Submit every due fetch with ``submit(fn, *args)``; the last to finish publishes."""
        jobs = [s.source for s in self.states]
        if self.fx_source is not None and (self.fx is None or time.monotonic() >= self._fx_due):
            jobs.append(self.fx_source)
        with self._lock:
            self._polling = True
            self._pending = len(jobs)
            self._results = {}
        try:
            for source in jobs:
                submit(self._fetch, source)
        except RuntimeError:  # the pool is shutting down: so are we
            self._polling = False

    def _fetch(self, source):
        """Worker: one request; the worker that completes the poll also evaluates and publishes."""
        try:
            result = source.fetch(self.clock)
        except ps.SourceError as exc:
            result = exc
        except Exception as exc:  # a bug in a parser must not wedge polling
            log.exception("%s: fetch failed unexpectedly", source.name)
            result = ps.SourceError(source.name, f"internal error: {type(exc).__name__}")
        with self._lock:
            self._results[source.name] = result
            self._pending -= 1
            if self._pending:
                return
        try:
            self.finish_poll()
        except Exception:  # a bug: say so (a pool future would swallow it) and poll again next time
            log.exception("price poll failed")
        finally:
            self._polling = False

    def finish_poll(self) -> tuple[str, dict]:
        with self._lock:
            topic, body = self._evaluate(self._results)
            self.last = (topic, body)
            self.polls += 1
        self.publish(topic, body)
        return topic, body

    def _evaluate(self, results) -> tuple[str, dict]:
        now = self.clock()
        fx_result = results.pop(ps.FX_SOURCE, None)
        if isinstance(fx_result, ps.FxRate):
            self._fx_due = time.monotonic() + self.fx_interval
            self._note("fx", self.fx_error, None)
            self.fx, self.fx_error = fx_result, None
        elif isinstance(fx_result, ps.SourceError):
            self._note("fx", self.fx_error, fx_result.reason)
            self.fx_error = fx_result.reason
        if self.fx is not None and now - self.fx.fetched_at > self.fx_max_age:
            self.fx = None
        for state in self.states:
            result = results.get(state.source.name)
            error = None
            if isinstance(result, ps.Quote):
                try:
                    state.quote = ps.to_cad(result, self.fx, self.bounds)
                except ps.SourceError as exc:
                    error = exc.reason + (f" (fx: {self.fx_error})" if self.fx_error else "")
            elif isinstance(result, ps.SourceError):
                error = result.reason
            else:
                continue
            self._note(state.source.name, state.error, error)
            state.error = error
        agg = ps.aggregate([s.quote for s in self.states if s.quote], now, max_age=self.max_age,
                           outlier_pct=self.outlier_pct, min_sources=self.min_sources)
        for state in self.states:
            state.used = state.source.name in agg.used
        sources = [s.health(now, self.max_age) for s in self.states]
        if agg.stale:
            if self.last is None or self.last[0] != "price.stale":
                log.warning("price stale: %s", agg.reason)
            return "price.stale", {"reason": agg.reason[:512], "fresh": len(agg.fresh),
                                   "needed": self.min_sources, "sources": sources}
        if self.last is not None and self.last[0] == "price.stale":
            log.info("price fresh again: %s CAD from %s", agg.price, ", ".join(agg.used))
        return "price.btc_cad", {"cad_per_btc": ps.cad_string(agg.price), "sources": sources,
                                 "used": len(agg.used), "as_of": int(agg.as_of * 1000)}

    @staticmethod
    def _note(name, before, after):
        """Log a source's error once per change, and its recovery."""
        if after == before:
            return
        if after is None:
            log.info("%s recovered", name)
        else:
            log.warning("%s failing: %s", name, after)

    # -- health ------------------------------------------------------------------

    def health(self):
        with self._lock:
            if self.last is None:
                return "starting", "no poll finished yet"
            topic, body = self.last
            parts = []
            for s in body["sources"]:
                state = ("used" if s["used"] else "fresh" if s["fresh"] else "stale")
                age = f" {s['age_s']}s" if s["age_s"] is not None else ""
                err = f" error: {s['error'][:60]}" if s["error"] else ""
                parts.append(f"{s['name']} {state} {s['price'] or '-'}{age}{err}")
            if self.fx_source is not None:
                parts.append(f"fx {self.fx.rate} ({self.fx.date})" if self.fx else "fx none")
                if self.fx_error:
                    parts[-1] += f" error: {self.fx_error[:60]}"
        head = f"{body['cad_per_btc']} CAD" if topic == "price.btc_cad" else f"STALE ({body['reason'][:80]})"
        return ("ok" if topic == "price.btc_cad" else "degraded"), f"{head}; {'; '.join(parts)}"[:512]
