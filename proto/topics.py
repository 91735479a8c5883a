"""Every topic family on the bus and the schema of its body.

This is the single source for docs/protocol.md's topic table: a message
whose topic has no family here is refused (``unknown_topic``).
"""

from .schema import Any, Bool, Bytes, Int, List, Map, Opt, Registry, Str

NAME = Str(max=32, pattern=r"[a-z][a-z0-9_-]{0,31}")
TOPICISH = Str(max=255)
CODE = Str(max=64, pattern=r"[a-z_]+")
REASON = Str(max=512)
RID = Bytes(size=16)

REGISTRY = Registry()
register = REGISTRY.register

# health.NAME: heartbeat of every process, every few seconds.
register("health", Map({
    "name": NAME,
    "role": Str(max=16),
    "version": Str(max=32),
    "pid": Int(min=0),
    "uptime": Int(min=0),
    "interval": Int(min=1, max=3600),
    "token_exp": Opt(Int(min=0)),
    "status": Str(choices=("starting", "ok", "degraded")),
    "detail": Opt(REASON),
    "counters": Map({}, extra=Int(min=0)),
}))

# error.NAME: a receiver refused a message, or a handler failed (rate limited).
register("error", Map({
    "kind": Str(choices=("rejected", "handler")),
    "topic": TOPICISH,
    "sender": Str(max=64),
    "code": CODE,
    "reason": REASON,
    "suppressed": Int(min=0),
}))

# broker.denied: the broker refused a publish or a subscription.
register("broker.denied", Map({
    "identity": Str(max=64),
    "direction": Str(choices=("publish", "subscribe", "connect")),
    "topic": TOPICISH,
    "code": CODE,
    "reason": REASON,
    "suppressed": Int(min=0),
}))

# vault.req.NAME: a token or secret request, signed with NAME's registered key (tok is nil).
register("vault.req", Map({
    "rid": RID,
    "op": Str(choices=("token", "secret")),
    "key_version": Int(min=1),
    "secret": Opt(Str(max=64)),
}))

REVOCATIONS = List(Map({"identity": NAME, "up_to": Int(min=0)}), max=4096)

# vault.token.NAME: the answer to a token request, with every revocation in force
# (so a receiver that starts after a revocation knows it from its first token).
register("vault.token", Map({
    "rid": RID,
    "token": Opt(Bytes(max=4096)),
    "exp": Opt(Int(min=0)),
    "revocations": Opt(REVOCATIONS),
    "code": Opt(CODE),
    "reason": Opt(REASON),
}))

# vault.secret.NAME: a secret sealed to NAME's Curve public key (never plaintext).
register("vault.secret", Map({
    "rid": RID,
    "secret": Str(max=64),
    "sealed": Opt(Bytes(max=8192)),
    "code": Opt(CODE),
    "reason": Opt(REASON),
}))

# vault.revoked: every revocation in force; re-published periodically.
register("vault.revoked", Map({"revocations": REVOCATIONS}))

# events.gap: the event logger saw a hole in a sender's sequence.
register("events.gap", Map({
    "sender": NAME,
    "boot": Int(min=0),
    "expected": Int(min=0),
    "got": Int(min=0),
    "missing": Int(min=1),
}))

# debug.*: free-form bodies from `dctrl pub` (bounded nesting, no floats).
register("debug", Map({}, extra=Any(), max=256))

__all__ = ["REGISTRY", "register", "Any", "Bool", "Bytes", "Int", "List", "Map", "Opt", "Str"]

# -- money in: prices --------------------------------------------------------------

DECIMAL = Str(max=40, pattern=r"-?[0-9]+(\.[0-9]+)?")  # exact decimal as a string, never a float
SOURCE_HEALTH = Map({
    "name": Str(max=32),
    "fresh": Bool(),
    "price": Opt(DECIMAL),        # CAD per BTC from this source (after FX for USD sources)
    "age_s": Opt(Int(min=0)),     # seconds since its last good quote
    "error": Opt(REASON),         # its last error, if any
    "used": Bool(),               # part of the median (fresh and not an outlier)
})

