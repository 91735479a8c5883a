"""The agent's command journal: compaction keeps what exactly-once needs, survives kill -9 at any
moment of the rewrite, and MachineMgr on a compacted journal answers done commands with their
ack and never pulses them again."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from machine_agent.journal import INTERRUPTED, MARGIN, CommandJournal
from tests import test_machine_mgr as tm
from tests.harness import ROOT

T = 1_700_000_000  # the trusted "now" of the unit tests

# MachineMgr on the bus: the fixtures and helpers of tests/test_machine_mgr.py.
home, network, agent = tm.home, tm.network, tm.agent


def ack(cid, status="vended", slot=1, invoice="inv", pulsed_ms=100, reason=None):
    return {"id": cid.hex(), "status": status, "slot": slot, "invoice": invoice, "reason": reason,
            "pulsed_ms": pulsed_ms}


def lines_of(cid, upto="done", expires=None, slot=1, invoice="inv", ack_body=None):
    """The journal lines of one command, as MachineMgr writes them, up to a step."""
    extra = {} if expires is None else {"expires": expires}
    out = [{"id": cid.hex(), "event": "received", "t": 1, "slot": slot, "invoice": invoice, "pulse_ms": None,
            **extra}]
    if upto in ("actuating", "done"):
        out.append({"id": cid.hex(), "event": "actuating", "t": 1, "slot": slot, "invoice": invoice,
                    "pulse_ms": 100, **extra})
    if upto == "done":
        out.append({"id": cid.hex(), "event": "done", "t": 1,
                    "ack": ack_body or ack(cid, slot=slot, invoice=invoice)})
    return [json.dumps(x) for x in out]


def cids(n):
    return [os.urandom(16) for _ in range(n)]


def ids_in(path):
    """Command ids with a readable line in the file."""
    out = set()
    for line in path.read_text().splitlines():
        try:
            out.add(json.loads(line)["id"])
        except ValueError:
            pass
    return out


@pytest.fixture
def mixed(tmp_path):
    """A journal of every kind of command, with an unreadable line and a torn tail."""
    live, gone, recent, cut, judged, legacy = cids(6)
    text = {
        live: lines_of(live, expires=T + 60),                     # done, unexpired: kept
        gone: lines_of(gone, expires=T - MARGIN - 1),             # done, expired past the margin: forgotten
        recent: lines_of(recent, expires=T - MARGIN + 60),        # done, expired within the margin: kept
        cut: lines_of(cut, "actuating", expires=T - 10 * MARGIN),  # interrupted: kept, however old
        judged: lines_of(judged, "received", expires=T - 10 * MARGIN),  # received only: kept
        legacy: lines_of(legacy),                                 # no expires (an older agent): kept
    }
    path = tmp_path / "commands.jsonl"
    body = text[live] + text[gone] + ["{not json"] + text[recent] + text[cut] + text[judged] + text[legacy]
    path.write_text("\n".join(body) + "\n" + '{"id": "torn')
    return path, dict(live=live, gone=gone, recent=recent, cut=cut, judged=judged, legacy=legacy), text


# -- compaction ------------------------------------------------------------------------------

def test_compaction_at_open_keeps_all_that_exactly_once_needs(mixed):
    path, c, text = mixed
    j = CommandJournal(path, clock=lambda: T)
    assert j.status(c["gone"]) is None and j.ack(c["gone"]) is None
    assert c["gone"].hex() not in j.command and c["gone"].hex() not in j.expires
    assert {k: j.status(v) for k, v in c.items() if k != "gone"} == {
        "live": "done", "recent": "done", "cut": "actuating", "judged": "received", "legacy": "done"}
    assert j.ack(c["live"]) == {**ack(c["live"]), "id": c["live"]}
    assert j.interrupted == [c["cut"].hex()]
    # The kept lines are the old lines, verbatim and in order; the unreadable and torn ones are gone.
    kept = text[c["live"]] + text[c["recent"]] + text[c["cut"]] + text[c["judged"]] + text[c["legacy"]]
    assert path.read_text() == "\n".join(kept) + "\n"
    assert not os.path.exists(str(path) + ".compact")
    # Appends go to the new file. At the next open, the command closed now is forgotten at once
    # (done, and expired long ago), the new one is kept, and nothing else changes.
    j.done({**ack(c["judged"], status="refused", pulsed_ms=None, reason="expired"), "id": c["judged"]})
    (fresh,) = cids(1)
    j.received(fresh, 1, "inv", None, expires=T + 60)
    j.done({**ack(fresh), "id": fresh})
    j.close()
    again = CommandJournal(path, clock=lambda: T)
    assert again.status(fresh) == "done" and again.ack(fresh)["status"] == "vended"
    assert again.status(c["judged"]) is None and again.status(c["gone"]) is None
    assert again.status(c["live"]) == "done" and again.status(c["cut"]) == "actuating"
    again.close()
    inode = os.stat(path).st_ino
    CommandJournal(path, clock=lambda: T).close()
    assert os.stat(path).st_ino == inode  # nothing left to forget: not rewritten


def test_nothing_is_forgotten_while_the_clock_is_not_synchronised(mixed):
    path, c, _ = mixed
    before = path.read_bytes()
    j = CommandJournal(path, clock=lambda: None)
    assert j.status(c["gone"]) == "done" and j.compact() == 0
    j.close()
    assert path.read_bytes() == before + b"\n"  # only the torn line ended, as always


def test_a_clock_behind_keeps_more_and_time_passing_forgets(tmp_path):
    path = tmp_path / "commands.jsonl"
    now = [T]
    j = CommandJournal(path, clock=lambda: now[0], margin=100)
    a, b = cids(2)
    for cid, expires in ((a, T + 10), (b, T + 50)):
        j.received(cid, 1, "inv", None, expires=expires)
        j.done({**ack(cid), "id": cid})
    assert j.compact() == 0
    now[0] = T + 110  # exactly expires + margin: not yet
    assert j.compact() == 0
    now[0] = T + 111
    assert j.compact() == 1 and j.status(a) is None and j.status(b) == "done"
    now[0] = T  # the clock stepped back: b is unexpired again, and kept
    assert j.compact() == 0 and j.status(b) == "done"
    j.close()
    assert ids_in(path) == {b.hex()}


def test_size_threshold_compacts_while_running(tmp_path):
    path = tmp_path / "commands.jsonl"
    j = CommandJournal(path, clock=lambda: T, compact_bytes=4096)
    keep = {}
    biggest = 0
    for n in range(300):
        cid = os.urandom(16)
        live = n % 10 == 0
        expires = T + 3600 if live else T - MARGIN - 1
        j.received(cid, 1, f"inv-{n}", None, expires=expires)
        j.actuating(cid, 1, f"inv-{n}", 100, expires=expires)
        j.done({**ack(cid, invoice=f"inv-{n}"), "id": cid})
        if live:
            keep[cid] = f"inv-{n}"
        biggest = max(biggest, os.path.getsize(path))
    # 300 commands of 3 lines (~110 kB) never grew the file past twice what is kept plus the threshold
    live_bytes = sum(len(x) + 1 for cid in keep for x in lines_of(cid, expires=T + 3600, invoice=keep[cid]))
    assert biggest <= max(4096, 2 * live_bytes) + 1024, (biggest, live_bytes)
    # memory is compacted too: it holds what the file holds, no more (the file's growth between
    # compactions is bounded above; a fixed count here failed once, 54 against 53, as the
    # threshold doubles with what is kept)
    in_file = {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}
    assert set(j.state) == in_file and len(in_file) < 300
    assert all(j.status(cid) == "done" for cid in keep)
    j.close()
    again = CommandJournal(path, clock=lambda: None)  # nothing forgotten at this open
    assert {i for i, s in again.state.items()} >= {cid.hex() for cid in keep}
    assert all(again.ack(cid)["invoice"] == inv for cid, inv in keep.items())
    again.close()


def test_a_leftover_temp_file_is_removed_and_the_journal_is_intact(mixed):
    path, c, _ = mixed
    tmp = path.parent / (path.name + ".compact")
    tmp.write_text('{"id": "half a compaction')
    j = CommandJournal(path, clock=lambda: None)
    assert not tmp.exists()
    assert {k: j.status(v) for k, v in c.items()} == {"live": "done", "gone": "done", "recent": "done",
                                                     "cut": "actuating", "judged": "received", "legacy": "done"}
    j.close()


CHILD = """
import sys
from machine_agent.journal import CommandJournal
CommandJournal(sys.argv[1], clock=lambda: float(sys.argv[2]))
print("survived")
"""


@pytest.mark.parametrize("point", ["journal_compact_partial", "journal_compact_written", "journal_compact_replaced"])
def test_killed_in_the_middle_of_a_compaction(mixed, point):
    path, c, text = mixed
    before = path.read_text()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(T)], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "DCTRL_CRASH_AT": point})
    assert proc.returncode == 137, proc.stdout + proc.stderr
    tmp = path.parent / (path.name + ".compact")
    if point == "journal_compact_replaced":  # the new journal is in place
        assert c["gone"].hex() not in ids_in(path) and not tmp.exists()
    else:  # the old journal is untouched, a temp file is left behind
        assert path.read_text() == before and tmp.exists()
        if point == "journal_compact_partial":
            assert len(tmp.read_bytes()) < len(path.read_bytes()) // 2 + 1
    j = CommandJournal(path, clock=lambda: T)
    assert not tmp.exists()
    assert {k: j.status(v) for k, v in c.items()} == {"live": "done", "gone": None, "recent": "done",
                                                     "cut": "actuating", "judged": "received", "legacy": "done"}
    assert j.ack(c["live"])["status"] == "vended"
    j.close()


LOOP = """
import logging, os, sys, time
from machine_agent.journal import CommandJournal
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(message)s")
now = int(time.time())
j = CommandJournal(sys.argv[1], compact_bytes=4096)
n = 0
while True:
    n += 1
    cid = os.urandom(16)
    live = n % 5 == 0
    exp = now + 3600 if live else now - 3 * 86400
    j.received(cid, 1, "inv-%d" % n, None, expires=exp)
    if live and n % 7 == 1:
        print("keep", cid.hex(), "received", flush=True)
        continue
    j.actuating(cid, 1, "inv-%d" % n, 100, expires=exp)
    if live and n % 7 == 2:
        print("keep", cid.hex(), "actuating", flush=True)
        continue
    j.done({"id": cid, "status": "vended", "slot": 1, "invoice": "inv-%d" % n, "reason": None, "pulsed_ms": 100})
    print("keep" if live else "drop", cid.hex(), "done", flush=True)
