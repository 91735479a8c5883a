"""Reporter: members' statuses and their transitions, and the snapshots of the business (issue 12).

Computes with the pure core (dues.py, feeds.py, business.py, fast.py) over the facts MemberData
and BusinessMgr hold (read through inputs.py and reports.py, never written), and is the only
writer of its own ``report_*`` tables (models.py).

Runs
    Daily at ``[reporter] at`` (local time; the ``schedule`` library), every ``interval``
    seconds, soon after a member's facts changed (``member.changed``) or a feed came back, and
    on demand (``cmd.report.run``). A run :meth:`judges <judge>` the transitions up to
    yesterday (UTC: a day is final only once it is over, a payment on the last day of grace
    counts) and stores the snapshots of today (:meth:`snapshot`). Every computation takes its
    day as an argument.

Transitions, once each
    Per member, ``report_member_status`` holds the last status published and
    ``judged_through``. A run computes the transitions after that day
    (:func:`actors.reporter.feeds.publishable`), writes the new row and the ``member.status``
    events into ``report_outbox`` in one transaction, and publishes from the outbox (marked sent
    once on the socket; a restart sends what was left). So a restart neither republishes nor
    skips one; the one duplicate possible (killed between sending and marking) has the same
    ``event_id``. A member seen for the first time is judged from the day before joining: its
    first event has ``previous`` None. If facts entered later change a day already judged (a
    payment recorded backdated), the status computed for ``judged_through`` differs from the one
    published: the correction is published dated ``judged_through``.

Feeds
    ChainNotifier's heartbeat (``health.chain_notifier``: not ok, or a lag beyond ``max_lag``
    blocks, or silent ``chain_timeout`` s: disconnected) and the price (``price.stale``, or no
    ``price.btc_cad`` for ``price_timeout`` s) open an outage in ``report_outage`` dated the UTC
    day it was seen, closed the day the feed is back. feeds.py decides what is held: a
    transition on or after an ongoing outage's start waits, and goes out dated the day it
    happened once the outage is over (judged as of that day, with the payments ChainNotifier saw
    on catching up).

Snapshots
    ``report.members`` (counts per status, the rows in ``report_snapshot``) and
    ``report.income`` (the months' totals), ``report.activity`` (the last 12 months: active
    members, joins, leaves, retention) and ``report.groups`` (members per explicit group and per
    rule of ``[reporter.groups]``; the handles in ``report_snapshot`` only) for the day, stored
    (a rerun of the same day replaces the body) and published through the outbox.

Commands: ``cmd.report.run`` {as_of} and ``cmd.report.member`` {handle, as_of}, answered on
``report.ack`` {id, status, reason, result}. Both only read or recompute, so a retried one is
simply done again (nothing is published twice: see above).
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import date, timedelta

import schedule

from keys.home import DEFAULTS, Home, merge

from ..db import connect, ensure_tables, write_transaction
from ..outbox import Outbox, event_id
from ..runtime import Actor, every, on
from .dues import DuesError, MemberBook, Status
from .feeds import Outage, publishable
from .inputs import load, utc_day
from .models import TABLES, ReportMemberStatus, ReportOutage, ReportSnapshot, ReportTransition, db
from .reports import (activity_json, activity_rows, counts, group_rows, group_rules, income_rows, member_report,
                      member_rows)
from .totals import fold

log = logging.getLogger(__name__)

ACK = "report.ack"
ONE_DAY = timedelta(days=1)
LAG_RE = re.compile(r"\blag (\d+)")


class Reporter(Actor):
    IDENTITY = "reporter"

    def __init__(self, home: Home, *, database=None, clock=time.time, monotonic=time.monotonic):
        self.home = home
        self.clock, self.monotonic = clock, monotonic
        self.cfg = merge(DEFAULTS["reporter"], home.config.get("reporter", {}))
        self.rules = group_rules(self.cfg.get("groups"))  # [reporter.groups]: a bad rule stops the start
        self.own_database = database is None
        self.database = database or connect(home.database_url)
        db.initialize(self.database)
        self.outbox = Outbox(Outbox.model_for(self.database, "report_outbox"))
        ensure_tables(self.database, [*TABLES, self.outbox.model])
        self.unsent = True
        self.scheduler = schedule.Scheduler()  # the daily run (the runtime's own runs the @every jobs)
        self.scheduler.every().day.at(self.cfg["at"]).do(self.run)
        self.last_seen = {"chain": self.monotonic(), "price": self.monotonic()}  # a silent feed is down
        self.dirty = True  # a run is due (at start: whatever happened while we were away)
        self._last_run_mono = float("-inf")
        # Each feed's state as last recorded (False: an outage is open), so that the heartbeats and
        # prices that say nothing new touch no table.
        self.healthy = {feed: True for feed in self.last_seen}
        for o in ReportOutage.select().where(ReportOutage.end.is_null()).bind(self.database):
            self.healthy[o.feed] = False
        self.published = 0
        self.held = 0
        self.last_run: str | None = None

    def teardown(self):
        if self.own_database:
            self.database.close()

    def health(self):
        down = [f"{o.feed} down since {o.start}" for o in self.outages() if o.end is None]
        detail = f"{self.published} transitions published, {self.held} members held, last run {self.last_run}"
        if down:
            detail += "; " + ", ".join(down)
        if self.unsent:
            detail += f", {self.outbox.pending()} event(s) waiting to be sent"
        return "ok", detail

    def today(self) -> date:
        return utc_day(self.clock())

    # -- the bus ---------------------------------------------------------------------

    @on("cmd.report")
    def command(self, msg):
        body = {"id": msg.body["id"], "status": "done", "reason": None, "result": None}
        try:
            if msg.body["expires"] < self.clock():
                raise ValueError("command expired")
            as_of = date.fromisoformat(msg.body["as_of"]) if msg.body.get("as_of") else self.today()
            if msg.topic == "cmd.report.run":
                body["result"] = self.run(as_of)
            elif msg.topic == "cmd.report.member":
                found = member_report(self.database, msg.body["handle"], as_of)
                if found is None:
                    raise ValueError(f"unknown member {msg.body['handle']}")
                body["result"] = {k: v for k, v in found.items() if not isinstance(v, dict)}
            else:
                raise ValueError(f"unknown command {msg.topic}")
        except ValueError as exc:  # (a bad date, an unknown member, an expired command)
            body.update(status="refused", reason=str(exc)[:512])
        self.publish(ACK, body)

    @on("member.changed")
    def member_changed(self, msg):
        self.dirty = True  # a backdated payment can change a day already judged: look again soon

    @on("price")
    def price(self, msg):
        self.last_seen["price"] = self.monotonic()
        if msg.topic == "price.stale":
            self.feed("price", False, f"price stale: {msg.body['reason']}"[:256])
        elif msg.topic == "price.btc_cad":
            self.feed("price", True)

    @on("health.chain_notifier")
    def chain_health(self, msg):
        self.last_seen["chain"] = self.monotonic()
        body = msg.body
        lag = LAG_RE.search(body.get("detail") or "")
        if body["status"] != "ok":
            self.feed("chain", False, f"chain_notifier {body['status']}: {body.get('detail') or ''}"[:256])
        elif lag and int(lag.group(1)) > self.cfg["max_lag"]:
            self.feed("chain", False, f"chain_notifier {lag.group(1)} blocks behind the tip")
        else:
            self.feed("chain", True)

    @every(5.0)
    def tick(self):
        """Silent feeds, the daily run, a run when due, and the outbox."""
        now = self.monotonic()
        for feed, timeout in (("chain", self.cfg["chain_timeout"]), ("price", self.cfg["price_timeout"])):
            if now - self.last_seen[feed] > timeout:
                self.feed(feed, False, f"no news from the {feed} feed for {timeout:g} s")
        self.scheduler.run_pending()
        if self.dirty or now - self._last_run_mono >= self.cfg["interval"]:
            self.run()
        self.flush()

    def flush(self):
        if self.unsent:
            self.outbox.flush(self.runtime)
            self.unsent = self.outbox.pending() > 0

    # -- feeds -----------------------------------------------------------------------

    def feed(self, feed: str, healthy: bool, reason: str = "") -> None:
        """Record what we see of a feed: an outage opens on the first bad news and closes (dated
        today, its last unhealthy day) on the first good news after it."""
        if self.healthy.get(feed) == healthy:
            return
        self.healthy[feed] = healthy
        today = self.today().isoformat()
        with write_transaction(self.database):
            open_ = ReportOutage.get_or_none((ReportOutage.feed == feed) & ReportOutage.end.is_null())
            if not healthy and open_ is None:
                ReportOutage.create(feed=feed, start=today, end=None, reason=reason or f"{feed} down")
                log.warning("%s feed down: %s (member transitions from today are held)", feed, reason)
            elif healthy and open_ is not None:
                open_.end = today
                open_.save()
                log.info("%s feed back (down since %s)", feed, open_.start)
                self.dirty = True

    def outages(self) -> list[Outage]:
        return [Outage(o.feed, date.fromisoformat(o.start), date.fromisoformat(o.end) if o.end else None)
                for o in ReportOutage.select().order_by(ReportOutage.id).bind(self.database)]

    # -- runs ------------------------------------------------------------------------

    def run(self, as_of: date | None = None) -> dict:
        """Judge transitions up to yesterday, then store and publish the snapshots of ``as_of``
        (default today)."""
        today = self.today()
        self.dirty = False
        self._last_run_mono = self.monotonic()
        if not self.database.table_exists("member_member"):
            return {"as_of": (as_of or today).isoformat(), "waiting": "member_data has not made its tables yet"}
        folded = fold(self.database, self.clock())  # the totals the reports read, brought up to date
        log.debug("totals: added %s", folded)
        judged = self.judge(today - ONE_DAY)
        snap = self.snapshot(as_of or today)
        self.last_run = today.isoformat()
        self.flush()
        return {**judged, **snap}

    def judge(self, now: date) -> dict:
        """Publish every member's transitions up to ``now`` that are final (feeds.py), once."""
        rows = {r.handle: r for r in ReportMemberStatus.select().bind(self.database)}
        # Transitions need each payment's day only after the day each member was judged through:
        # the money before the earliest of those is summed by the database. A member never judged
        # yet (no row) is judged from joining: then every payment is read.
        (members,) = self.database.execute_sql('SELECT COUNT(*) FROM "member_member"').fetchone()
        since = min((date.fromisoformat(r.judged_through) for r in rows.values()), default=None)
        inputs = load(self.database, now, since=since if members == len(rows) else None)
        outages = self.outages()
        published, held = 0, 0
        created = int(self.clock())
        with write_transaction(self.database):
            for h in inputs.histories:
                row = rows.get(h.handle)
                since = date.fromisoformat(row.judged_through) if row else h.joined - ONE_DAY
                if since >= now:
                    continue
                try:
                    book_status = MemberBook(h, inputs.plans).status(since)
                    j = publishable(h, inputs.plans, outages, since, now)
                except DuesError as exc:  # facts the core cannot read (a plan with no version then)
                    log.warning("member %s not judged: %s", h.handle, exc)
                    continue
                last = row.status if row else None
                events = []
                if (book_status.value if book_status else None) != last and book_status is not None:
                    events.append((since, last, book_status.value))  # a correction: facts entered late
                    last = book_status.value
                for t in j.published:
                    events.append((t.on, last, t.new.value))
                    last = t.new.value
                for on_, previous, status in events:
                    body = {"handle": h.handle, "status": status, "previous": previous, "on": on_.isoformat()}
                    self.outbox.add("member.status", body, event_id("member.status", h.handle, on_, previous, status))
                    ReportTransition.insert(handle=h.handle, on=on_.isoformat(), previous=previous, status=status,
                                            created=created).execute()
                values = {"status": last, "on": events[-1][0].isoformat() if events else (row.on if row else None),
                          "judged_through": j.judged_through.isoformat(), "held": j.reason[:256] or None}
                if row is None:
                    ReportMemberStatus.insert(handle=h.handle, **values).execute()
                else:
                    ReportMemberStatus.update(**values).where(ReportMemberStatus.handle == h.handle).execute()
                published += len(events)
                held += bool(j.held)
        if published:
            self.unsent = True
        self.published += published
        self.held = held
        log.info("judged through %s: %d transition(s) published, %d member(s) held", now, published, held)
        return {"judged_through": now.isoformat(), "published": published, "held": held}

    def snapshot(self, as_of: date) -> dict:
        """Store and publish the members, income, activity and groups reports of ``as_of``."""
        rows = member_rows(self.database, as_of)
        income = income_rows(self.database, as_of)
        activity = activity_json(activity_rows(self.database, as_of))
        groups = group_rows(self.database, as_of, self.rules)
        by_status = counts(rows)
        balance = sum(r["balance_cents"] or 0 for r in rows)
        day, created = as_of.isoformat(), int(self.clock())
        with write_transaction(self.database):
            for kind, body in (("members", rows), ("income", income), ("activity", activity), ("groups", groups)):
                text = json.dumps(body, sort_keys=True)
                n = (ReportSnapshot.update(body=text, created=created)
                     .where((ReportSnapshot.kind == kind) & (ReportSnapshot.as_of == day)).execute())
                if not n:
                    ReportSnapshot.insert(kind=kind, as_of=day, created=created, body=text).execute()
            self.outbox.add("report.members", {"as_of": day, "members": len(rows), "counts": by_status,
                                               "balance_cents": balance},
                            event_id("report.members", day, created, len(rows), balance))
            months = [{"month": m["month"], "dues_cents": sum(d["cents"] for d in m["dues"].values()),
                       "dues_sats": sum(d["sats"] for d in m["dues"].values()),
                       "sales_cents": sum(s["cents"] for s in m["sales"]),
                       "sales_sats": sum(s["sats"] for s in m["sales"])} for m in income[-24:]]
            self.outbox.add("report.income", {"as_of": day, "months": months},
                            event_id("report.income", day, created, json.dumps(months)))
            active = [{"month": m["month"], "active": m["active"], "joins": m["joins"], "leaves": m["leaves"],
                       "retention_permille": m["retention_permille"]} for m in activity]
            self.outbox.add("report.activity", {"as_of": day, "months": active},
                            event_id("report.activity", day, created, json.dumps(active)))
            counted = [{"name": g["name"], "kind": g["kind"], "members": g["count"]} for g in groups]
            self.outbox.add("report.groups", {"as_of": day, "groups": counted},
                            event_id("report.groups", day, created, json.dumps(counted)))
        self.unsent = True
        return {"as_of": day, "members": len(rows), "counts": by_status}


__all__ = ["Reporter", "Status"]