# price.btc_cad: the robust BTC-CAD price (median of fresh, non-outlier sources).
register("price.btc_cad", Map({
    "cad_per_btc": DECIMAL,
    "sources": List(SOURCE_HEALTH, max=16),
    "used": Int(min=2),
    "as_of": Int(min=0),          # ms since epoch of the oldest quote used
}))

# price.stale: fewer than the required number of fresh sources: no sales.
register("price.stale", Map({
    "reason": REASON,
    "fresh": Int(min=0),
    "needed": Int(min=1),
    "sources": List(SOURCE_HEALTH, max=16),
}))

# -- money in: the chain -----------------------------------------------------------

TXID = Str(max=64, pattern=r"[0-9a-f]{64}")
OUTPUT = {
    "event_id": Str(max=64, pattern=r"[0-9a-f]{64}"),  # idempotency key: same event, same id
    "txid": TXID,
    "vout": Int(min=0),
    "address": Str(max=100),
    "script": Str(max=200, pattern=r"[0-9a-f]*"),
    "sats": Int(min=0),
    "label": Opt(Str(max=64)),
}

# chain.tx.seen: an output to a watched script entered the mempool.
register("chain.tx.seen", Map({**OUTPUT, "rbf": Bool()}))
# chain.tx.confirmed: confirmations 1..confirm_depth, once each (and again after a reorg).
register("chain.tx.confirmed", Map({**OUTPUT, "confirmations": Int(min=1), "height": Int(min=0),
                                    "block": TXID}))
# chain.tx.replaced: the transaction was replaced (RBF or a double spend) before confirming.
register("chain.tx.replaced", Map({**OUTPUT, "by": Opt(TXID)}))
# chain.tx.removed: gone from the mempool (expired, evicted) or unconfirmed by a reorg and not back.
register("chain.tx.removed", Map({**OUTPUT, "reason": REASON}))
# chain.block: the tip moved.
register("chain.block", Map({"height": Int(min=0), "hash": TXID, "prev": TXID, "time": Int(min=0)}))
# chain.reorg: blocks were disconnected; affected outputs follow with their new state.
register("chain.reorg", Map({"fork_height": Int(min=0), "depth": Int(min=1), "old_tip": TXID, "new_tip": TXID}))

# cmd.chain.watch: watch an address (from BusinessMgr, MemberData or an operator); retried until acked.
register("cmd.chain.watch", Map({
    "id": RID,
    "expires": Int(min=0),        # unix seconds; an expired command is refused, never acted on
    "address": Str(max=100),
    "label": Opt(Str(max=64)),
    # unix seconds when the watcher handed the address out: payments to it in blocks the
    # notifier processed before this watch reached it are looked for again (nil: none)
    "since": Opt(Int(min=0)),
}))
# cmd.chain.discover: which addresses of a book's receive chain have been used on the chain
# (BusinessMgr at start: never hand out an address with history, whatever the database holds).
# The book names the xpub in the notifier's own config: no key material on the bus.
register("cmd.chain.discover", Map({
    "id": RID,
    "expires": Int(min=0),
    "book": Str(max=32, pattern=r"[a-z][a-z0-9_]*"),
    "start": Int(min=0, max=2**31 - 1),   # the first receive index to look at
    "gap": Int(min=1, max=1000),          # stop after this many unused in a row
}))
register("chain.discover.ack", Map({
    "id": RID,
    "book": Str(max=32),
    "status": Str(choices=("done", "refused")),
    "reason": Opt(REASON),
    "highest": Opt(Int(min=0)),           # the highest used index found at or after start (nil: none)
    "scanned": Int(min=0),                # indexes looked at
}))
# chain.watch.ack: the answer to cmd.chain.watch (the same answer for a retried id).
register("chain.watch.ack", Map({
    "id": RID,
    "address": Str(max=100),
    "script": Str(max=200, pattern=r"[0-9a-f]*"),
    "status": Str(choices=("watching", "refused")),
    "reason": Opt(REASON),
    # what the notifier knows now of payments to the address (newest 64): a watcher that
    # re-sends its watches after a restart reconciles from these (retries get them fresh)
    "outputs": Opt(List(Map({
        "txid": TXID,
        "vout": Int(min=0),
        "sats": Int(min=0),
        "state": Str(choices=("mempool", "confirmed", "replaced", "removed")),
        "confirmations": Int(min=0),
        "height": Opt(Int(min=0)),
        "rbf": Bool(),
        "seen_at": Opt(Int(min=0)),   # unix s the notifier first saw it (None: recorded by an older version)
        "by": Opt(TXID),              # replaced: the conflicting transaction
    }), max=64)),
}))

