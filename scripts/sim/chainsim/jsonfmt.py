"""JSON text exactly as Bitcoin Core's UniValue writes it, and amount parsing.

Amounts are satoshis (int) everywhere; a :class:`BTC` wraps one for output and
is written like Core's ``ValueFromAmount``: a JSON number with exactly eight
decimals (``0.00001000``). Floats only appear for non-money values
(``difficulty``, ``verificationprogress``) and are written like UniValue's
``setprecision(16)``.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation

from scripts.sim.chainsim.errors import RPC_TYPE_ERROR, RpcError

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN


class BTC:
    """An amount of satoshis that serializes as a BTC JSON number with 8 decimals."""

    __slots__ = ("sats",)

    def __init__(self, sats: int):
        if not isinstance(sats, int) or isinstance(sats, bool):
            raise TypeError("BTC() takes integer satoshis")
        self.sats = sats

    def text(self) -> str:
        sign = "-" if self.sats < 0 else ""
        q, r = divmod(abs(self.sats), COIN)
        return f"{sign}{q}.{r:08d}"

    def to_decimal(self) -> Decimal:
        return Decimal(self.text())

    def __eq__(self, other):
        return isinstance(other, BTC) and other.sats == self.sats

    def __hash__(self):
        return hash(self.sats)

    def __repr__(self):
        return f"BTC({self.text()})"


def _float_text(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return "null"
    return format(value, ".16g")


def dumps(value) -> str:
    """Compact JSON, insertion-ordered keys, UTF-8 left as is (UniValue::write())."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, BTC):
        return value.text()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + dumps(v)
                              for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot serialize {type(value).__name__}")


def to_python(value):
    """The value as Python data, amounts as Decimal (what a JSON client would decode)."""
    if isinstance(value, BTC):
        return value.to_decimal()
    if isinstance(value, dict):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    return value


_FIXED = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def parse_amount(value, *, allow_zero: bool = True) -> int:
    """Core's AmountFromValue: a JSON number or string in BTC, at most 8 decimals -> satoshis."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise RpcError(RPC_TYPE_ERROR, "Amount is not a number or string")
    text = str(value).strip()
    if not _FIXED.match(text):
        raise RpcError(RPC_TYPE_ERROR, "Invalid amount")
    try:
        dec = Decimal(text)
    except InvalidOperation:
        raise RpcError(RPC_TYPE_ERROR, "Invalid amount") from None
    sats = dec * COIN
    if sats != sats.to_integral_value():
        raise RpcError(RPC_TYPE_ERROR, "Invalid amount")
    sats = int(sats)
    if sats < 0 or sats > MAX_MONEY:
        raise RpcError(RPC_TYPE_ERROR, "Amount out of range")
    if not allow_zero and sats == 0:
        raise RpcError(RPC_TYPE_ERROR, "Invalid amount for send")
    return sats


def format_money(sats: int) -> str:
    """Core's FormatMoney(): 8 decimals with trailing zeros trimmed down to two."""
    sign = "-" if sats < 0 else ""
    q, r = divmod(abs(sats), COIN)
    text = f"{q}.{r:08d}"
    while text.endswith("0") and len(text.split(".")[1]) > 2:
        text = text[:-1]
    return sign + text


def format_feerate(sat_per_kvb: int) -> str:
    """CFeeRate::ToString(): ``0.00001000 BTC/kvB``."""
    return f"{BTC(sat_per_kvb).text()} BTC/kvB"
