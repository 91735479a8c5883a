"""An event outbox for actors whose handlers write on the loop thread.

An event is recorded in the same transaction as the change that causes it
(:meth:`Outbox.add`), then published after the commit (:meth:`Outbox.flush`),
and marked sent only once the runtime has put it on the socket. A ``kill -9``
anywhere loses nothing: unsent rows go out at the next flush. The one
duplicate possible (killed between sending and marking) carries the same
``event_id``, so receivers deduplicate on it.

ChainNotifier has its own outbox because it writes from a worker thread;
this one is for the simpler case of an actor writing on its loop thread.
"""

from __future__ import annotations

import hashlib
import json
import logging

import msgpack
import peewee

from proto.errors import DctrlError

from .db import Statements, write_transaction

log = logging.getLogger(__name__)


def event_id(*parts) -> str:
    """A stable idempotency key: the same fact always gets the same id."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


class Refused(Exception):
    """A command that is not applied; its text is the ack's reason."""


def apply_once(database, commands, outbox, topic: str, body: dict, now: float, apply, source: str):
    """Apply the command ``body`` (schema-checked, with ``id`` and ``expires``) at most once, for
    the single writer of its tables (BusinessData, MemberData); returns (ack body, [(topic,
    event)], "done" | "refused" | None for a retry).

    ``apply(cid)`` makes the change and returns its events (or ``(events, fields)``: fields the
    ack carries besides status and reason, kept for a retry too); it raises :class:`Refused` or
    ValueError (a unique index met, IntegrityError, too) to refuse. The dedup record in
    ``commands`` (a model with ``id``, ``topic``, ``result``, ``created``), the change and its
    events (in ``outbox``, each with ``event_id(source, cid, n)``) commit in one transaction: a
    command is either applied, remembered and announced, or none of these. A refused command
    writes only its dedup record (a retry gets the same refusal). Nothing is published here."""
    cid = body["id"].hex()
    events: list = []
    extra: dict = {}
    with write_transaction(database):
        done = commands.get_or_none(commands.id == cid)
        if done is not None:  # a retry: the same answer again, nothing done twice
            return {"id": body["id"], **json.loads(done.result)}, [], None
        try:
            if body["expires"] < now:
                raise Refused("command expired")
            try:
                with database.atomic():  # a savepoint: a refused command writes nothing
                    events = apply(cid)
                    if isinstance(events, tuple):  # (events, fields the ack carries besides status)
                        events, extra = events
            except peewee.IntegrityError as exc:  # a unique index met (the same thing added at once)
                raise Refused(f"conflicts with a record made meanwhile: {str(exc).splitlines()[0][:200]}") \
                    from None
            result = {"status": "done", "reason": None, **extra}
        except (Refused, ValueError) as exc:
            result = {"status": "refused", "reason": str(exc)[:512]}
            log.info("refused %s %s: %s", topic, cid, exc)
        commands.create(id=cid, topic=topic[:64], result=json.dumps(result), created=int(now))
        events = [(t, {**e, "event_id": event_id(source, cid, n)}) for n, (t, e) in enumerate(events)]
        for t, e in events:
            outbox.add(t, e, e["event_id"])
    return {"id": body["id"], **result}, events, result["status"]


class Outbox:
    def __init__(self, model):
        self.model = model
        self.sql = Statements(model._meta.database)  # on every sale's path: fixed statements
        table = model._meta.table_name
        self._insert = (f'INSERT INTO "{table}" ("event_id", "topic", "body", "sent") VALUES (?, ?, ?, ?) '
                        'ON CONFLICT DO NOTHING')
        self._unsent = f'SELECT "id", "topic", "body" FROM "{table}" WHERE "sent" = ? ORDER BY "id" LIMIT ?'
        self._mark = f'UPDATE "{table}" SET "sent" = ? WHERE "id" = ?'

    @staticmethod
    def model_for(database, table_name: str) -> type[peewee.Model]:
        class OutboxRow(peewee.Model):
            id = peewee.AutoField()
            event_id = peewee.CharField(max_length=64, unique=True)
            topic = peewee.CharField(max_length=255)
            body = peewee.BlobField()
            sent = peewee.BooleanField(default=False, index=True)

            # Rows with the same event_id are the same event: when an older version's table
            # lacks the unique index (see actors/db.py ensure_tables), the first is kept.
            KEEP_FIRST_ON_UPGRADE = True

            class Meta:
                legacy_table_names = False  # index names from the table's name, not the class's

        OutboxRow._meta.database = database
        OutboxRow._meta.table_name = table_name
        return OutboxRow

    def add(self, topic: str, body: dict, eid: str) -> None:
        """Record an event (inside the caller's transaction); ``event_id`` is added to the body.
        Recording the same ``eid`` twice records it once."""
        packed = msgpack.packb({**body, "event_id": eid}, use_bin_type=True)
        self.sql.execute(self._insert, eid, topic, packed, False)

    def flush(self, runtime, limit: int = 500) -> int:
        """Loop thread: publish unsent events in order, mark them sent; returns how many went out.

        Publishes only while the runtime can send now (a valid token and a socket); otherwise
        the rows wait for the next flush rather than the runtime's own queue, so nothing is
        queued twice."""
        sent = []
        for rid, topic, body in self.sql.rows(self._unsent, False, limit):
            if not runtime.ready_to_publish():
                break
            try:
                if not runtime.publish(topic, msgpack.unpackb(body, raw=False)):
                    break
            except DctrlError as exc:  # an event its own schema refuses: a bug; never block the rest
                log.error("outbox %s row %d (%s) cannot be sent and is set aside: %s", self.model._meta.table_name,
                          rid, topic, exc)
            sent.append(rid)
        if sent:
            with write_transaction(self.model._meta.database):  # one commit for the batch
                for rid in sent:
                    self.sql.execute(self._mark, True, rid)
        return len(sent)

    def pending(self) -> int:
        M = self.model
        return M.select().where(M.sent == False).count()  # noqa: E712