# -- vending -----------------------------------------------------------------------

# cmd.machine.NAME.vend: dispense one item from a slot (from BusinessMgr); retried until acked.
register("cmd.machine.*.vend", Map({
    "id": RID,                    # the command id: a machine acts on an id at most once
    "expires": Int(min=0),        # unix seconds, judged against a clock the machine trusts
    "slot": Int(min=0, max=255),
    "invoice": Str(max=64),
    "pulse_ms": Opt(Int(min=10, max=10_000)),  # relay on-time; default from the machine's config
}))

# machine.NAME.vend.ack: the answer to one vend command (the same answer when retried).
register("machine.*.vend.ack", Map({
    "id": RID,
    "status": Str(choices=("vended", "refused", "failed")),
    "slot": Int(min=0, max=255),
    "invoice": Str(max=64),
    "reason": Opt(REASON),
    "pulsed_ms": Opt(Int(min=0)),
    "dropped": Opt(Bool()),       # the drop sensor saw the item fall; None: no drop sensor configured
}))

# -- machine inputs (MachineNotifier on the agent) ----------------------------------

EPOCH_MS = Int(min=0, max=10**13)  # ms since the Unix epoch by the machine's clock (advisory: a Pi has no RTC)

# machine.NAME.button: a selection button was pressed (debounced): a request to buy from that slot.
register("machine.*.button", Map({"slot": Int(min=0, max=255), "pressed_at": EPOCH_MS}))
# machine.NAME.coin: a burst of coin-acceptor pulses ended (no pulse for settle_ms).
register("machine.*.coin", Map({
    "pulses": Int(min=1, max=10_000),  # pulses in this burst (the acceptor's value code)
    "total": Int(min=1, max=2**53),    # pulses since the agent started
}))
# machine.NAME.door: the door's state, at start and on every (debounced) change.
register("machine.*.door", Map({"open": Bool()}))
# machine.NAME.drop: the drop sensor saw an item fall; slot is the slot being dispensed, None if none was.
register("machine.*.drop", Map({"slot": Opt(Int(min=0, max=255)), "at": EPOCH_MS}))
# machine.NAME.sensor: one reading of an I2C sensor, on its schedule.
register("machine.*.sensor", Map({"name": NAME, "value": DECIMAL, "unit": Str(max=16)}))

# -- business data: machines, slots, prices, policies (BusinessData is the single writer) --

BUSINESS_CMD = {
    "id": RID,                    # deduplicated by id: a retried command is applied once
    "expires": Int(min=0),        # unix seconds; an expired command is refused, never applied
}
RELAY = Str(max=32, pattern=r"gpio:\d{1,2}|i2c:0x[0-9a-fA-F]{2}:[0-7]")
EVENT_ID = Str(max=64, pattern=r"[0-9a-f]{64}")
# A slot's fixed payment address (DCTRL's legacy sticker mode); "" clears it.
STICKER = Str(max=100, pattern=r"|[a-zA-Z0-9]{14,100}")

