"""Esplora REST backend (the API Blockstream and mempool.space serve).

Esplora has no confirmations field: a transaction's confirmations are
``tip_height - block_height + 1``. Tip endpoints answer plain text without a
trailing newline; errors are plain text with an HTTP status (``Transaction
not found`` 404, ``Invalid hex string`` 400). Amounts are satoshis. There is
no push channel, so :meth:`hints` polls the tip (and, for a small mempool,
the mempool) with a backoff while nothing changes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal

from embit.script import address_to_scriptpubkey

from .adaptor import Block, ChainError, Hint, Tip, Tx, TxOut

log = logging.getLogger(__name__)

FINAL_SEQUENCE = 0xFFFFFFFE
PAGE = 25  # /block/:hash/txs/:start pages


class Esplora:
    def __init__(self, url: str, *, name="esplora", network="regtest", timeout=10.0,
                 poll_min=1.0, poll_max=10.0, watch_mempool=True):
        self.url = url.rstrip("/")
        self.name, self.network, self.timeout = name, network, timeout
        self.poll_min, self.poll_max, self.watch_mempool = poll_min, poll_max, watch_mempool
        self._poll = poll_min
        self._last_tip = None
        self._last_mempool: set[str] | None = None
        self._next_poll = 0.0

    # -- HTTP -----------------------------------------------------------------

    def _get(self, path, *, text=False, method="GET", data=None):
        req = urllib.request.Request(self.url + path, method=method, data=data,
                                     headers={"Content-Type": "text/plain"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode(errors="replace").strip()
            error = ChainError(f"{self.name}: {method} {path}: HTTP {exc.code}: {detail}")
            error.http_status = exc.code
            raise error from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ChainError(f"{self.name}: {method} {path}: {reason}") from None
        if text:
            return body.decode().strip()
        try:
            return json.loads(body, parse_float=Decimal)
        except ValueError:
            raise ChainError(f"{self.name}: {path}: not JSON ({body[:60]!r})") from None

    # -- queries ----------------------------------------------------------------

    def tip(self) -> Tip:
        """Height and hash come from two requests: retry if a block arrived in between."""
        for _ in range(5):
            tip_hash = self._get("/blocks/tip/hash", text=True)
            height = self._get("/blocks/tip/height", text=True)
            if self._get("/blocks/tip/hash", text=True) == tip_hash:
                try:
                    return Tip(int(height), tip_hash)
                except ValueError:
                    raise ChainError(f"{self.name}: tip height {height[:40]!r} is not a number") from None
        raise ChainError(f"{self.name}: the tip kept moving while being read")

    def block_hash(self, height: int) -> str:
        return self._get(f"/block-height/{height}", text=True)

    def block(self, block_hash: str) -> Block:
        info = self._get(f"/block/{block_hash}")
        txs = []
        for start in range(0, int(info["tx_count"]), PAGE):
            txs += [self._tx(t) for t in self._get(f"/block/{block_hash}/txs/{start}")]
        return Block(int(info["height"]), info["id"], info.get("previousblockhash") or "00" * 32,
                     int(info["timestamp"]), tuple(txs))

    def _tx(self, t) -> Tx:
        outputs = tuple(TxOut(t["txid"], n, o["scriptpubkey"], o.get("scriptpubkey_address"), int(o["value"]))
                        for n, o in enumerate(t["vout"]))
        inputs = tuple((i["txid"], int(i["vout"])) for i in t["vin"] if not i.get("is_coinbase"))
        rbf = any(int(i.get("sequence", 0xFFFFFFFF)) < FINAL_SEQUENCE for i in t["vin"] if not i.get("is_coinbase"))
        status = t.get("status") or {}
        if status.get("confirmed"):
            return Tx(t["txid"], outputs, inputs, rbf, int(status["block_height"]), status["block_hash"])
        return Tx(t["txid"], outputs, inputs, rbf)

    def transaction(self, txid: str) -> Tx | None:
        try:
            return self._tx(self._get(f"/tx/{txid}"))
        except ChainError as exc:
            if getattr(exc, "http_status", None) in (400, 404):
                return None
            raise

    def raw_transaction(self, txid: str, block_hash: str | None = None) -> bytes | None:
        """``/tx/:txid/hex``; None if the server does not know it (it indexes every transaction:
        ``block_hash`` is not needed)."""
        try:
            text = self._get(f"/tx/{txid}/hex", text=True)
        except ChainError as exc:
            if getattr(exc, "http_status", None) in (400, 404):
                return None
            raise
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ChainError(f"{self.name}: /tx/{txid}/hex: not hex ({text[:40]!r})") from None

    def mempool(self) -> set[str]:
        return set(self._get("/mempool/txids"))

    def unspent(self, addresses: list[str]) -> list[TxOut]:
        out = []
        for a in addresses:
            script = address_to_scriptpubkey(a).data.hex()
            for u in self._get(f"/address/{a}/utxo"):
                if (u.get("status") or {}).get("confirmed"):
                    out.append(TxOut(u["txid"], int(u["vout"]), script, a, int(u["value"]),
                                     int(u["status"]["block_height"])))
        return out

    def used(self, addresses: list[str]) -> set[str]:
        """Those of ``addresses`` with any transaction, confirmed or not (Esplora indexes them all)."""
        return {a for a in addresses if self._get(f"/address/{a}/txs")}

    def history(self, address: str, since_height: int = 0) -> list[Tx]:
        """Confirmed transactions since ``since_height`` (oldest first), then unconfirmed ones."""
        txs = self._get(f"/address/{address}/txs")  # up to 50 mempool, then 25 confirmed newest first
        confirmed = [t for t in txs if (t.get("status") or {}).get("confirmed")]
        while len(confirmed) % 25 == 0 and confirmed:
            more = self._get(f"/address/{address}/txs/chain/{confirmed[-1]['txid']}")
            if not more:
                break
            confirmed += more
        mempool = [t for t in txs if not (t.get("status") or {}).get("confirmed")]
        chain = [self._tx(t) for t in reversed(confirmed) if t["status"]["block_height"] >= since_height]
        return chain + [self._tx(t) for t in mempool]

    def broadcast(self, raw_hex: str) -> str:
        return self._get("/tx", text=True, method="POST", data=raw_hex.encode())

    def fee_estimates(self, targets=(1, 3, 6, 144)) -> dict[int, Decimal]:
        est = {int(k): Decimal(str(v)) for k, v in self._get("/fee-estimates").items()}
        out = {}
        for target in targets:
            usable = [k for k in est if k <= target]  # the closest target not slower than asked
            if usable:
                out[target] = est[max(usable)].quantize(Decimal("0.001"))
        return out

    # -- hints by polling -------------------------------------------------------

    def hints(self, timeout: float) -> list[Hint]:
        """Poll the tip (and the mempool) at most every ``_poll`` s, backing off while idle."""
        now = time.monotonic()
        if now < self._next_poll:
            threading.Event().wait(min(timeout, self._next_poll - now))
            return []
        hints = []
        tip = self.tip()
        if self._last_tip is None:
            hints.append(Hint("resync", "first poll"))
        elif tip.hash != self._last_tip:
            hints.append(Hint("block", tip.hash))
        self._last_tip = tip.hash
        if self.watch_mempool:
            mempool = self.mempool()
            if self._last_mempool is not None:
                hints += [Hint("tx", t) for t in sorted(mempool - self._last_mempool)]
            self._last_mempool = mempool
        self._poll = self.poll_min if hints else min(self._poll * 1.5, self.poll_max)
        self._next_poll = time.monotonic() + self._poll
        return hints

    def close(self):
        pass
