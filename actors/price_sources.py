"""BTC-CAD price sources and the robust aggregate of their quotes.

One class per source, each with its own URL path, timeout and parser::

    kraken     GET {base}/0/public/Ticker?pair=XBTCAD         result.XXBTZCAD.c[0]   (CAD)
    coinbase   GET {base}/v2/prices/BTC-CAD/spot              data.amount            (CAD)
    bitstamp   GET {base}/api/v2/ticker/btcusd/               last                   (USD, times FX)
    coingecko  GET {base}/api/v3/simple/price?ids=bitcoin...  bitcoin.cad            (CAD, a JSON number)
    fx         GET {base}/valet/observations/FXUSDCAD/json    observations[-1].FXUSDCAD.v (Bank of Canada)

Production base URLs: https://api.kraken.com, https://api.coinbase.com,
https://www.bitstamp.net, https://api.coingecko.com, https://www.bankofcanada.ca.
The defaults point at ``dctrl sim exchanges`` (scripts/sim/exchanges.py).

Every failure is a :class:`SourceError` naming the source and a stable reason:
HTTP errors (429...), HTML or truncated JSON with HTTP 200, API error bodies,
missing fields, implausible prices (outside configurable bounds), timeouts,
refused connections. Money is :class:`~decimal.Decimal`, never float: JSON
numbers are parsed with ``parse_float=Decimal``.

:func:`aggregate` is the pure rule: fresh quotes only, outliers (more than
``outlier_pct`` from the median of the fresh quotes) rejected, median of the
rest, quantized to 0.01 CAD; fewer than ``min_sources`` left means stale.
"""

from __future__ import annotations

import datetime
import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from proto.errors import DctrlError

CENT = Decimal("0.01")
USER_AGENT = "dctrl-price/0.1 (+https://dctrl.ca)"
MAX_BODY = 256 * 1024  # a ticker is a few hundred bytes; anything this big is not one
DEFAULT_BOUNDS = (Decimal(1_000), Decimal(10_000_000))  # CAD (or USD) per BTC we are willing to believe
FX_BOUNDS = (Decimal("0.5"), Decimal("3"))  # USD -> CAD
FX_MAX_DAYS = 10  # an observation older than this (long weekends are 4 days) means the feed is stuck


class SourceError(DctrlError, IOError):
    """A source gave no usable quote; ``str()`` is ``"SOURCE: REASON"``."""

    code = "price_source"

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


@dataclass(frozen=True)
class Quote:
    """A price from one source: ``price`` per BTC in ``currency``, fetched at ``fetched_at`` (epoch s)."""

    source: str
    price: Decimal
    fetched_at: float
    currency: str = "CAD"


@dataclass(frozen=True)
class FxRate:
    """USD -> CAD: CAD per USD, the observation date and when we fetched it."""

    rate: Decimal
    date: str
    fetched_at: float


# -- parsing helpers ---------------------------------------------------------------


def _snippet(body: bytes, n=60) -> str:
    text = body[:n].decode("utf-8", errors="replace")
    return " ".join(text.split()) + ("..." if len(body) > n else "")


def _reject_constant(name):
    raise ValueError(f"{name} is not a price")


def load_json(source: str, body: bytes):
    """The JSON body, numbers as Decimal/int (never float); a clear error for HTML or truncation."""
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise SourceError(source, "body is not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        stripped = body.lstrip()
        if not stripped:
            raise SourceError(source, "empty body") from None
        if stripped[:1] == b"<":
            raise SourceError(source, f"HTML instead of JSON: {_snippet(stripped)!r}") from None
        if isinstance(exc, json.JSONDecodeError) and (
                exc.pos >= len(body.rstrip()) or exc.msg.startswith("Unterminated string")):
            raise SourceError(source, f"truncated JSON ({len(body)} bytes)") from None
        raise SourceError(source, f"not JSON: {exc}") from None


def dig(source: str, doc, *path):
    """``doc[path[0]][path[1]]...`` or a SourceError naming the missing field."""
    here = doc
    for i, key in enumerate(path):
        try:
            here = here[key]
        except (KeyError, IndexError, TypeError):
            where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path[:i + 1]).lstrip(".")
            raise SourceError(source, f"missing field {where}") from None
    return here


