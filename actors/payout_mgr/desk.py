"""PayoutMgr's payouts: the commands admins send, and each payout's life from request to
confirmed (issue 13 items 2 to 6). A mixin of :class:`actors.payout_mgr.actor.PayoutMgr`, which
tracks the treasury's outputs; this part spends them.

- **Commands** (``cmd.payouts.*``, admins only by the policy): request, refund, approve, reject,
  cancel, import. Each is applied at most once (actors/outbox.py ``apply_once``: the dedup
  record, the change in the books and its ``payout.*`` events commit together) and answered on
  ``payouts.ack`` with the payout's id and state. ``bump`` makes a replacement (RBF) of a
  broadcast payout: a new payout (``replaces``) with the same inputs, destination and amount and
  a higher fee taken from the change, for the co-signers to sign (the ack names the new payout).
- **Policy payouts** (every ``POLICY_EVERY`` s): a ``sweep`` to ``[payouts] sweep_to`` of the
  free confirmed balance above ``sweep_keep_sats`` once it is above ``sweep_above_sats`` (not
  while a sweep is pending); each ``[payouts.shares]`` destination's share of the previous
  month's vending sales, once per month (claim ``share:YYYY-MM:ADDRESS``). Requested by
  ``payout_mgr``: approvals and signatures as for any payout.
- **Building**: a payout with the approvals the policy asks for is built (service.build) from
  the confirmed outputs whose previous transaction is known and that no other payout claimed,
  at the fee rate of the node's estimate within the policy's bounds, its change to the next
  change index. Not enough money yet: it stays ``requested`` with the reason and is tried again
  every ``BUILD_RETRY`` s and after every block.
- **Broadcast**: once k co-signers have signed every input the transaction is final and kept
  (``signed``); the worker broadcasts it. At every start every ``signed`` payout is broadcast
  again: a crash between finalizing and broadcasting sends it once, and a second broadcast of
  the same transaction is the node saying it has it already, which counts as broadcast.
- **The chain**: after every block (and at start) the worker looks each pending payout's txid
  up in the node (``transaction``: without -txindex, bitcoind's default, the mempool only):
  unconfirmed -> ``broadcast`` (also a payout co-signers finalized and broadcast elsewhere:
  recognised by its txid), a confirmed one back in the mempool -> ``broadcast`` again (reorged
  out). Confirmed or not is decided from the spenders the output tracking found in the blocks
  (``payout_utxo.spent_by``, actor.py ``_spenders``), never from "not found" alone: an input
  spent by its own txid -> ``confirmed``; by another transaction of its bump family -> that one
  ``confirmed``, the others ``replaced`` (older) or ``invalidated`` (newer), ledger.settle; by
  any other transaction -> ``invalidated``, its claims released (a confirmed one via
  ``broadcast``: a reorg put another spend in its place); a confirmed one whose inputs are
  unspent again and not in the mempool -> ``broadcast`` (reorged out); a spender not found
  (beyond ``[chain] rescan_limit``) decides nothing.
"""

from __future__ import annotations

import calendar
import datetime
import logging
import time
from decimal import ROUND_FLOOR, Decimal

import peewee

from proto.errors import ConfigError, DctrlError

from ..db import ensure_tables, write_transaction
from ..outbox import Outbox, Refused, apply_once
from ..runtime import every, on
from . import ledger, queries, service
from . import psbt as tx
from .ledger import Payout, PayoutRefused
from .models import PayoutAddress, PayoutPrice, PayoutUtxo

log = logging.getLogger(__name__)

ACK = "payouts.ack"
BUILD_RETRY = 30.0   # s between attempts to build the approved payouts still waiting for money
FEES_EVERY = 60.0    # s between fee estimates asked of the node
REBROADCAST = 60.0   # s between broadcasts of a signed payout the node has not taken yet
WITHDRAWN_WATCH_S = 30 * 86_400  # s a cancelled or expired payout whose PSBT went out is looked for
POLICY_EVERY = 60.0  # s between looks at the sweep threshold and the month's revenue shares
POLICY_CHECK_INDEXES = 100  # sweep_to and shares' addresses: not any of the treasury's first receive/change ones
POLICY_BY = "payout_mgr"  # requested_by of the payouts the policy asks for
ALREADY_KNOWN = ("already in block chain", "already known", "txn-already-in-mempool", "txn-already-known",
                 "already in utxo set", "outputs already in utxo set")


