"""Payouts on the books: requests, approvals, the PSBT's state, and the claims that make every
payout happen at most once (issue 13 items 2, 3 and 4).

Light on purpose: peewee only (no embit, no bus), for every reader of the data (the CLI, the
report server). PayoutMgr calls these functions; each is one transaction.

States::

    requested --(approvals reach the policy's number)--> awaiting_signatures (PSBT built,
        inputs claimed) --(k co-signers on every input)--> signed (transaction final, kept)
        --(the node took it, or it was seen on the chain)--> broadcast --(confirmed)--> confirmed
    requested, awaiting_signatures --(an admin: cancel or reject)--> cancelled
    requested, awaiting_signatures --(open longer than the policy allows)--> expired
    awaiting_signatures, signed, broadcast --(an input spent by another transaction)--> invalidated
    confirmed --(reorged out)--> broadcast
    broadcast --(bump)--> a new payout (``replaces`` = it), awaiting_signatures, ...; whichever of
        the two confirms is the payment (ledger.settle): the older one ``replaced``, the newer
        one ``invalidated``; never two confirmed

Claims (``payout_claim``, the key its primary key): ``utxo:TXID:VOUT`` for each input while the
payout can still spend it, and ``invoice:ID`` for a refund, for good once the refund is
confirmed. A second payout claiming the same key fails on the primary key, whichever process
and database: two payouts never spend the same coin and an invoice is refunded once (the
double payouts of btcpayserver/btcpayserver#5957 came from two paths deciding apart). A payout
that ends without paying (cancelled, expired, invalidated) releases its claims, except a
``share:YYYY-MM:ADDRESS`` (a month's revenue share, kept: asked for once) and a bump's
replacement's, which go back to the payout it was to replace while that one may still pay.
"""

from __future__ import annotations

import functools
import json
import time
from decimal import ROUND_CEILING, Decimal

import peewee

from actors.db import write_transaction
from proto.errors import ConfigError, DctrlError

db = peewee.DatabaseProxy()

KINDS = ("refund", "manual", "share", "sweep")
STATES = ("requested", "awaiting_signatures", "signed", "broadcast", "confirmed",
          "cancelled", "expired", "invalidated", "replaced")
OPEN = ("requested", "awaiting_signatures")            # may be cancelled, rejected or expire
PENDING = ("requested", "awaiting_signatures", "signed", "broadcast")
ENDED_UNPAID = ("cancelled", "expired", "invalidated")
WITHDRAWN = ("cancelled", "expired")  # by a person or the clock; with a PSBT out, still completable
# a replacement (RBF) is made for a payout in the mempool, or for one signed that the node refused
# (its fee below the node's minimum: the original stays possible, whichever confirms is the payment)
BUMPABLE = ("broadcast", "signed")
# "replaced": paid by its replacement (a bump, ``replaces`` = this payout), which confirmed; not unpaid.
KEPT_CLAIMS = ("share:",)  # claims kept even when their payout ends unpaid (a share is asked for once)

DEFAULTS = {
    "max_payout_cad": "500.00",    # one payout at most (CAD; "0" refuses every payout)
    "daily_limit_cad": "1000.00",  # payouts requested in any 24 hours, pending or paid, at most
    "allowlist": [],               # destination addresses allowed; empty: any
    "approvals": 1,                # admins (other than the requester) who approve before the PSBT is built
    "open_hours": 72,              # a request not signed within this expires
    "fee_target_blocks": 6,        # the adaptor's fee estimate for confirmation within this
    "min_feerate": 1.0,            # sat/vB: the estimate is kept within these bounds
    "max_feerate": 200.0,
    "max_fee_sats": 50_000,        # a payout whose fee would be more is refused
    "price_max_age": 300,          # s: a CAD amount or limit is judged only at a price this fresh
    "sweep_to": "",                # an address outside the treasury (cold storage); empty: no sweeps
    "sweep_above_sats": 0,         # sweep when the free confirmed balance is above this (0: never)
    "sweep_keep_sats": 0,          # ... the excess above this (at most sweep_above_sats)
    "shares": {},                  # [payouts.shares] address -> "10%": monthly shares of last month's sales
}
INCREMENTAL_FEERATE = Decimal(1)   # sat/vB: Bitcoin Core's incremental relay fee (BIP 125 rule 4)