# cmd.business.machine.add: a new vending machine (from an operator); retried until acked.
register("cmd.business.machine.add", Map({**BUSINESS_CMD, "name": NAME, "location": Opt(Str(max=128))}))
# cmd.business.machine.set: change a machine's location ("" clears it).
register("cmd.business.machine.set", Map({**BUSINESS_CMD, "name": NAME, "location": Opt(Str(max=128))}))
# cmd.business.machine.rm: remove a machine and its slots; refused while it has invoices not closed.
register("cmd.business.machine.rm", Map({**BUSINESS_CMD, "name": NAME}))
# cmd.business.slot.set: create or change a slot; price_cad is a decimal string ("3.50"), never a float.
# Every field None keeps the slot's current value; a new slot needs product and price_cad.
register("cmd.business.slot.set", Map({
    **BUSINESS_CMD,
    "machine": NAME,
    "slot": Int(min=0, max=255),
    "product": Opt(Str(max=64)),
    "price_cad": Opt(Str(max=32)),  # judged by BusinessData: refused (acked) if not 0..2 decimals, >= 0
    "relay": Opt(RELAY),
    "stock": Opt(Int(min=0, max=1_000_000)),  # items in the slot now (the count restarts from it)
    "sticker_address": Opt(STICKER),  # None keeps it; "" clears it; checked against the network
    "clear": Opt(List(Str(choices=("relay", "stock")), max=2)),  # set to None: not wired / not counted
}))
# cmd.business.slot.rm: remove a slot; refused while it has invoices not closed.
register("cmd.business.slot.rm", Map({**BUSINESS_CMD, "machine": NAME, "slot": Int(min=0, max=255)}))
# cmd.business.policy.set: a new version of one policy (value as a string, validated per key).
register("cmd.business.policy.set", Map({**BUSINESS_CMD, "key": Str(max=64), "value": Str(max=64)}))
# business.ack: the answer to any cmd.business.* (the same answer for a retried id).
register("business.ack", Map({
    "id": RID,
    "status": Str(choices=("done", "refused")),
    "reason": Opt(REASON),
}))
# business.machine.added: a machine was added. business.* events come from an outbox: event_id
# (64 hex, sha256 of the command id and the event's index) is the same if an event is sent twice.
register("business.machine.added", Map({"name": NAME, "location": Opt(Str(max=128)), "created": Int(min=0),
                                        "event_id": EVENT_ID}))
# business.machine.changed: a machine's current state after a change (its location).
register("business.machine.changed", Map({"name": NAME, "location": Opt(Str(max=128)), "created": Int(min=0),
                                          "event_id": EVENT_ID}))
# business.machine.removed: a machine is gone (its slots' business.slot.removed come first).
register("business.machine.removed", Map({"name": NAME, "event_id": EVENT_ID}))
# business.slot.changed: a slot's current state after a change (an operator's, or a vend counted).
register("business.slot.changed", Map({
    "event_id": EVENT_ID,
    "machine": NAME,
    "slot": Int(min=0, max=255),
    "product": Str(max=64),
    "price_cents": Int(min=0),
    "relay": Opt(RELAY),
    "stock": Opt(Int(min=0)),
    "sticker_address": Opt(STICKER),
    "vend": Opt(Str(max=32, pattern=r"[0-9a-f]{32}")),  # the vend (BusinessMgr's id, hex) this change counted
}))
# business.slot.removed: a slot is gone.
register("business.slot.removed", Map({"machine": NAME, "slot": Int(min=0, max=255), "event_id": EVENT_ID}))
# business.policy.changed: a policy key has a new current value (version grows across all keys).
register("business.policy.changed", Map({"key": Str(max=64), "value": Str(max=64), "version": Int(min=1),
                                         "event_id": EVENT_ID}))

# -- sales: invoices (BusinessMgr) ---------------------------------------------------

INVOICE_STATES = ("open", "seen", "paid", "vending", "vended", "expired", "underpaid", "overpaid", "failed")
SATS = Int(min=0, max=21_000_000 * 100_000_000)