class PayoutDesk:
    """The payouts part of PayoutMgr (a mixin: it uses the actor's database, treasury, worker
    queue, clock and runtime)."""

    def _desk_init(self) -> None:
        ledger.db.initialize(self.database)
        self.outbox = Outbox(Outbox.model_for(self.database, "payout_outbox"))
        ensure_tables(self.database, list(ledger.MODELS) + [self.outbox.model], add_columns=ledger.ADDED_COLUMNS)
        self.policy_error: str | None = None
        try:
            self.policy = ledger.settings(self.home.config.get("payouts") or {})
            self._check_policy_addresses()
        except DctrlError as exc:
            self.policy, self.policy_error = ledger.settings({}), str(exc)
        self._policy_said: dict[str, str] = {}  # what -> the last reason logged (said once, not every minute)
        self.fee_estimates: dict[int, Decimal] = {}
        self.unsent = True
        self._broadcast_at: dict[int, float] = {}  # payout -> monotonic time of its last broadcast
        self._lookup_queued = False

    def _check_policy_addresses(self) -> None:
        """sweep_to and the shares' destinations: addresses of our network, and not the treasury's."""
        if self.treasury is None:
            return
        named = ([("sweep_to", self.policy["sweep_to"])] if self.policy["sweep_to"] else []) + \
            [("[payouts.shares]", a) for a in self.policy["shares"]]
        if not named:
            return
        # the addresses watched, and the first indexes of each branch (a fresh database has none watched)
        ours = set(self._treasury_addresses_named(a for _, a in named))
        for change in (False, True):
            ours |= {self.treasury.address(i, change=change)[0] for i in range(POLICY_CHECK_INDEXES)}
        for what, address in named:
            try:
                tx.output_script(address, self.treasury)
            except tx.PayoutError as exc:
                raise ConfigError(f"{what}: {exc}") from None
            if address in ours:
                raise ConfigError(f"{what} {address} is an address of the treasury itself")

    @staticmethod
    def _treasury_addresses_named(addresses) -> list[str]:
        wanted = list(addresses)
        return [a for (a,) in PayoutAddress.select(PayoutAddress.address)
                .where(PayoutAddress.address.in_(wanted)).tuples()] if wanted else []

    def _desk_setup(self) -> None:
        """At start: every signed payout broadcast again; the pending ones looked up on the chain."""
        if self.treasury is None:
            return
        self.jobs.put(("fees",))
        self._rebroadcast(force=True)
        self._queue_lookup()

    # -- commands ---------------------------------------------------------------------------

    @on("cmd.payouts")
    def payout_command(self, msg):
        """cmd.payouts.VERB {"id", "expires", ...}: one admin's request or decision."""
        verb = msg.topic.split(".", 2)[2]
        handler = getattr(self, f"_cmd_{verb}", None)

        def apply(cid):
            if self.treasury is None:
                raise Refused(self.error or "no [treasury] descriptor: this server has no treasury to pay from")
            if self.policy_error:
                raise Refused(f"[payouts]: {self.policy_error}")
            if handler is None:
                raise Refused(f"unknown command {msg.topic}")
            try:
                return handler(msg.sender, msg.body)
            except PayoutRefused as exc:
                raise Refused(str(exc)) from None
            except tx.PayoutError as exc:
                raise Refused(str(exc)) from None

        ack, events, _ = apply_once(self.database, ledger.PayoutCommand, self.outbox, msg.topic, msg.body,
                                    self.clock(), apply, "payout")
        ack.setdefault("payout", None)
        ack.setdefault("state", None)
        if events:
            self.unsent = True
        self.publish(ACK, ack)
        self._after_change()

    def _price(self) -> tuple[Decimal, int] | None:
        """The last BTC/CAD price if fresh (``[payouts] price_max_age``) and not declared stale."""
        p = PayoutPrice.get_or_none(PayoutPrice.id == 1)
        if p is None or p.stale or self.clock() - p.received > self.policy["price_max_age"]:
            return None
        return Decimal(p.cad_per_btc), p.as_of

    def _request(self, sender, *, kind, to, sats, reason, invoice=None):
        tx.output_script(to, self.treasury)  # an address of our network, or refused now
        price = self._price()
        p = ledger.request(self.policy, kind=kind, destination=to, sats=sats, rate=price and price[0],
                           rate_as_of=price and price[1], reason=reason, by=sender, invoice=invoice,
                           clock=self.clock)
        return [self._event(p, "requested", sender, reason)], {"payout": p.id, "state": p.state}

    def _cmd_request(self, sender, body):
        if (body["sats"] is None) == (body["cad"] is None):
            raise Refused("give the amount in sats or in CAD, one of the two")
        sats = body["sats"]
        if sats is None:
            price = self._price()
            if price is None:
                raise Refused("no fresh BTC/CAD price to turn CAD into sats; try again later or give --sats")
            sats = int((Decimal(body["cad"]) * 100_000_000 / price[0]).to_integral_value(rounding=ROUND_FLOOR))
        return self._request(sender, kind=body["kind"], to=body["to"], sats=sats, reason=body["reason"])

    def _cmd_refund(self, sender, body):
        from ..business_mgr.queries import invoice

        inv = invoice(self.database, body["invoice"])
        if inv is None:
            raise Refused(f"no invoice {body['invoice']}")
        owed = inv["refund_sats"]
        if owed <= 0:
            raise Refused(f"invoice {body['invoice']} ({inv['state']}) owes nothing back")
        sats = owed
        if body["rate"] == "now":  # the CAD value of what was paid, at the invoice's rate, in sats of today
            price = self._price()
            if price is None:
                raise Refused("no fresh BTC/CAD price for --rate now; try again later or use --rate then")
            cad = Decimal(owed) * Decimal(str(inv["cad_per_btc"])) / 100_000_000
            sats = int((cad * 100_000_000 / price[0]).to_integral_value(rounding=ROUND_FLOOR))
        reason = body["reason"] or f"refund of invoice {body['invoice']} ({inv['state']}, rate {body['rate']})"
        return self._request(sender, kind="refund", to=body["to"], sats=sats, reason=reason,
                             invoice=str(body["invoice"]))

    def _cmd_approve(self, sender, body):
        p, ready = ledger.decide(body["payout"], sender, "approve", self.policy, reason=body["reason"],
                                 clock=self.clock)
        return [], {"payout": p.id, "state": p.state}

    def _cmd_reject(self, sender, body):
        p, _ = ledger.decide(body["payout"], sender, "reject", self.policy, reason=body["reason"], clock=self.clock)
        return [self._event(p, "cancelled", sender, p.state_reason)], {"payout": p.id, "state": p.state}

    def _cmd_cancel(self, sender, body):
        p = ledger.cancel(body["payout"], sender, body["reason"] or f"cancelled by {sender}", clock=self.clock)
        return [self._event(p, "cancelled", sender, p.state_reason)], {"payout": p.id, "state": p.state}

    def _cmd_import(self, sender, body):
        p, new = service.take_signatures(self.treasury, body["payout"], body["psbt"], sender, clock=self.clock)
        signers = ledger.PayoutSignature.select().where(ledger.PayoutSignature.payout == p.id).count()
        events = []
        if new:
            events.append(self._event(p, "signature", sender, f"signed by {', '.join(new)}", signers=signers))
        if p.state == "signed":
            events.append(self._event(p, "signed", sender, "enough signatures: final", signers=signers))
        return events, {"payout": p.id, "state": p.state}

    def _cmd_bump(self, sender, body):
        rate = Decimal(body["feerate"])
        p = service.bump(self.treasury, self.policy, body["payout"], rate, sender, clock=self.clock)
        log.info("payout %d replaces payout %d (RBF) at %s sat/vB: fee %d sats, %s; waiting for %d signature(s)",
                 p.id, p.replaces, rate, p.fee, p.txid, self.treasury.threshold)
        return [self._event(p, "awaiting_signatures", sender, f"replaces payout {p.replaces} (RBF) at {rate} sat/vB: "
                                                              f"fee {p.fee} sats")], {"payout": p.id, "state": p.state}

    def _event(self, p: Payout, state: str, by: str | None, reason: str | None, **more) -> tuple[str, dict]:
        return (f"payout.{state}", {"payout": p.id, "state": p.state, "kind": p.kind, "sats": p.sats, "txid": p.txid,
                                    "by": by, "reason": (reason or "")[:512] or None,
                                    "signers": more.get("signers"), "needed": self.treasury.threshold})

    # -- building, broadcasting, the clock ---------------------------------------------------

    def _after_change(self) -> None:
        self._build_ready()
        self._rebroadcast()
        self.flush_payouts()

    @every(1.0)
    def flush_payouts(self):
        if self.unsent:
            self.outbox.flush(self.runtime)
            self.unsent = self.outbox.pending() > 0

    def _record(self, p: Payout, state: str, by: str | None, reason: str | None) -> None:
        """(In the caller's transaction) the event of a change made outside a command."""
        topic, body = self._event(p, state, by, reason)
        from ..outbox import event_id
        eid = event_id("payout", p.id, state, int(self.clock()), reason or "")
        self.outbox.add(topic, body, eid)
        self.unsent = True

    def _spendable(self) -> list[tx.Utxo]:
        return [tx.Utxo(u["txid"], u["vout"], u["sats"], u["branch"] == "change", u["index"], u["prev_tx"])
                for u in queries.spendable(self.database)]

    def _next_change_index(self) -> int:
        used = {u for (u,) in PayoutUtxo.select(PayoutUtxo.position).where(PayoutUtxo.branch == "change").tuples()}
        used |= {c for (c,) in Payout.select(Payout.change_index).where(
            Payout.change_index.is_null(False) & Payout.state.not_in(ledger.ENDED_UNPAID)).tuples()}
        return max(used) + 1 if used else 0

    @every(BUILD_RETRY)
    def _build_ready(self) -> None:
        """Build the PSBT of every requested payout that has its approvals."""
        if self.treasury is None or self.policy_error:
            return
        waiting = [p for p in Payout.select().where(Payout.state == "requested").order_by(Payout.id)
                   if ledger.approvals(p.id) >= self.policy["approvals"]]
        if not waiting:
            return
        rate = service.feerate(self.policy, self.fee_estimates)
        utxos = self._spendable()
        for p in waiting:
            try:
                with write_transaction(self.database):
                    p = service.build(self.treasury, self.policy, p.id, utxos, rate=rate,
                                      change_index=self._next_change_index(), clock=self.clock)
                    self._record(p, "awaiting_signatures", None, f"{len(p.outpoints)} input(s), fee {p.fee} sats "
                                                                f"at {rate} sat/vB")
                log.info("payout %d built: %s, %d input(s), fee %d sats; waiting for %d signature(s)", p.id, p.txid,
                         len(p.outpoints), p.fee, self.treasury.threshold)
            except (tx.PayoutError, PayoutRefused) as exc:
                if p.state_reason != f"waiting: {exc}":
                    log.warning("payout %d cannot be built yet: %s", p.id, exc)
                    Payout.update(state_reason=f"waiting: {exc}"[:1000]).where(Payout.id == p.id).execute()
        if self.unsent:
            self.flush_payouts()

    @every(REBROADCAST)
    def _rebroadcast(self, force: bool = False) -> None:
        now = time.monotonic()
        for p in Payout.select().where(Payout.state == "signed"):
            if force or now - self._broadcast_at.get(p.id, -REBROADCAST) >= REBROADCAST:
                self._broadcast_at[p.id] = now
                self.jobs.put(("broadcast", p.id, p.raw_tx, p.txid))

    @every(60.0)
    def _expire(self) -> None:
        with write_transaction(self.database):  # the change and its events together
            expired = ledger.expire(clock=self.clock)
            for pid in expired:
                self._record(Payout.get_by_id(pid), "expired", None, "not signed in time")
        if expired:
            log.info("payouts expired (not signed in time): %s", expired)
            self.flush_payouts()

    @every(FEES_EVERY)
    def _ask_fees(self) -> None:
        if self.treasury is not None:
            self.jobs.put(("fees",))

    def _queue_lookup(self) -> None:
        """Ask the worker where the chain has each pending payout's transaction."""
        if self._lookup_queued or self.treasury is None:
            return
        recent = int(self.clock()) - 86_400
        # also, for a day: the confirmed (a reorg), and a bump's transactions that lost to another
        # of the same payment (a reorg may swap which one confirmed)
        withdrawn = int(self.clock()) - WITHDRAWN_WATCH_S
        # and withdrawn ones whose PSBT went out (co-signers may still complete them: ledger._release)
        rows = [(p.id, p.txid, p.state, p.outpoints) for p in Payout.select().where(
            Payout.txid.is_null(False) & (Payout.state.in_(("awaiting_signatures", "signed", "broadcast"))
                                          | (Payout.state.in_(ledger.WITHDRAWN) & (Payout.updated_at >= withdrawn))
                                          | ((Payout.state == "confirmed") & (Payout.updated_at >= recent))
                                          | ((Payout.state == "replaced") & (Payout.updated_at >= recent))
                                          | ((Payout.state == "invalidated") & Payout.replaces.is_null(False)
                                             & (Payout.updated_at >= recent))))]
        if rows:
            self._lookup_queued = True
            self.jobs.put(("lookup", rows))

    # -- the worker's jobs (network calls; results applied on the loop) ----------------------

    def _desk_job(self, job) -> None:
        """(Worker) fees, broadcast, lookup."""
        if job[0] == "fees":
            estimates = self.adaptor.fee_estimates()
            self.runtime.call_soon(setattr, self, "fee_estimates", estimates)
        elif job[0] == "broadcast":
            _, pid, raw_hex, txid = job
            try:
                self.adaptor.broadcast(raw_hex)
                self.runtime.call_soon(self._broadcast_done, pid, "the node took it")
            except Exception as exc:
                text = str(exc)
                if any(k in text.lower() for k in ALREADY_KNOWN):
                    self.runtime.call_soon(self._broadcast_done, pid, "the node had it already")
                else:
                    self.runtime.call_soon(self._broadcast_refused, pid, text[:300])
        elif job[0] == "lookup":
            found = [(pid, self.adaptor.transaction(txid)) for pid, txid, _, _ in job[1]]
            self.runtime.call_soon(self._looked_up, job[1], found)

    def _broadcast_done(self, pid: int, how: str) -> None:
        with write_transaction(self.database):
            p = ledger.chain_state(pid, "broadcast", "payout_mgr", how, clock=self.clock)
            if p is not None:
                self._record(p, "broadcast", None, how)
        if p is not None:
            log.info("payout %d broadcast: %s (%s)", pid, p.txid, how)
            self.flush_payouts()

    def _broadcast_refused(self, pid: int, reason: str) -> None:
        log.error("payout %d not broadcast: %s (tried again in %d s; if an input was spent elsewhere the "
                  "payout is invalidated once that spend confirms)", pid, reason, REBROADCAST)
        Payout.update(state_reason=f"not broadcast yet: {reason}"[:1000]).where(Payout.id == pid).execute()

    def _verdict(self, txid, inputs, t, spends) -> tuple[str, object]:
        """Where the chain has a payout's transaction: ("confirmed", height), ("mempool", None),
        ("spent", the other txid spending an input), ("unknown", None): an input spent by a
        transaction not found in the blocks, or ("nothing", None). ``t``: the node's answer for
        the txid, which without -txindex finds it in the mempool only; ``spends``: outpoint ->
        (spent_by, spent_height) of the treasury's spent outputs (the worker's ``_spenders``)."""
        if t is not None and t.height is not None:  # (a node with -txindex, Esplora)
            return "confirmed", t.height
        if t is not None:
            return "mempool", None
        ours = [spends[o][1] for o in inputs if o in spends and spends[o][0] == txid]
        if ours:  # its inputs spent by itself: it is in a block
            return "confirmed", ours[0]
        others = sorted({spends[o][0] for o in inputs if o in spends and spends[o][0] is not None})
        if others:
            return "spent", others[0]
        if any(o in spends for o in inputs):
            return "unknown", None
        return "nothing", None

    def _looked_up(self, rows, found) -> None:
        """(Loop) the lookup's answers applied. Never decides "gone" from a transaction not found
        alone (bitcoind without -txindex finds no confirmed one): a payout is confirmed when its
        inputs are spent by its own txid, invalidated when by a transaction outside its bump
        family, and a family member spending them is the one confirmed (ledger.settle)."""
        self._lookup_queued = False
        spends = {f"{t}:{v}": (by, h) for t, v, by, h in PayoutUtxo.select(
            PayoutUtxo.txid, PayoutUtxo.vout, PayoutUtxo.spent_by, PayoutUtxo.spent_height)
            .where(PayoutUtxo.state == "spent").tuples()}
        answers = [(row, self._verdict(row[1], row[3], t, spends)) for row, (_, t) in zip(rows, found)]
        # a transaction found confirmed first: the other transactions of its payment (a bump's
        # original or replacement) are then replaced or invalidated, never paid too (ledger.settle)
        answers.sort(key=lambda a: a[1][0] != "confirmed")
        with write_transaction(self.database):
            for (pid, txid, state, inputs), (verdict, detail) in answers:
                if verdict == "confirmed":
                    if state != "confirmed":
                        self._confirm(pid, f"confirmed at height {detail}")
                elif verdict == "mempool":
                    if state != "broadcast":
                        self._move(pid, "broadcast", "in the mempool" if state != "confirmed" else "reorged out")
                elif verdict == "spent":
                    p = Payout.get_by_id(pid)
                    member = next((q for q in ledger.family(p) if q.txid == detail and q.id != pid), None)
                    if member is not None:  # another transaction of the same payment confirmed
                        self._confirm(member.id, f"confirmed (its inputs spent by it, {detail})")
                        continue
                    if state in ledger.WITHDRAWN:  # can no longer confirm: what it claimed is free
                        if ledger.dead(pid, "payout_mgr", f"its transaction can no longer confirm: an input "
                                                          f"was spent by {detail}", clock=self.clock):
                            log.info("payout %d (%s) can no longer be completed: an input was spent by %s",
                                     pid, state, detail)
                        continue
                    if state == "confirmed" and not self._move(pid, "broadcast", "reorged out, and an input is "
                                                                                 "spent by another transaction"):
                        continue
                    self._move(pid, "invalidated", f"an input was spent by another transaction, {detail}")
                elif verdict == "nothing" and state == "confirmed":
                    # its inputs unspent again (or gone with their own transaction) and it is not in
                    # the mempool: the block that had it was reorged away
                    self._move(pid, "broadcast", "reorged out, and not in the node's mempool", logging.WARNING)
        self.flush_payouts()

    def _move(self, pid: int, state: str, reason: str, level=logging.INFO) -> Payout | None:
        """(In the caller's transaction) a payout's chain state changed, with its event."""
        change = ledger.chain_state(pid, state, "payout_mgr", reason, clock=self.clock)
        if change is not None:
            self._record(change, state, None, change.state_reason)
            log.log(level, "payout %d %s: %s", pid, state, change.state_reason)
        return change

    def _confirm(self, pid: int, reason: str) -> None:
        """(In the caller's transaction) confirmed; the other transactions of its payment settled."""
        self._move(pid, "confirmed", reason)
        for q in ledger.settle(pid, "payout_mgr", clock=self.clock):
            self._record(q, q.state, None, q.state_reason)
            log.info("payout %d %s: %s", q.id, q.state, q.state_reason)

    # -- payouts the policy asks for: sweeps and revenue shares -----------------------------

    def _say(self, what: str, reason: str | None, level=logging.WARNING) -> None:
        """Log ``reason`` about ``what`` when it changes (a policy look runs every minute)."""
        if reason and self._policy_said.get(what) != reason:
            log.log(level, "payout_mgr: %s: %s", what, reason)
        self._policy_said[what] = reason or ""

    @every(POLICY_EVERY)
    def _policy_payouts(self) -> None:
        if self.treasury is None or self.policy_error:
            return
        named = ([self.policy["sweep_to"]] if self.policy["sweep_to"] else []) + list(self.policy["shares"])
        ours = self._treasury_addresses_named(named)  # one the treasury watches (beyond the first indexes)
        if ours:
            self.policy_error = f"{ours[0]} (sweep_to or [payouts.shares]) is an address of the treasury itself"
            log.error("payout_mgr: [payouts]: %s", self.policy_error)
            return
        made = []
        if self.policy["sweep_to"]:
            made += self._sweep()
        if self.policy["shares"]:
            made += self._shares()
        if made:
            self._build_ready()
            self.flush_payouts()

    def free_confirmed_sats(self) -> int:
        """The confirmed treasury outputs no payout has claimed, less what the payouts requested
        but not built yet will take: what a sweep may move."""
        taken = ledger.claimed_outpoints()
        free = sum(u.sats for u in PayoutUtxo.select().where(PayoutUtxo.state == "confirmed")
                   if u.outpoint not in taken)
        owed = Payout.select(peewee.fn.COALESCE(peewee.fn.SUM(Payout.sats), 0)).where(
            Payout.state == "requested").scalar()
        return free - int(owed)

    def _sweep(self) -> list[Payout]:
        pol = self.policy
        pending = Payout.select().where(Payout.kind == "sweep", Payout.requested_by == POLICY_BY,
                                        Payout.state.in_(ledger.PENDING)).first()
        if pending is not None:
            return []
        free = self.free_confirmed_sats()
        if free <= pol["sweep_above_sats"]:
            self._say("sweep", None)
            return []
        sats = free - pol["sweep_keep_sats"]
        dust = tx.dust_limit(tx.output_script(pol["sweep_to"], self.treasury))
        if sats < dust:
            self._say("sweep", f"{sats} sats above sweep_keep_sats is below the dust limit of {dust}: not requested",
                      logging.INFO)
            return []
        reason = (f"sweep: {free} sats confirmed and free in the treasury, above sweep_above_sats "
                  f"{pol['sweep_above_sats']}; {pol['sweep_keep_sats']} kept")
        price = self._price()
        try:
            with write_transaction(self.database):
                p = ledger.request(pol, kind="sweep", destination=pol["sweep_to"], sats=sats,
                                   rate=price and price[0], rate_as_of=price and price[1], reason=reason,
                                   by=POLICY_BY, clock=self.clock)
                self._record(p, "requested", POLICY_BY, reason)
        except PayoutRefused as exc:
            self._say("sweep", f"{sats} sats to {pol['sweep_to']} not requested: {exc}")
            return []
        self._say("sweep", None)
        log.info("payout %d: %s", p.id, reason)
        return [p]

    def _shares(self) -> list[Payout]:
        """Each destination's share of the previous month's sales, once (claim share:YYYY-MM:ADDRESS)."""
        now = datetime.datetime.fromtimestamp(int(self.clock()), datetime.timezone.utc)
        this = datetime.datetime(now.year, now.month, 1, tzinfo=datetime.timezone.utc)
        last = (this - datetime.timedelta(days=1)).replace(day=1)
        month = f"{last.year:04d}-{last.month:02d}"
        keys = {a: f"share:{month}:{a}" for a in self.policy["shares"]}
        done = {c.key for c in ledger.PayoutClaim.select().where(ledger.PayoutClaim.key.in_(list(keys.values())))}
        todo = [a for a in keys if keys[a] not in done]
        if not todo:
            return []
        sales = ledger.month_sales_sats(calendar.timegm(last.timetuple()), calendar.timegm(this.timetuple()))
        price = self._price()
        made = []
        for address in todo:
            pct = self.policy["shares"][address]
            sats = int((Decimal(sales) * pct / 100).to_integral_value(rounding=ROUND_FLOOR))
            dust = tx.dust_limit(tx.output_script(address, self.treasury))
            what = f"share {month} to {address}"
            if sats < dust:
                self._say(what, f"{pct}% of {sales} sats of sales is {sats} sats, below the dust limit of {dust}: "
                                "not requested", logging.INFO)
                continue
            reason = f"revenue share {month}: {pct}% of {sales} sats of vending sales"
            try:
                with write_transaction(self.database):
                    p = ledger.request(self.policy, kind="share", destination=address, sats=sats,
                                       rate=price and price[0], rate_as_of=price and price[1], reason=reason,
                                       by=POLICY_BY, claims=(keys[address],), clock=self.clock)
                    self._record(p, "requested", POLICY_BY, reason)
            except PayoutRefused as exc:
                self._say(what, f"{sats} sats not requested: {exc}")
                continue
            self._say(what, None)
            log.info("payout %d: %s", p.id, reason)
            made.append(p)
        return made