"""


def test_kill_9_at_any_moment_loses_nothing(tmp_path):
    """A writer compacting every few kB, killed by SIGKILL as its k-th rewrite begins (so
    somewhere in that rewrite or the appends after it), eight times over the same journal: every
    command it reported durable is still there, in the state reported. (The fixed points of the
    rewrite are the test above; this one is the moments in between.)"""
    path = tmp_path / "commands.jsonl"
    rng = random.Random(os.urandom(8))
    reported = {}
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", LOOP, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        watchdog = threading.Timer(60, proc.kill)  # a hung writer fails the test, never hangs it
        watchdog.start()
        try:
            target, compactions = rng.randint(1, 4), 0
            for line in proc.stdout:
                if line.startswith("journal compaction:"):  # logged as the rewrite starts
                    compactions += 1
                    if compactions == target:
                        proc.send_signal(signal.SIGKILL)
                        break
                elif line.startswith(("keep", "drop")):
                    kind, cid, state = line.split()
                    reported[cid] = (kind, state)
            rest, _ = proc.communicate(timeout=30)  # lines printed before the kill landed
        finally:
            watchdog.cancel()
        assert proc.returncode == -signal.SIGKILL, rest
        assert compactions == target
        for line in rest.splitlines():
            if line.startswith(("keep", "drop")):
                kind, cid, state = line.split()
                reported[cid] = (kind, state)
        # The file as the kill left it: whole lines (a torn tail at most), every kept command there.
        on_disk = ids_in(path)
        missing = [cid for cid, (kind, _) in reported.items() if kind == "keep" and cid not in on_disk]
        assert not missing, f"{len(missing)} kept command(s) lost"
    j = CommandJournal(path)
    assert not os.path.exists(str(path) + ".compact")
    for cid, (kind, state) in reported.items():
        if kind == "keep":
            assert j.state.get(cid) == state, cid
        else:
            assert j.state.get(cid) is None  # expired long ago: forgotten at this open
    assert sum(1 for kind, _ in reported.values() if kind == "keep") >= 4
    j.close()


# -- MachineMgr on a compacted journal --------------------------------------------------------

def test_compacted_journal_still_answers_done_commands_and_never_pulses_again(home, agent, clients, tmp_path):
    now = int(time.time())
    live, gone, legacy, cut = cids(4)
    lines = (lines_of(live, expires=now + 3600, slot=1, invoice="inv-live",
                      ack_body=ack(live, slot=1, invoice="inv-live", pulsed_ms=120))
             + lines_of(gone, expires=now - MARGIN - 60, slot=1, invoice="inv-gone")
             + lines_of(legacy, slot=2, invoice="inv-legacy", ack_body=ack(legacy, slot=2, invoice="inv-legacy",
                                                                           pulsed_ms=80))
             + lines_of(cut, "actuating", expires=now - MARGIN - 60, slot=3, invoice="inv-cut"))
    journal = tmp_path / "commands.jsonl"
    journal.write_text("\n".join(lines) + "\n")
    a = agent()  # MachineMgr opens (and compacts) the journal
    assert gone.hex() not in ids_in(journal) and {live.hex(), legacy.hex(), cut.hex()} <= ids_in(journal)
    bm = tm.business_mgr(clients, home)
    tm.ready(bm)
    retries = {live: tm.vend(1, "inv-live", cid=live), legacy: tm.vend(2, "inv-legacy", cid=legacy),
               gone: {**tm.vend(1, "inv-gone", cid=gone), "expires": now - MARGIN - 60}}  # as first sent
    for body in retries.values():
        bm.publish(tm.CMD, body)
    assert bm.expect(tm.ack_for(live)).message.body == {**ack(live, slot=1, invoice="inv-live", pulsed_ms=120),
                                                        "id": live}
    assert bm.expect(tm.ack_for(legacy)).message.body["status"] == "vended"
    forgotten = bm.expect(tm.ack_for(gone)).message.body
    assert (forgotten["status"], forgotten["reason"]) == ("refused", "expired")
    # The interrupted command was closed as failed by MachineMgr at start, not pulsed.
    bm.publish(tm.CMD, tm.vend(3, "inv-cut", cid=cut))
    assert bm.expect(tm.ack_for(cut)).message.body["reason"] == INTERRUPTED
    # A new command after the rewrite is journaled in the new file, and pulses once.
    new = tm.vend(3, "inv-new")
    bm.publish(tm.CMD, new)
    assert bm.expect(tm.ack_for(new["id"])).message.body["status"] == "vended"
    assert a.pulses(1) == [] and a.pulses(2, active_high=False) == [] and len(a.pulses(3)) == 1
    a.stop()
    j = CommandJournal(journal)
    assert j.status(new["id"]) == "done" and j.status(live) == "done" and j.status(legacy) == "done"
    assert j.status(cut) is None  # closed as failed by the first run, expired long ago: forgotten now
    j.close()