class PayoutRefused(DctrlError):
    """A request or a step the policy or the payout's state does not allow; the text says why."""
    code = "payout_refused"


def settings(section: dict) -> dict:
    """``[payouts]`` over DEFAULTS, checked; limits as Decimal CAD."""
    out = {**DEFAULTS, **section}
    unknown = set(section) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"[payouts]: unknown settings {sorted(unknown)}")
    for key in ("max_payout_cad", "daily_limit_cad"):
        try:
            value = Decimal(str(out[key]))
        except Exception:
            raise ConfigError(f"[payouts] {key} = {out[key]!r} is not an amount") from None
        if value < 0 or value.as_tuple().exponent < -2:
            raise ConfigError(f"[payouts] {key} must be an amount in CAD of at most 2 decimals, 0 or more")
        out[key] = value
    if not isinstance(out["allowlist"], list) or not all(isinstance(a, str) for a in out["allowlist"]):
        raise ConfigError("[payouts] allowlist is a list of addresses")
    for key, low in (("approvals", 0), ("open_hours", 1), ("fee_target_blocks", 1), ("max_fee_sats", 0),
                     ("price_max_age", 1)):
        if not isinstance(out[key], int) or out[key] < low:
            raise ConfigError(f"[payouts] {key} must be a whole number, at least {low}")
    if not 0 < float(out["min_feerate"]) <= float(out["max_feerate"]):
        raise ConfigError("[payouts] need 0 < min_feerate <= max_feerate")
    _policy_settings(out)
    return out


def _percent(address: str, value) -> Decimal:
    text = value.strip() if isinstance(value, str) else None
    if not text or not text.endswith("%"):
        raise ConfigError(f"[payouts.shares] {address} = {value!r}: a percentage as a string, e.g. \"10%\"")
    try:
        pct = Decimal(text[:-1].strip())
    except Exception:
        raise ConfigError(f"[payouts.shares] {address} = {value!r} is not a percentage") from None
    if not pct.is_finite() or not 0 < pct <= 100 or pct.as_tuple().exponent < -2:
        raise ConfigError(f"[payouts.shares] {address} = {value!r}: above 0% and at most 100%, "
                          "at most 2 decimals")
    return pct


