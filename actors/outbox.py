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
import logging

import msgpack
import peewee

from proto.errors import DctrlError

log = logging.getLogger(__name__)


def event_id(*parts) -> str:
    """A stable idempotency key: the same fact always gets the same id."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


class Outbox:
    def __init__(self, model):
        self.model = model

    @staticmethod
    def model_for(database, table_name: str) -> type[peewee.Model]:
        class OutboxRow(peewee.Model):
            id = peewee.AutoField()
            event_id = peewee.CharField(max_length=64, unique=True)
            topic = peewee.CharField(max_length=255)
            body = peewee.BlobField()
            sent = peewee.BooleanField(default=False, index=True)

        OutboxRow._meta.database = database
        OutboxRow._meta.table_name = table_name
        return OutboxRow

    def add(self, topic: str, body: dict, eid: str) -> None:
        """Record an event (inside the caller's transaction); ``event_id`` is added to the body.
        Recording the same ``eid`` twice records it once."""
        packed = msgpack.packb({**body, "event_id": eid}, use_bin_type=True)
        self.model.insert(event_id=eid, topic=topic, body=packed).on_conflict_ignore().execute()

    def flush(self, runtime, limit: int = 500) -> int:
        """Loop thread: publish unsent events in order, mark them sent; returns how many went out.

        Publishes only while the runtime can send now (a valid token and a socket); otherwise
        the rows wait for the next flush rather than the runtime's own queue, so nothing is
        queued twice."""
        M = self.model
        sent = []
        for row in M.select().where(M.sent == False).order_by(M.id).limit(limit):  # noqa: E712
            if not runtime.ready_to_publish():
                break
            try:
                if not runtime.publish(row.topic, msgpack.unpackb(row.body, raw=False)):
                    break
            except DctrlError as exc:  # an event its own schema refuses: a bug; never block the rest
                log.error("outbox %s row %d (%s) cannot be sent and is set aside: %s", M._meta.table_name,
                          row.id, row.topic, exc)
            sent.append(row.id)
        if sent:
            M.update(sent=True).where(M.id.in_(sent)).execute()
        return len(sent)

    def pending(self) -> int:
        M = self.model
        return M.select().where(M.sent == False).count()  # noqa: E712