# invoice.opened: a selection (or a sticker payment) became an invoice: what to pay, where, until when.
register("invoice.opened", Map({
    "event_id": EVENT_ID,
    "invoice": Str(max=64),
    "mode": Str(choices=("invoice", "sticker")),
    "machine": NAME,
    "slot": Int(min=0, max=255),
    "product": Str(max=64),
    "price_cents": Int(min=0),
    "items": Int(min=0),
    "cad_per_btc": Opt(DECIMAL),  # the quote's price; sticker: None until priced
    "sats": Opt(SATS),            # the amount due; sticker: None until priced
    "address": Str(max=100),
    "uri": Opt(Str(max=200)),     # bitcoin:ADDRESS?amount=BTC, for the machine's display
    "expires": Int(min=0),
    "zero_conf": Bool(),
    "confirmations": Int(min=1),
}))
# invoice.changed: a new state, or new money on the invoice (late, lost, credit): never lost, always visible.
register("invoice.changed", Map({
    "event_id": EVENT_ID,
    "invoice": Str(max=64),
    "state": Str(choices=INVOICE_STATES),
    "previous": Str(choices=INVOICE_STATES),
    "machine": NAME,
    "slot": Int(min=0, max=255),
    "sats": Opt(SATS),
    "received_sats": SATS,        # on time and still live
    "late_sats": SATS,            # after expiry or closing: to refund
    "credit_sats": SATS,          # beyond the amount due: to refund (sticker: the remainder)
    "lost_sats": SATS,            # counted for the sale, then replaced or removed
    "items": Int(min=0),
    "vended": Int(min=0),
    "reason": Opt(REASON),
}))
# invoice.refused: a selection that could not become an invoice (stale price, unknown slot, sold out, ...).
register("invoice.refused", Map({"machine": NAME, "slot": Int(min=0, max=255), "reason": REASON}))

# -- members: MemberData is the single writer ----------------------------------------
# Events carry a member's handle, never a name or an email: the bus and the event log hold no
# personal data (names and emails stay in MemberData's tables, erased by `members forget`).