def to_decimal(source: str, value, what="price", *, strings=True, numbers=True) -> Decimal:
    """A finite Decimal from a decimal string or a JSON number (parsed as Decimal/int), never a float."""
    if isinstance(value, bool) or not (
            (strings and isinstance(value, str)) or (numbers and isinstance(value, (Decimal, int)))):
        kinds = " or ".join(k for k, ok in (("a decimal string", strings), ("a JSON number", numbers)) if ok)
        raise SourceError(source, f"{what} is {type(value).__name__}, expected {kinds}")
    try:
        d = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise SourceError(source, f"{what} {str(value)[:40]!r} is not a number") from None
    if not d.is_finite():
        raise SourceError(source, f"{what} {str(value)[:40]!r} is not a finite number")
    return d


def check_bounds(source: str, value: Decimal, bounds, unit: str) -> Decimal:
    lo, hi = bounds
    if value <= 0:
        raise SourceError(source, f"implausible price {value} {unit}: not positive")
    if not lo <= value <= hi:
        raise SourceError(source, f"implausible price {value} {unit}: outside {lo}..{hi}")
    return value


def http_get(source: str, url: str, timeout: float) -> bytes:
    """GET ``url``; the body of a 200 answer, read within ``timeout`` seconds in all."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:  # a server trickling bytes still gets cut off
                    raise TimeoutError
                chunk = resp.read1(65536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > MAX_BODY:
                    raise SourceError(source, f"body larger than {MAX_BODY} bytes")
                chunks.append(chunk)
    except SourceError:
        raise
    except urllib.error.HTTPError as exc:
        raise SourceError(source, f"HTTP {exc.code}{_error_detail(exc)}") from None
    except TimeoutError:  # socket.timeout is TimeoutError
        raise SourceError(source, f"timed out after {timeout:g} s") from None
    except http.client.IncompleteRead as exc:
        raise SourceError(source, f"connection closed mid-body ({len(exc.partial)} bytes)") from None
    except http.client.RemoteDisconnected:
        raise SourceError(source, "connection closed without a response") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise SourceError(source, f"timed out after {timeout:g} s") from None
        if isinstance(reason, ConnectionRefusedError):
            raise SourceError(source, "connection refused") from None
        raise SourceError(source, f"cannot connect: {reason}") from None
    except (http.client.HTTPException, OSError) as exc:
        raise SourceError(source, f"connection failed: {type(exc).__name__}: {exc}") from None


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """A short reason from an HTTP error body (JSON APIs explain themselves), else the status text."""
    try:
        body = exc.read(4096)
    except Exception:
        body = b""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    message = None
    for path in (("errors", 0, "message"), ("status", "error_message"), ("error", 0), ("message",), ("reason",)):
        here = doc
        for k in path:
            try:
                here = here[k]
            except (KeyError, IndexError, TypeError):
                here = None
                break
        if isinstance(here, str):
            message = here
            break
    text = message or exc.reason or ""
    return f": {str(text)[:120]}" if text else ""


# -- the sources --------------------------------------------------------------------


class Source:
    """One price API. Subclasses set ``name``, ``currency`` and :meth:`path`, and implement :meth:`parse`."""

    name = "source"
    currency = "CAD"

    def __init__(self, base_url: str, *, timeout: float = 5.0, bounds=DEFAULT_BOUNDS, name: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.bounds = bounds
        if name:
            self.name = name

    def path(self) -> str:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return self.base_url + self.path()

    def parse(self, body: bytes) -> Decimal:
        """The price per BTC in :attr:`currency` from a 200 body; raises :class:`SourceError`."""
        raise NotImplementedError

    def fetch(self, clock=time.time) -> Quote:
        body = http_get(self.name, self.url, self.timeout)
        price = check_bounds(self.name, self.parse(body), self.bounds, self.currency)
        return Quote(self.name, price, clock(), self.currency)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.url}>"


class Kraken(Source):
    """Kraken's ticker: errors come with HTTP 200 and a non-empty ``error`` list."""

    name = "kraken"
    RESULT_KEY = "XXBTZCAD"  # not the pair asked for

    def path(self):
        return "/0/public/Ticker?pair=XBTCAD"

    def parse(self, body):
        doc = load_json(self.name, body)
        if not isinstance(doc, dict):
            raise SourceError(self.name, f"expected a JSON object, got {type(doc).__name__}")
        errors = doc.get("error")
        if errors:
            raise SourceError(self.name, f"API error: {'; '.join(map(str, errors))[:200]}")
        return to_decimal(self.name, dig(self.name, doc, "result", self.RESULT_KEY, "c", 0), "last trade price",
                          numbers=False)