def _policy_settings(out: dict) -> None:
    """The sweep and the revenue shares (checked here; the addresses against the network and the
    treasury by PayoutMgr, which has the treasury)."""
    if not isinstance(out["sweep_to"], str):
        raise ConfigError("[payouts] sweep_to is an address (empty: no sweeps)")
    out["sweep_to"] = out["sweep_to"].strip()
    for key in ("sweep_above_sats", "sweep_keep_sats"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 0:
            raise ConfigError(f"[payouts] {key} must be a whole number of sats, 0 or more")
    if out["sweep_to"]:
        if out["sweep_above_sats"] <= 0:
            raise ConfigError("[payouts] sweep_to needs sweep_above_sats above 0: the balance a sweep starts at")
        if out["sweep_keep_sats"] > out["sweep_above_sats"]:
            raise ConfigError("[payouts] sweep_keep_sats must be at most sweep_above_sats")
        if out["allowlist"] and out["sweep_to"] not in out["allowlist"]:
            raise ConfigError(f"[payouts] sweep_to {out['sweep_to']} is not on the [payouts] allowlist")
    elif out["sweep_above_sats"] or out["sweep_keep_sats"]:
        raise ConfigError("[payouts] sweep_above_sats and sweep_keep_sats need sweep_to")
    if not isinstance(out["shares"], dict):
        raise ConfigError("[payouts.shares] is a table: address = \"10%\"")
    shares = {}
    for address, value in out["shares"].items():
        if not isinstance(address, str) or not address.strip():
            raise ConfigError("[payouts.shares]: a key is an address")
        if out["allowlist"] and address not in out["allowlist"]:
            raise ConfigError(f"[payouts.shares] {address} is not on the [payouts] allowlist")
        shares[address] = _percent(address, value)
    if sum(shares.values(), Decimal(0)) > 100:
        raise ConfigError(f"[payouts.shares] add up to {sum(shares.values())}%, more than 100%")
    out["shares"] = shares


class Base(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class Payout(Base):
    id = peewee.AutoField()
    kind = peewee.CharField(max_length=8)                     # one of KINDS
    destination = peewee.CharField(max_length=100)
    sats = peewee.BigIntegerField()
    cad_cents = peewee.BigIntegerField(null=True)             # its CAD value at the rate below
    rate = peewee.CharField(max_length=32, null=True)         # CAD per BTC, a Decimal as text
    rate_as_of = peewee.BigIntegerField(null=True)
    reason = peewee.TextField()
    invoice = peewee.CharField(max_length=64, null=True)      # a refund's invoice
    requested_by = peewee.CharField(max_length=64)
    requested_at = peewee.BigIntegerField()
    expires_at = peewee.BigIntegerField()
    state = peewee.CharField(max_length=20, default="requested", index=True)
    state_reason = peewee.TextField(null=True)
    psbt = peewee.TextField(null=True)                        # base64, signatures collected so far
    txid = peewee.CharField(max_length=64, null=True, index=True)
    inputs = peewee.TextField(null=True)                      # JSON list of "txid:vout"
    fee = peewee.BigIntegerField(null=True)
    vsize = peewee.IntegerField(null=True)
    change_sats = peewee.BigIntegerField(null=True)
    change_index = peewee.IntegerField(null=True)             # the change address's index (/1/i)
    raw_tx = peewee.TextField(null=True)                      # hex, once finalized
    updated_at = peewee.BigIntegerField()
    replaces = peewee.IntegerField(null=True, index=True)     # a bump: the payout this one replaces (RBF)

    @property
    def outpoints(self) -> list[str]:
        return json.loads(self.inputs) if self.inputs else []


class PayoutClaim(Base):
    key = peewee.CharField(max_length=160, primary_key=True)  # "utxo:TXID:VOUT" | "invoice:ID" | "share:YYYY-MM:ADDR"
    payout = peewee.IntegerField(index=True)


class PayoutApproval(Base):
    payout = peewee.IntegerField()
    identity = peewee.CharField(max_length=64)
    decision = peewee.CharField(max_length=8)                 # approve | reject
    at = peewee.BigIntegerField()

    class Meta:
        indexes = ((("payout", "identity"), True),)


class PayoutSignature(Base):
    payout = peewee.IntegerField()
    fingerprint = peewee.CharField(max_length=8)              # the co-signer's master fingerprint
    identity = peewee.CharField(max_length=64)                # who brought the signature
    at = peewee.BigIntegerField()

    class Meta:
        indexes = ((("payout", "fingerprint"), True),)


class PayoutCommand(Base):
    """cmd.payouts.* ids applied or refused (actors/outbox.py apply_once): a retry gets the same answer."""
    id = peewee.CharField(primary_key=True, max_length=32)
    topic = peewee.CharField(max_length=64)
    result = peewee.TextField()  # the ack's fields, as JSON
    created = peewee.BigIntegerField()


class PayoutHistory(Base):
    """Append-only: every change of state, when, by whom, why."""
    payout = peewee.IntegerField(index=True)
    state = peewee.CharField(max_length=20)
    at = peewee.BigIntegerField()
    by = peewee.CharField(max_length=64)
    reason = peewee.TextField(null=True)


MODELS = (Payout, PayoutClaim, PayoutApproval, PayoutSignature, PayoutHistory, PayoutCommand)
ADDED_COLUMNS = {Payout: ["replaces"]}  # for ensure_tables: columns later than the tables


def _move(p: Payout, state: str, by: str, now: int, reason: str | None = None) -> Payout:
    p.state, p.state_reason, p.updated_at = state, reason, now
    p.save()
    PayoutHistory.create(payout=p.id, state=state, at=now, by=by, reason=reason)
    if state in ENDED_UNPAID:
        _release(p)
    return p


def _release(p: Payout) -> None:
    """A payout ended unpaid: its claims go back to the payout it replaces if that one can still
    pay (a bump abandoned: the original keeps its inputs), else they are released; a share's
    claim is kept (the month's share is asked for once).

    A payout withdrawn (cancelled, expired) after its PSBT went out to the co-signers is not dead:
    they can still sign it in their wallets and broadcast it. Its coins are released (a payout
    spending one of them conflicts with it: at most one of the two confirms), but what it pays
    for (``invoice:``) stays claimed by it until one of its inputs is spent by another transaction
    (:func:`dead`), or it confirms after all (then it is paid, once)."""
    mine = PayoutClaim.payout == p.id
    before = Payout.get_or_none(Payout.id == p.replaces) if p.replaces else None
    if before is not None and before.state in PENDING + ("confirmed",):
        PayoutClaim.update(payout=before.id).where(mine).execute()
        return
    kept = functools.reduce(lambda a, b: a | b, [PayoutClaim.key.startswith(k) for k in KEPT_CLAIMS])
    if p.txid is not None and p.state in WITHDRAWN:
        kept = ~PayoutClaim.key.startswith("utxo:")  # its coins only
    PayoutClaim.delete().where(mine & ~kept).execute()


def dead(payout_id: int, by: str, reason: str, clock=time.time) -> Payout | None:
    """A withdrawn payout whose transaction can no longer confirm (an input spent by another):
    what it still claimed is released. None if it is not a withdrawn one still holding claims."""
    with write_transaction(db):
        p = _get(payout_id)
        mine = PayoutClaim.payout == p.id
        if p.state not in WITHDRAWN or not PayoutClaim.select().where(mine).exists():
            return None
        kept = functools.reduce(lambda a, b: a | b, [PayoutClaim.key.startswith(k) for k in KEPT_CLAIMS])
        PayoutClaim.delete().where(mine & ~kept).execute()
        PayoutHistory.create(payout=p.id, state=p.state, at=int(clock()), by=by, reason=reason)
        return p


def _get(payout_id: int, *, lock: bool = True) -> Payout:
    q = Payout.select().where(Payout.id == payout_id)
    if lock and isinstance(db.obj, peewee.PostgresqlDatabase):
        q = q.for_update()
    p = q.first()
    if p is None:
        raise PayoutRefused(f"no payout {payout_id}")
    return p


def _claim(key: str, payout_id: int, what: str) -> None:
    holder = PayoutClaim.get_or_none(PayoutClaim.key == key)
    if holder is not None:
        raise PayoutRefused(f"{what} is already taken by payout {holder.payout}")
    try:
        with db.atomic():  # a savepoint: the other writer's row met is a refusal, not a failure
            PayoutClaim.create(key=key, payout=payout_id)
    except peewee.IntegrityError:
        holder = PayoutClaim.get_or_none(PayoutClaim.key == key)
        raise PayoutRefused(f"{what} is already taken by payout {holder.payout if holder else '?'}") from None


def cents_of(sats: int, rate: Decimal) -> int:
    """CAD cents for ``sats`` at ``rate`` CAD/BTC, rounded up (a limit is never passed by rounding)."""
    return int((Decimal(sats) * rate / 1_000_000).to_integral_value(rounding=ROUND_CEILING))


def request(policy: dict, *, kind: str, destination: str, sats: int, rate: Decimal | None,
            rate_as_of: int | None, reason: str, by: str, invoice: str | None = None,
            claims: tuple[str, ...] = (), clock=time.time) -> Payout:
    """Record a payout request, checked against the policy; a refund claims its invoice."""
    now = int(clock())
    if kind not in KINDS:
        raise PayoutRefused(f"unknown kind {kind!r}")
    if not isinstance(sats, int) or sats <= 0:
        raise PayoutRefused("the amount must be a whole number of sats above 0")
    if not reason.strip():
        raise PayoutRefused("say why: every payout records its reason")
    if policy["allowlist"] and destination not in policy["allowlist"]:
        raise PayoutRefused(f"{destination} is not on the [payouts] allowlist")
    if kind == "refund" and not invoice:
        raise PayoutRefused("a refund names its invoice")
    if rate is None:
        raise PayoutRefused("no fresh BTC/CAD price: the limits in CAD cannot be checked; try again later")
    cents = cents_of(sats, rate)
    limit = int(policy["max_payout_cad"] * 100)
    if cents > limit:
        raise PayoutRefused(f"{cents / 100:.2f} CAD is above the per-payout limit of {limit / 100:.2f} CAD")
    with write_transaction(db):
        if isinstance(db.obj, peewee.PostgresqlDatabase):  # one limit check at a time
            db.execute_sql("SELECT pg_advisory_xact_lock(hashtext('dctrl-payout-limit'))")
        day = (Payout.select(peewee.fn.COALESCE(peewee.fn.SUM(Payout.cad_cents), 0))
               .where(Payout.requested_at > now - 86_400, Payout.state.not_in(ENDED_UNPAID),
                      Payout.replaces.is_null()).scalar())  # a replacement is its original's money
        daily = int(policy["daily_limit_cad"] * 100)
        if day + cents > daily:
            raise PayoutRefused(f"{cents / 100:.2f} CAD would bring the last 24 hours' payouts to "
                                f"{(day + cents) / 100:.2f} CAD, above the daily limit of {daily / 100:.2f} CAD")
        p = Payout.create(kind=kind, destination=destination, sats=sats, cad_cents=cents, rate=str(rate),
                          rate_as_of=rate_as_of, reason=reason, invoice=invoice, requested_by=by,
                          requested_at=now, expires_at=now + 3600 * policy["open_hours"], updated_at=now)
        if invoice:
            _claim(f"invoice:{invoice}", p.id, f"invoice {invoice}'s refund")
        for key in claims:
            _claim(key, p.id, key)
        PayoutHistory.create(payout=p.id, state="requested", at=now, by=by, reason=reason)
    return p


def decide(payout_id: int, identity: str, decision: str, policy: dict, *, reason: str | None = None,
           clock=time.time) -> tuple[Payout, bool]:
    """An admin's approve or reject. Returns the payout and whether it now has the approvals it
    needs. The requester cannot approve their own payout; an admin approves once."""
    now = int(clock())
    if decision not in ("approve", "reject"):
        raise PayoutRefused("approve or reject")
    with write_transaction(db):
        p = _get(payout_id)
        if p.state not in OPEN:
            raise PayoutRefused(f"payout {p.id} is {p.state}")
        if decision == "approve" and identity == p.requested_by:
            raise PayoutRefused("the requester cannot approve their own payout")
        if PayoutApproval.get_or_none(PayoutApproval.payout == p.id, PayoutApproval.identity == identity):
            raise PayoutRefused(f"{identity} has decided on payout {p.id} already")
        PayoutApproval.create(payout=p.id, identity=identity, decision=decision, at=now)
        if decision == "reject":
            _move(p, "cancelled", identity, now, f"rejected by {identity}" + (f": {reason}" if reason else ""))
            return p, False
        return p, approvals(p.id) >= policy["approvals"]


def approvals(payout_id: int) -> int:
    return (PayoutApproval.select().where(PayoutApproval.payout == payout_id,
                                          PayoutApproval.decision == "approve").count())


def cancel(payout_id: int, identity: str, reason: str, clock=time.time) -> Payout:
    with write_transaction(db):
        p = _get(payout_id)
        if p.state not in OPEN:
            raise PayoutRefused(f"payout {p.id} is {p.state}: only a requested or unsigned payout can be "
                                "cancelled" + (" (once signed, spend one of its inputs elsewhere)"
                                               if p.state == "signed" else ""))
        return _move(p, "cancelled", identity, int(clock()), reason)


def claimed_outpoints() -> set[str]:
    return {c.key[5:] for c in PayoutClaim.select().where(PayoutClaim.key.startswith("utxo:"))}


def attach(payout_id: int, *, psbt_b64: str, txid: str, inputs: list[str], fee: int, vsize: int,
           change_sats: int, by: str, change_index: int | None = None, clock=time.time) -> Payout:
    """The payout's PSBT is built: claim its inputs (refused if another payout took one meanwhile)."""
    now = int(clock())
    with write_transaction(db):
        p = _get(payout_id)
        if p.state != "requested":
            raise PayoutRefused(f"payout {p.id} is {p.state}")
        for outpoint in inputs:
            _claim(f"utxo:{outpoint}", p.id, f"output {outpoint}")
        p.psbt, p.txid, p.inputs, p.fee, p.vsize, p.change_sats = (psbt_b64, txid, json.dumps(inputs), fee,
                                                                   vsize, change_sats)
        p.change_index = change_index if change_sats else None
        return _move(p, "awaiting_signatures", by, now, f"{len(inputs)} inputs, fee {fee} sats")


def add_signatures(payout_id: int, *, psbt_b64: str, fingerprints: list[str], identity: str, complete: bool,
                   clock=time.time) -> Payout:
    """Signatures checked by the caller (psbt.combine) are kept; ``complete``: enough on every input."""
    now = int(clock())
    with write_transaction(db):
        p = _get(payout_id)
        if p.state != "awaiting_signatures":
            raise PayoutRefused(f"payout {p.id} is {p.state}: it takes no signatures")
        p.psbt, p.updated_at = psbt_b64, now
        p.save()
        for fp in fingerprints:
            if not PayoutSignature.get_or_none(PayoutSignature.payout == p.id, PayoutSignature.fingerprint == fp):
                PayoutSignature.create(payout=p.id, fingerprint=fp, identity=identity, at=now)
        return p


def finalized(payout_id: int, raw_tx_hex: str, by: str, clock=time.time) -> Payout:
    with write_transaction(db):
        p = _get(payout_id)
        if p.state != "awaiting_signatures":
            raise PayoutRefused(f"payout {p.id} is {p.state}")
        p.raw_tx = raw_tx_hex
        return _move(p, "signed", by, int(clock()), "enough signatures: final")


def chain_state(payout_id: int, state: str, by: str, reason: str, clock=time.time) -> Payout | None:
    """broadcast, confirmed, invalidated, or back to broadcast on a reorg; None if nothing changes."""
    # cancelled, expired -> broadcast, confirmed: withdrawn after its PSBT went out, the co-signers
    # completed it in their wallets anyway (it is paid: recorded so, once; see _release)
    allowed = {"broadcast": ("signed", "awaiting_signatures", "confirmed", "cancelled", "expired"),
               # replaced/invalidated -> confirmed: a reorg swapped which of a bump's transactions
               # confirmed (only those are looked up again: desk._queue_lookup)
               "confirmed": ("signed", "awaiting_signatures", "broadcast", "replaced", "invalidated",
                             "cancelled", "expired"),
               "invalidated": ("awaiting_signatures", "signed", "broadcast"),
               "replaced": ("awaiting_signatures", "signed", "broadcast")}
    with write_transaction(db):
        p = _get(payout_id)
        if p.state not in allowed[state]:
            return None
        return _move(p, state, by, int(clock()), reason)


def family(p: Payout) -> list[Payout]:
    """The payout, the payouts it replaces (transitively) and those replacing it: one payment's
    possible transactions, oldest first."""
    root = p
    while root.replaces:
        root = Payout.get_by_id(root.replaces)
    out, frontier = [root], [root.id]
    while frontier:
        found = list(Payout.select().where(Payout.replaces.in_(frontier)).order_by(Payout.id))
        out += found
        frontier = [q.id for q in found]
    return sorted(out, key=lambda q: q.id)


def ancestors(p: Payout) -> set[int]:
    out, q = set(), p
    while q.replaces:
        out.add(q.replaces)
        q = Payout.get_by_id(q.replaces)
    return out


def settle(payout_id: int, by: str, clock=time.time) -> list[Payout]:
    """(After ``payout_id`` confirmed) the other transactions of the same payment can never
    confirm now (they spend the same inputs): those it replaces become ``replaced``, those that
    replace it ``invalidated`` (also one recorded confirmed before a reorg put this one in its
    place); every claim of the family is the confirmed one's. Returns the payouts moved. One
    payment is reported paid once, whichever of its transactions confirmed."""
    now = int(clock())
    moved = []
    with write_transaction(db):
        p = _get(payout_id)
        if p.state != "confirmed":
            return []
        fam = family(p)
        if len(fam) == 1:
            return []
        PayoutClaim.update(payout=p.id).where(PayoutClaim.payout.in_([q.id for q in fam])).execute()
        older = ancestors(p)
        for q in fam:
            if q.id == p.id or q.state not in PENDING + ("confirmed",):  # confirmed: before a reorg
                continue
            q = _get(q.id)
            if q.id in older:
                moved.append(_move(q, "replaced", by, now, f"replaced by payout {p.id} ({p.txid}), which confirmed"))
            elif q.state == "requested":
                continue
            else:
                moved.append(_move(q, "invalidated", by, now, f"payout {p.id} ({p.txid}), which it was to "
                                   "replace, confirmed instead"))
    return moved


def replacement(original_id: int, *, psbt_b64: str, txid: str, fee: int, vsize: int, change_sats: int,
                feerate: Decimal, by: str, policy: dict, clock=time.time) -> Payout:
    """A bump recorded: a new payout (``replaces`` = the original) with the same destination, amount
    and inputs, awaiting the co-signers' signatures; the original's claims move to it (never
    released: the original, still in the mempool, may yet confirm, and then they move back)."""
    now = int(clock())
    with write_transaction(db):
        o = _get(original_id)
        if o.state not in BUMPABLE:
            raise PayoutRefused(f"payout {o.id} is {o.state}: only a broadcast payout still unconfirmed, or a "
                                "signed one the node has not taken (a fee too low), can be bumped")
        newer = (Payout.select().where(Payout.replaces == o.id, Payout.state.in_(PENDING)).first())
        if newer is not None:
            raise PayoutRefused(f"payout {o.id} already has a replacement, payout {newer.id} ({newer.state}): "
                                "sign that one, or cancel it first")
        p = Payout.create(kind=o.kind, destination=o.destination, sats=o.sats, cad_cents=o.cad_cents, rate=o.rate,
                          rate_as_of=o.rate_as_of, reason=o.reason, invoice=o.invoice, requested_by=by,
                          requested_at=now, expires_at=now + 3600 * policy["open_hours"], updated_at=now,
                          state="awaiting_signatures", psbt=psbt_b64, txid=txid, inputs=o.inputs, fee=fee,
                          vsize=vsize, change_sats=change_sats, change_index=o.change_index, replaces=o.id)
        PayoutClaim.update(payout=p.id).where(PayoutClaim.payout == o.id).execute()
        PayoutHistory.create(payout=p.id, state="awaiting_signatures", at=now, by=by,
                             reason=f"replaces payout {o.id} (RBF): fee {o.fee} -> {fee} sats at {feerate} sat/vB")
        return p


def month_sales_sats(start: int, end: int) -> int:
    """BusinessMgr's vending sales paid in [start, end) (unix s), in sats: an invoice with items
    dispensed is a sale of those items at its quote (the amount due for the items dispensed), as
    the Reporter counts them (actors/reporter/inputs.py ``sales``). 0 when BusinessMgr never ran."""
    database = db.obj
    if not database.table_exists("sales_invoice"):
        return 0
    sql = ('SELECT COALESCE(SUM(COALESCE("due_sats", 0) * "vended" / "items"), 0) FROM "sales_invoice" '
           'WHERE "vended" > 0 AND "items" > 0 AND "paid_at" IS NOT NULL AND "paid_at" >= ? AND "paid_at" < ?'
           ).replace("?", database.param)
    return int(database.execute_sql(sql, (start, end)).fetchone()[0])


def expire(clock=time.time) -> list[int]:
    """Requests open past their time: expired, their claims released."""
    now = int(clock())
    out = []
    with write_transaction(db):
        for p in Payout.select().where(Payout.state.in_(OPEN), Payout.expires_at <= now):
            _move(p, "expired", "payout_mgr", now, "not signed in time")
            out.append(p.id)
    return out


def pending_counts() -> dict[str, int]:
    """Payouts not finished, by state (for the heartbeat)."""
    return {s: n for s, n in Payout.select(Payout.state, peewee.fn.COUNT(Payout.id))
            .where(Payout.state.in_(PENDING)).group_by(Payout.state).tuples()}
