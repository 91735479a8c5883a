"""`dctrl sim exchanges`: the five price APIs the PriceNotifier reads, on one loopback port.

Answers in the real shapes (those of tests/fixtures/prices), with prices
derived from one BTC-CAD price and a USD->CAD rate (default 1.382)::

    GET /0/public/Ticker?pair=XBTCAD            Kraken      (an unknown pair gets Kraken's error list, HTTP 200)
    GET /v2/prices/BTC-CAD/spot                 Coinbase
    GET /api/v2/ticker/btcusd/                  Bitstamp    (USD: price / fx)
    GET /api/v3/simple/price?ids=bitcoin&...    CoinGecko   (a JSON number)
    GET /valet/observations/FXUSDCAD/json       Bank of Canada USD->CAD

and a control API::

    POST /_sim/SOURCE  {"price": "130000", "mode": "ok", "delay": 10}   SOURCE: kraken, coinbase,
                       bitstamp, coingecko, fx (price = the rate), or all (price = the base price)
    GET  /_sim         the state, with each source's request count

Modes: ``ok``; ``down`` (the connection is closed without an answer: a refused
connection is impossible on a shared port); ``html`` (an HTML page, HTTP 200);
``truncated`` (half the JSON, HTTP 200); ``zero`` (a price of 0); ``error``
(Kraken's error list with HTTP 200, Coinbase's and CoinGecko's 429 bodies,
Bitstamp's error object, the Valet's 404); ``slow`` (answers after ``delay``
seconds, default 10, longer than any client timeout); ``rate_limited`` (429,
Kraken's "EAPI:Rate limit exceeded" with HTTP 200).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import threading
import time
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

DEFAULT_PORT = 7480
DEFAULT_PRICE = Decimal("128400.00")
DEFAULT_FX = Decimal("1.382")
SOURCES = ("kraken", "coinbase", "bitstamp", "coingecko", "fx")
MODES = ("ok", "down", "html", "truncated", "zero", "error", "slow", "rate_limited")
ROUTES = {  # path -> source
    "/0/public/Ticker": "kraken",
    "/v2/prices/BTC-CAD/spot": "coinbase",
    "/api/v2/ticker/btcusd/": "bitstamp",
    "/api/v3/simple/price": "coingecko",
    "/valet/observations/FXUSDCAD/json": "fx",
}

# Error bodies as the real APIs send them (tests/fixtures/prices).
COINBASE_429 = {"errors": [{"id": "rate_limit_exceeded", "message": "Too many requests"}]}
COINGECKO_429 = {"status": {"error_code": 429, "error_message": (
    "You've exceeded the Rate Limit. Please visit https://www.coingecko.com/en/api/pricing "
    "to subscribe to our API plans for higher rate limits.")}}
KRAKEN_UNKNOWN_PAIR = {"error": ["EQuery:Unknown asset pair"]}
KRAKEN_RATE_LIMIT = {"error": ["EAPI:Rate limit exceeded"]}
BITSTAMP_ERROR = {"status": "error", "reason": "Invalid currency pair", "code": "API0005"}
VALET_404 = {"message": "Series not found", "docs": "https://www.bankofcanada.ca/valet/docs"}
HTML_PAGE = ("<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title></head>"
             "<body><h1>Checking your browser before accessing the site.</h1></body></html>")


def _fmt(value: Decimal, places: int) -> str:
    return f"{value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN):f}"


def ok_body(source: str, price: Decimal, fx: Decimal, now: float) -> bytes:
    """The 200 body of ``source`` for a BTC-CAD ``price`` (for fx: the rate ``price``)."""
    ts = int(now)
    if source == "kraken":
        p = lambda d: _fmt(price + d, 5)  # noqa: E731
        doc = {"error": [], "result": {"XXBTZCAD": {
            "a": [p(25), "1", "1.000"], "b": [p(-29), "2", "2.000"], "c": [p(0), "0.00215000"],
            "v": ["12.84412517", "41.20931874"], "p": [p(-218), p(-449)], "t": [1183, 3904],
            "l": [p(-1428), p(-1980)], "h": [p(560), p(880)], "o": p(-810)}}}
    elif source == "coinbase":
        doc = {"data": {"amount": _fmt(price, 2), "base": "BTC", "currency": "CAD"}}
    elif source == "bitstamp":
        usd = lambda cad: _fmt(cad / fx, 0)  # noqa: E731  Bitstamp quotes whole dollars
        doc = {"timestamp": str(ts), "open": usd(price - 500), "high": usd(price + 700), "low": usd(price - 1400),
               "last": usd(price), "volume": "1520.11638512", "vwap": usd(price - 300), "bid": usd(price - 8),
               "ask": usd(price + 4), "side": "0", "open_24": usd(price - 1100), "percent_change_24": "0.88",
               "market_type": "SPOT"}
    elif source == "coingecko":  # a JSON number: written by hand, json.dumps would need a float
        return f'{{"bitcoin":{{"cad":{_fmt(price, 2)},"last_updated_at":{ts - 15}}}}}'.encode()
    elif source == "fx":
        day = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date().isoformat()
        doc = {"terms": {"url": "https://www.bankofcanada.ca/terms/"},
               "seriesDetail": {"FXUSDCAD": {"label": "USD/CAD",
                                             "description": "US dollar to Canadian dollar daily exchange rate",
                                             "dimension": {"key": "d", "name": "date"}}},
               "observations": [{"d": day, "FXUSDCAD": {"v": _fmt(price, 4)}}]}
    else:
        raise KeyError(source)
    return json.dumps(doc, separators=(",", ":")).encode()


def fault_answer(source: str, mode: str) -> tuple[int, str, bytes]:
    """(status, content type, body) for the error modes that answer."""
    if mode == "html":
        return 200, "text/html; charset=utf-8", HTML_PAGE.encode()
    if mode == "error":
        status, doc = {"kraken": (200, KRAKEN_UNKNOWN_PAIR), "coinbase": (429, COINBASE_429),
                       "coingecko": (429, COINGECKO_429), "bitstamp": (200, BITSTAMP_ERROR),
                       "fx": (404, VALET_404)}[source]
    elif mode == "rate_limited":
        status, doc = {"kraken": (200, KRAKEN_RATE_LIMIT), "coinbase": (429, COINBASE_429),
                       "coingecko": (429, COINGECKO_429),
                       "bitstamp": (429, {"status": "error", "reason": "Rate limit exceeded", "code": "API0001"}),
                       "fx": (429, {"message": "Too many requests"})}[source]
    else:
        raise ValueError(mode)
    return status, "application/json", json.dumps(doc).encode()


class SimState:
    """The simulated market; every method is thread-safe."""

    def __init__(self, price=DEFAULT_PRICE, fx=DEFAULT_FX):
        self.lock = threading.Lock()
        self.price, self.fx = Decimal(price), Decimal(fx)
        self.sources = {name: {"mode": "ok", "price": None, "delay": 10.0, "requests": 0} for name in SOURCES}

    def set(self, source: str, change: dict) -> dict:
        """Apply a control request; raises ValueError with a reason for a bad one."""
        if source != "all" and source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; known: all, {', '.join(SOURCES)}")
        if not isinstance(change, dict) or set(change) - {"price", "mode", "delay"}:
            raise ValueError('expected {"price": "130000", "mode": "ok", "delay": 10}')
        mode = change.get("mode")
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        price = change.get("price")
        if price is not None:
            try:
                price = Decimal(str(price))
            except InvalidOperation:
                raise ValueError(f"price {price!r} is not a decimal") from None
            if not price.is_finite() or price < 0:
                raise ValueError("price must be a finite number >= 0")
        delay = change.get("delay")
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float, Decimal)) or delay < 0):
            raise ValueError("delay must be a number of seconds")
        with self.lock:
            names = SOURCES if source == "all" else (source,)
            for name in names:
                s = self.sources[name]
                if mode is not None:
                    s["mode"] = mode
                if delay is not None:
                    s["delay"] = float(delay)
            if "price" in change:
                if source == "all":
                    if price is not None:
                        self.price = price
                    for name in SOURCES:
                        if name != "fx":
                            self.sources[name]["price"] = None
                else:
                    self.sources[source]["price"] = price
        return self.snapshot()

    def answer_for(self, source):
        """(mode, price or rate, fx, delay) for one request, counted."""
        with self.lock:
            s = self.sources[source]
            s["requests"] += 1
            fx = self.sources["fx"]["price"] if self.sources["fx"]["price"] is not None else self.fx
            price = s["price"] if s["price"] is not None else (fx if source == "fx" else self.price)
            return s["mode"], price, fx, s["delay"]

    def snapshot(self) -> dict:
        with self.lock:
            return {"price": str(self.price), "fx": str(self.fx),
                    "sources": {name: {**s, "price": None if s["price"] is None else str(s["price"])}
                                for name, s in self.sources.items()}}


class Handler(BaseHTTPRequestHandler):
    server: "SimServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status, ctype, body: bytes):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if status == 429:
            self.send_header("Retry-After", "60")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status, doc):
        self._send(status, "application/json", json.dumps(doc, sort_keys=True).encode())

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/_sim":
            return self._json(200, self.server.state.snapshot())
        source = ROUTES.get(url.path)
        if source is None:
            return self._json(404, {"error": f"no such path {url.path}"})
        mode, price, fx, delay = self.server.state.answer_for(source)
        if source == "kraken" and parse_qs(url.query).get("pair") != ["XBTCAD"]:
            return self._json(200, KRAKEN_UNKNOWN_PAIR)  # as Kraken does for any other pair
        if mode == "down":
            self.close_connection = True  # no answer at all: the client sees the connection close
            return
        if mode == "slow" and self.server.closing.wait(delay):
            self.close_connection = True
            return
        if mode in ("html", "error", "rate_limited"):
            return self._send(*fault_answer(source, mode))
        body = ok_body(source, Decimal(0) if mode == "zero" else price, fx, time.time())
        if mode == "truncated":
            body = body[:len(body) // 2]
        self._send(200, "application/json", body)

    def do_POST(self):
        url = urlsplit(self.path)
        if not url.path.startswith("/_sim/"):
            return self._json(404, {"error": "POST /_sim/SOURCE only"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            change = json.loads(self.rfile.read(length) or b"{}", parse_float=Decimal)
            return self._json(200, self.server.state.set(url.path[len("/_sim/"):], change))
        except ValueError as exc:  # JSONDecodeError too
            return self._json(400, {"error": str(exc)})


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port=DEFAULT_PORT, *, host="127.0.0.1", price=DEFAULT_PRICE, fx=DEFAULT_FX):
        self.state = SimState(price, fx)
        self.closing = threading.Event()  # wakes `slow` answers at shutdown
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):  # a client that timed out and left
            log.debug("client %s went away", client_address)
            return
        super().handle_error(request, client_address)

    def shutdown(self):
        self.closing.set()
        super().shutdown()


def serve(port=DEFAULT_PORT, *, host="127.0.0.1", price=DEFAULT_PRICE, fx=DEFAULT_FX, ready=None) -> None:
    """Serve until interrupted (or :meth:`SimServer.shutdown` from another thread).

    ``ready``, if given, is called with the server once it listens (port 0 picks a free one).
    """
    with SimServer(port, host=host, price=price, fx=fx) as server:
        if ready is not None:
            ready(server)
        server.serve_forever(poll_interval=0.1)


@contextlib.contextmanager
def running(port=0, **kw):
    """A sim in a background thread for the duration of a ``with`` block (tests)."""
    server = SimServer(port, **kw)  # bound here, so a taken port fails in the caller
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="sim-exchanges", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sim_exchanges", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--price", type=Decimal, default=DEFAULT_PRICE, help="BTC-CAD price")
    p.add_argument("--fx", type=Decimal, default=DEFAULT_FX, help="USD->CAD rate")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(server):
        print(f"sim exchanges on {server.url} (BTC-CAD {args.price}, USD->CAD {args.fx}); "
              f"control: POST {server.url}/_sim/SOURCE", flush=True)
    try:
        serve(args.port, host=args.host, price=args.price, fx=args.fx, ready=ready)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