class Coinbase(Source):
    name = "coinbase"

    def path(self):
        return "/v2/prices/BTC-CAD/spot"

    def parse(self, body):
        doc = load_json(self.name, body)
        data = dig(self.name, doc, "data")
        for key, want in (("base", "BTC"), ("currency", "CAD")):
            if isinstance(data, dict) and data.get(key, want) != want:
                raise SourceError(self.name, f"data.{key} is {str(data[key])[:16]!r}, expected {want}")
        return to_decimal(self.name, dig(self.name, doc, "data", "amount"), "data.amount", numbers=False)


class Bitstamp(Source):
    """Bitstamp has no CAD pair: its ``last`` is USD, converted with an :class:`FxRate`."""

    name = "bitstamp"
    currency = "USD"

    def path(self):
        return "/api/v2/ticker/btcusd/"

    def parse(self, body):
        doc = load_json(self.name, body)
        if isinstance(doc, dict) and doc.get("status") == "error":
            raise SourceError(self.name, f"API error: {str(doc.get('reason') or doc.get('code'))[:200]}")
        return to_decimal(self.name, dig(self.name, doc, "last"), "last", numbers=False)


class CoinGecko(Source):
    """CoinGecko's price is a JSON number: parsed as Decimal, never float."""

    name = "coingecko"

    def path(self):
        return "/api/v3/simple/price?ids=bitcoin&vs_currencies=cad&include_last_updated_at=true"

    def parse(self, body):
        doc = load_json(self.name, body)
        return to_decimal(self.name, dig(self.name, doc, "bitcoin", "cad"), "bitcoin.cad", strings=False)