HANDLE = NAME  # a member's handle: safe in a topic, a path or a log line
ISO_DATE = Str(max=10, pattern=r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # a calendar date; MemberData checks it is real
CAD_TEXT = Str(max=32)  # CAD as a decimal string ("40.00", "-10.00"); judged by MemberData, never a float

# A name and an email travel only sealed to member_data's Curve public key (crypto_box_seal of the
# msgpack map {"name": str?, "email": str?}), so the event log, which records every message, never
# holds them in clear.
PERSONAL = Bytes(max=1024)

# cmd.members.add: a new member, on a plan from the day they join (default: today, UTC).
register("cmd.members.add", Map({**BUSINESS_CMD, "handle": HANDLE, "personal": PERSONAL, "plan": NAME,
                                 "joined": Opt(ISO_DATE)}))
# cmd.members.set: correct a member's name or email (sealed as above; nil in the map keeps one);
# opt_out / opt_in: kinds of mail the member does (not) want, of reminder and statement only.
MAIL_OPT_OUT = Opt(List(Str(max=16, choices=("reminder", "statement")), max=2))
register("cmd.members.set", Map({**BUSINESS_CMD, "handle": HANDLE, "personal": PERSONAL,
                                 "opt_out": MAIL_OPT_OUT, "opt_in": MAIL_OPT_OUT}))
# cmd.members.pay: a payment recorded by an admin (cash, etransfer: a note says how), or a bitcoin
# one with its txid:vout (counted once); on: the day paid (default today).
register("cmd.members.pay", Map({
    **BUSINESS_CMD,
    "handle": HANDLE,
    "cad": CAD_TEXT,
    "method": Str(choices=("bitcoin", "cash", "etransfer")),
    "note": Opt(Str(max=256)),
    "on": Opt(ISO_DATE),
    "txid_vout": Opt(Str(max=72, pattern=r"[0-9a-f]{64}:[0-9]{1,6}")),
}))
# cmd.members.adjust: a signed amount with a note; reverses: the payment it takes back (once, its exact amount).
register("cmd.members.adjust", Map({**BUSINESS_CMD, "handle": HANDLE, "cad": CAD_TEXT, "note": Str(max=256),
                                    "on": Opt(ISO_DATE), "reverses": Opt(Int(min=1))}))
# cmd.members.plan: the member's plan from a date on.
register("cmd.members.plan", Map({**BUSINESS_CMD, "handle": HANDLE, "plan": NAME, "from": ISO_DATE}))
# cmd.members.leave / rejoin: on a date (default today).
register("cmd.members.leave", Map({**BUSINESS_CMD, "handle": HANDLE, "on": Opt(ISO_DATE)}))
register("cmd.members.rejoin", Map({**BUSINESS_CMD, "handle": HANDLE, "on": Opt(ISO_DATE)}))
# cmd.members.group: join or leave a group.
register("cmd.members.group", Map({**BUSINESS_CMD, "handle": HANDLE, "group": NAME,
                                   "action": Str(choices=("add", "remove"))}))
# cmd.members.forget: erase a member's name and email (after leaving); the facts and money stay.
register("cmd.members.forget", Map({**BUSINESS_CMD, "handle": HANDLE}))
# cmd.members.plan_set: a new version of a plan's terms.
register("cmd.members.plan_set", Map({
    **BUSINESS_CMD,
    "name": NAME,
    "cad": CAD_TEXT,                       # dues per period
    "period": Str(choices=("month", "quarter", "year")),
    "grace_days": Int(min=0, max=3650),    # days past due before a member counts as overdue
    "confirmations": Int(min=1, max=100),  # for dues paid in bitcoin
    # days from a period's start its dues are due, then overdue (nil: 7); member_data also
    # refuses more than the plan's shortest period (28 days a month, 89 a quarter)
    "term_days": Opt(Int(min=0, max=90)),
}))
# members.ack: the answer to any cmd.members.* (the same answer for a retried id).
register("members.ack", Map({"id": RID, "status": Str(choices=("done", "refused")), "reason": Opt(REASON)}))
# member.changed: a new fact about a member: its kind and the id of its row (in member_fact, or
# member_payment for paid (by hand, or a bitcoin payment to a dues address that counted, at the
# plan's confirmations), member_adjustment for adjusted), never personal data. From an outbox:
# event_id as business.* events.
register("member.changed", Map({
    "event_id": EVENT_ID,
    "handle": HANDLE,
    "kind": Str(choices=("joined", "plan", "left", "rejoined", "group_joined", "group_left", "details",
                         "forgotten", "paid", "adjusted")),
    "ref": Int(min=1),
    "on": ISO_DATE,                        # the day it takes effect
}))
# member.plan.changed: a plan's new terms (version grows across all plans).
register("member.plan.changed", Map({
    "event_id": EVENT_ID,
    "name": NAME,
    "version": Int(min=1),
    "cents": Int(min=0),
    "period": Str(choices=("month", "quarter", "year")),
    "grace_days": Int(min=0),
    "confirmations": Int(min=1),
    "term_days": Opt(Int(min=0)),          # (nil only from a version before plans had a term)
}))

# -- member mail: MemberMail is the single writer of the outbox (mail_outbox) ----------------
# Events name the outbox row, its kind and the member's handle (nil for a test mail), never an
# address or a mail's text; `dctrl mail outbox` reads the rest from the table.
MAIL_KIND = Str(choices=("welcome", "receipt", "reminder", "overdue", "lapsed", "reinstated", "statement", "payout", "test"))
MAIL_EVENT = Map({"id": Int(min=1), "kind": MAIL_KIND, "handle": Opt(HANDLE)})
# mail.sent: the server accepted it (250 after DATA); mail.failed: given up (5xx, or too long
# undelivered); mail.held: maybe delivered before a crash, waiting for `dctrl mail retry ID`.
register("mail.sent", MAIL_EVENT)
register("mail.failed", MAIL_EVENT)
register("mail.held", MAIL_EVENT)
# cmd.mail.retry: put a held or failed row back in the queue (an operator's decision).
register("cmd.mail.retry", Map({**BUSINESS_CMD, "row": Int(min=1)}))
# cmd.mail.send_test: one test mail to an address (the operator's own, not a member's).
register("cmd.mail.send_test", Map({**BUSINESS_CMD, "to": Str(max=320, pattern=r"[^@\s]+@[^@\s]+")}))
# mail.ack: the answer to cmd.mail.* (row: the outbox row concerned).
register("mail.ack", Map({"id": RID, "status": Str(choices=("done", "refused")), "reason": Opt(REASON),
                          "row": Opt(Int(min=1))}))

# -- reports: the Reporter is the single writer of snapshots and statuses -----------------------
MEMBER_STATUS = Str(choices=("prepaid", "current", "due", "overdue", "lapsed", "left"))
# member.status: a member's status changed on the day `on` (published once, in order, from an
# outbox; held while our own feeds are down, then published dated the day it happened). The
# handle only, never personal data.
register("member.status", Map({
    "event_id": EVENT_ID,
    "handle": HANDLE,
    "status": MEMBER_STATUS,
    "previous": Opt(MEMBER_STATUS),        # None: the member's first status (joining)
    "on": ISO_DATE,
}))
# cmd.report.run: judge transitions now and store the snapshots of a day (default today, UTC).
register("cmd.report.run", Map({**BUSINESS_CMD, "as_of": Opt(ISO_DATE)}))
# cmd.report.member: one member's state on a day (default today), answered in the ack's result.
register("cmd.report.member", Map({**BUSINESS_CMD, "handle": HANDLE, "as_of": Opt(ISO_DATE)}))
# report.ack: the answer to any cmd.report.* (result: the run's counts, or the member's state).
register("report.ack", Map({"id": RID, "status": Str(choices=("done", "refused")), "reason": Opt(REASON),
                            "result": Opt(Map({}, extra=Any(), max=64))}))
# report.members: a members snapshot was stored (report_snapshot): members per status; the rows
# themselves are in the table (5,000 members do not fit a message).
register("report.members", Map({
    "event_id": EVENT_ID,
    "as_of": ISO_DATE,
    "members": Int(min=0),
    "counts": Map({}, extra=Int(min=0), max=16),
    "balance_cents": Int(),                # the sum of the balances (negative: owed to the space)
}))
# report.income: an income snapshot was stored: the last 24 months' totals.
register("report.income", Map({
    "event_id": EVENT_ID,
    "as_of": ISO_DATE,
    "months": List(Map({"month": Str(max=7, pattern=r"[0-9]{4}-[0-9]{2}"), "dues_cents": Int(),
                        "dues_sats": Int(min=0), "sales_cents": Int(min=0), "sales_sats": Int(min=0)}), max=24),
}))
# report.activity: an activity snapshot was stored: per month (the last 12 up to as_of's), members
# active at its end (on as_of for the running month), joins (rejoins included), leaves, and
# retention from the previous month's end in permille (None: nobody was active then).
register("report.activity", Map({
    "event_id": EVENT_ID,
    "as_of": ISO_DATE,
    "months": List(Map({"month": Str(max=7, pattern=r"[0-9]{4}-[0-9]{2}"), "active": Int(min=0),
                        "joins": Int(min=0), "leaves": Int(min=0),
                        "retention_permille": Opt(Int(min=0, max=1000))}), max=120),
}))
# report.groups: a groups snapshot was stored: members per explicit group and per rule group
# ([reporter.groups]); counts only: the handles are in report_snapshot.
register("report.groups", Map({
    "event_id": EVENT_ID,
    "as_of": ISO_DATE,
    "groups": List(Map({"name": NAME,
                        "kind": Str(choices=("explicit", "rule")), "members": Int(min=0)}), max=256),
}))

# -- payouts: PayoutMgr is the single writer of the payout tables (issue 13) ----------------------
PAYOUT_ADDRESS = Str(max=100, pattern=r"[a-zA-Z0-9]{14,100}")  # judged against the network by PayoutMgr
CAD = Str(max=32, pattern=r"[0-9]{1,12}(\.[0-9]{1,2})?")       # "40.00": a decimal string, never a float
PAYOUT_STATE = Str(choices=("requested", "awaiting_signatures", "signed", "broadcast", "confirmed",
                            "cancelled", "expired", "invalidated", "replaced"))
# cmd.payouts.request: pay ADDRESS an amount in sats or in CAD (at the price now), with the reason.
register("cmd.payouts.request", Map({**BUSINESS_CMD, "to": PAYOUT_ADDRESS, "sats": Opt(Int(min=1)), "cad": Opt(CAD),
                                     "kind": Str(choices=("manual", "share", "sweep")), "reason": REASON}))
# cmd.payouts.refund: refund an invoice's refund_sats to ADDRESS, the sats paid ("then") or their CAD
# value at the invoice's rate converted at the price now ("now"); once per invoice.
register("cmd.payouts.refund", Map({**BUSINESS_CMD, "invoice": Int(min=1), "to": PAYOUT_ADDRESS,
                                    "rate": Str(choices=("then", "now")), "reason": Opt(REASON)}))
# cmd.payouts.approve / reject / cancel: an admin's decision on one payout.
for _verb in ("approve", "reject", "cancel"):
    register(f"cmd.payouts.{_verb}", Map({**BUSINESS_CMD, "payout": Int(min=1), "reason": Opt(REASON)}))
# cmd.payouts.import: signatures for a payout: a PSBT (base64) cut to its unsigned transaction and
# partial signatures (`dctrl payouts import|sign` cut it; PayoutMgr uses its own record for the rest).
register("cmd.payouts.import", Map({**BUSINESS_CMD, "payout": Int(min=1), "psbt": Str(max=60_000)}))
# cmd.payouts.bump: a replacement (RBF) of a broadcast payout at a higher fee rate (sat/vB, decimal);
# the ack's payout is the replacement's id (a new payout, awaiting signatures, replacing this one).
register("cmd.payouts.bump", Map({**BUSINESS_CMD, "payout": Int(min=1),
                                  "feerate": Str(max=10, pattern=r"[0-9]{1,6}(\.[0-9]{1,3})?")}))
# payouts.ack: the answer to any cmd.payouts.* (payout: the payout concerned; state: its state after).
register("payouts.ack", Map({"id": RID, "status": Str(choices=("done", "refused")), "reason": Opt(REASON),
                             "payout": Opt(Int(min=1)), "state": Opt(PAYOUT_STATE)}))
# payout.STATE: a payout changed state (requested, awaiting_signatures, signed, broadcast, confirmed,
# cancelled, expired, invalidated, replaced: its replacement confirmed); payout.signature: a co-signer's
# signatures were added.
PAYOUT_EVENT = Map({
    "event_id": EVENT_ID,
    "payout": Int(min=1),
    "state": PAYOUT_STATE,
    "kind": Str(choices=("refund", "manual", "share", "sweep")),
    "sats": Int(min=1),
    "txid": Opt(TXID),
    "by": Opt(NAME),                       # the identity that caused it (None: the chain, the clock)
    "reason": Opt(REASON),
    "signers": Opt(Int(min=0)),            # co-signers on every input so far
    "needed": Opt(Int(min=1)),
})
for _state in ("requested", "awaiting_signatures", "signed", "broadcast", "confirmed", "cancelled", "expired",
               "invalidated", "replaced", "signature"):
    register(f"payout.{_state}", PAYOUT_EVENT)