class BankOfCanadaFX:
    """USD -> CAD from the Bank of Canada's Valet API (one observation per business day)."""

    name = "fx"

    def __init__(self, base_url: str, *, timeout: float = 5.0, bounds=FX_BOUNDS, max_days=FX_MAX_DAYS,
                 name: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.bounds, self.max_days = bounds, max_days
        if name:
            self.name = name

    @property
    def url(self) -> str:
        return self.base_url + "/valet/observations/FXUSDCAD/json?recent=1"

    def parse(self, body: bytes, now: float) -> tuple[Decimal, str]:
        doc = load_json(self.name, body)
        observations = dig(self.name, doc, "observations")
        if not isinstance(observations, list) or not observations:
            raise SourceError(self.name, "no observations")
        last = observations[-1]
        rate = to_decimal(self.name, dig(self.name, last, "FXUSDCAD", "v"), "FXUSDCAD.v", numbers=False)
        day = dig(self.name, last, "d")
        try:
            observed = datetime.date.fromisoformat(str(day))
        except ValueError:
            raise SourceError(self.name, f"observation date {str(day)[:20]!r} is not YYYY-MM-DD") from None
        today = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()
        if (today - observed).days > self.max_days:
            raise SourceError(self.name, f"observation of {observed} is more than {self.max_days} days old")
        lo, hi = self.bounds
        if not lo <= rate <= hi:
            raise SourceError(self.name, f"implausible USD->CAD rate {rate}: outside {lo}..{hi}")
        return rate, observed.isoformat()

    def fetch(self, clock=time.time) -> FxRate:
        body = http_get(self.name, self.url, self.timeout)
        now = clock()
        rate, day = self.parse(body, now)
        return FxRate(rate, day, now)

    def __repr__(self):
        return f"<BankOfCanadaFX {self.url}>"


PRICE_SOURCES = {cls.name: cls for cls in (Kraken, Coinbase, Bitstamp, CoinGecko)}
FX_SOURCE = BankOfCanadaFX.name


def to_cad(quote: Quote, fx: FxRate | None, bounds=DEFAULT_BOUNDS) -> Quote:
    """A CAD quote from a USD one with ``fx`` (the quote keeps its own fetch time)."""
    if quote.currency == "CAD":
        return quote
    if quote.currency != "USD":
        raise SourceError(quote.source, f"no conversion from {quote.currency}")
    if fx is None:
        raise SourceError(quote.source, "no USD->CAD rate")
    cad = check_bounds(quote.source, quote.price * fx.rate, bounds, "CAD")
    return Quote(quote.source, cad, quote.fetched_at, "CAD")


# -- aggregation ----------------------------------------------------------------------


def median(values) -> Decimal:
    """The exact median of Decimals (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of nothing")
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


@dataclass
class Aggregate:
    """The outcome of one aggregation. ``price`` is None when stale (then ``reason`` says why)."""

    price: Decimal | None
    fresh: list[str] = field(default_factory=list)      # sources whose quote is fresh
    used: list[str] = field(default_factory=list)       # fresh and not an outlier
    outliers: list[str] = field(default_factory=list)
    as_of: float | None = None                           # fetch time of the oldest quote used
    reason: str | None = None

    @property
    def stale(self) -> bool:
        return self.price is None


def aggregate(quotes, now: float, *, max_age: float = 120, outlier_pct=Decimal(10), min_sources: int = 2) -> Aggregate:
    """Median of the fresh CAD ``quotes`` after dropping those more than ``outlier_pct`` % from
    the median of all fresh ones; stale when fewer than ``min_sources`` remain."""
    fresh = [q for q in quotes if now - q.fetched_at <= max_age]
    for q in fresh:
        if q.currency != "CAD" or not isinstance(q.price, Decimal):
            raise TypeError(f"{q.source}: aggregate takes Decimal CAD quotes, got {q.price!r} {q.currency}")
    names = [q.source for q in fresh]
    if len(fresh) < min_sources:
        return Aggregate(None, fresh=names,
                         reason=f"{len(fresh)} fresh source{'s' if len(fresh) != 1 else ''}, {min_sources} needed")
    center = median(q.price for q in fresh)
    limit = center * Decimal(outlier_pct) / 100
    used = [q for q in fresh if abs(q.price - center) <= limit]
    outliers = [q.source for q in fresh if abs(q.price - center) > limit]
    if len(used) < min_sources:
        return Aggregate(None, fresh=names, used=[q.source for q in used], outliers=outliers,
                         reason=f"sources disagree: {len(outliers)} of {len(fresh)} fresh more than "
                                f"{outlier_pct}% from the median {center.quantize(CENT)}, {min_sources} needed")
    price = median(q.price for q in used).quantize(CENT, rounding=ROUND_HALF_EVEN)
    return Aggregate(price, fresh=names, used=[q.source for q in used], outliers=outliers,
                     as_of=min(q.fetched_at for q in used))


def cad_string(value: Decimal) -> str:
    """A Decimal as a plain decimal string with cents (the wire's DECIMAL pattern), never exponent notation."""
    return f"{value.quantize(CENT, rounding=ROUND_HALF_EVEN):f}"
