"""Tests for actors.eventlog: format, recovery, flush policy, readers, crashes."""

from __future__ import annotations

import gc
import logging
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]

from actors import eventlog
from actors.eventlog import (
    MAGIC,
    CorruptLog,
    EventLog,
    LogLocked,
    follow,
    read_records,
    segment_name,
)

# -- helpers --------------------------------------------------------------


def body_for(seq: int) -> bytes:
    """A deterministic, seq-specific, variable-length body (never empty)."""
    return b"%d:" % seq + bytes((seq * 7 + i) % 256 for i in range(seq % 41))


def expected(seqs) -> list[tuple[int, bytes]]:
    return [(s, body_for(s)) for s in seqs]


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def parse_segment(data: bytes) -> list[tuple[int, bytes]]:
    """Independent parser: (offset, body) of each record of a well-formed segment."""
    assert data[:8] == MAGIC
    out = []
    offset = 8
    while offset < len(data):
        length, crc = struct.unpack_from("<II", data, offset)
        body = data[offset + 8 : offset + 8 + length]
        assert len(body) == length and zlib.crc32(body) == crc
        out.append((offset, body))
        offset += 8 + length
    assert offset == len(data)
    return out


def write_log(d: Path, seqs, **kwargs) -> None:
    with EventLog(d, **kwargs) as log:
        for s in seqs:
            assert log.append(body_for(s)) == s


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fsyncs(monkeypatch):
    """Count os.fsync calls (still performing them)."""
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(eventlog.os, "fsync", counting)
    return calls


# -- round trip and format ----------------------------------------------------


def test_round_trip_across_segments_and_reopen(tmp_path):
    d = tmp_path / "nested" / "log"
    write_log(d, range(30), segment_bytes=200)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    segs = segments(d)
    assert len(segs) >= 4

    # Each file is named after its first record's seq, starts with the magic,
    # and segments only exceed segment_bytes when holding a single record.
    seq = 0
    for path in segs:
        assert path.name == segment_name(seq) == "%020d.seg" % seq
        data = path.read_bytes()
        records = parse_segment(data)
        assert records, path
        assert len(data) <= 200 or len(records) == 1
        for _offset, body in records:
            assert body == body_for(seq)
            seq += 1
    assert seq == 30

    with EventLog(d, segment_bytes=200) as log:
        assert log.next_seq == 30
        assert log.recovered_bytes == 0
        for s in range(30, 40):
            assert log.append(body_for(s)) == s
        assert log.next_seq == 40
    assert list(read_records(d)) == expected(range(40))


def test_roll_happens_exactly_when_segment_would_exceed_limit(tmp_path):
    d = tmp_path / "log"
    limit = 8 + 3 * (8 + 12)  # header + three 12-byte records, exactly
    with EventLog(d, segment_bytes=limit) as log:
        for _ in range(7):
            log.append(b"x" * 12)
        log.append(b"y" * 500)  # bigger than a segment: gets one of its own
        log.append(b"z" * 12)
    sizes = [p.stat().st_size for p in segments(d)]
    names = [p.name for p in segments(d)]
    assert names == [segment_name(n) for n in (0, 3, 6, 7, 8)]
    assert sizes == [limit, limit, 8 + 20, 8 + 508, 8 + 20]


def test_new_log_has_header_only_segment(tmp_path):
    d = tmp_path / "log"
    with EventLog(d) as log:
        assert log.next_seq == 0
        assert log.recovered_bytes == 0
    assert [p.name for p in segments(d)] == [segment_name(0)]
    assert segments(d)[0].read_bytes() == MAGIC
    assert list(read_records(d)) == []


def test_accepts_bytes_like_and_rejects_others(tmp_path):
    with EventLog(tmp_path / "log") as log:
        assert log.append(bytearray(b"ab")) == 0
        assert log.append(memoryview(b"cd")) == 1
        with pytest.raises(TypeError):
            log.append("text")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            log.append(b"")
        assert log.next_seq == 2
    assert list(read_records(tmp_path / "log")) == [(0, b"ab"), (1, b"cd")]


def test_max_record_exceeded_raises_and_log_stays_usable(tmp_path):
    d = tmp_path / "log"
    with EventLog(d, max_record=100) as log:
        assert log.append(b"a" * 100) == 0
        with pytest.raises(ValueError, match="max_record"):
            log.append(b"b" * 101)
        assert log.next_seq == 1
        assert log.append(b"c") == 1
    assert list(read_records(d, max_record=100)) == [(0, b"a" * 100), (1, b"c")]
    with pytest.raises(ValueError):
        EventLog(tmp_path / "other", max_record=2**32)


def test_close_is_idempotent_and_closed_log_refuses_work(tmp_path):
    log = EventLog(tmp_path / "log")
    log.append(b"one")
    log.close()
    log.close()
    assert log.closed
    with pytest.raises(ValueError):
        log.append(b"two")
    with pytest.raises(ValueError):
        log.flush()
    assert log.due_in() is None
    assert list(read_records(tmp_path / "log")) == [(0, b"one")]


def test_second_writer_is_refused(tmp_path):
    d = tmp_path / "log"
    with EventLog(d):
        with pytest.raises(LogLocked):
            EventLog(d)
    with EventLog(d) as log:  # lock released by close()
        assert log.next_seq == 0


def test_io_error_makes_log_unusable_until_reopened(tmp_path, monkeypatch, caplog):
    d = tmp_path / "log"
    log = EventLog(d)
    log.append(b"one")
    log.append(b"two")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(eventlog.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        log.flush(force=True)
    with pytest.raises(OSError, match="unusable"):
        log.append(b"three")
    with pytest.raises(OSError, match="unusable"):
        log.flush()
    with caplog.at_level(logging.WARNING, logger="actors.eventlog"):
        log.close()  # does not try to sync again, releases the lock
    assert log.closed
    assert "may be lost" in caplog.text
    monkeypatch.undo()
    with EventLog(d) as log:
        assert log.next_seq == 2  # written before the failed fsync
    assert list(read_records(d)) == [(0, b"one"), (1, b"two")]


def test_unclosed_log_warns_and_releases_lock(tmp_path):
    d = tmp_path / "log"
    log = EventLog(d)
    log.append(b"buffered")
    with pytest.warns(ResourceWarning):
        del log
        gc.collect()
    with EventLog(d) as log:
        assert log.next_seq == 1


# -- recovery ---------------------------------------------------------------


SEG = 60  # segment_bytes for the recovery tests: a few small records each


def _two_segment_log(tmp_path: Path, n: int = 9) -> tuple[Path, Path, bytes, int]:
    """A log with several segments; returns (dir, last segment, its bytes, last record offset)."""
    d = tmp_path / "pristine"
    write_log(d, range(n), segment_bytes=SEG)
    last = segments(d)[-1]
    data = last.read_bytes()
    records = parse_segment(data)
    assert len(segments(d)) >= 2 and len(records) >= 2
    return d, last, data, records[-1][0]


def _fresh_copy(pristine: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(pristine, target)
    return target


def test_torn_tail_at_every_offset_inside_last_record(tmp_path, caplog):
    n = 9
    pristine, last, data, start = _two_segment_log(tmp_path, n)
    assert len(data) - start > 10
    for cut in range(start + 1, len(data)):
        d = _fresh_copy(pristine, tmp_path, "work")
        (d / last.name).write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="actors.eventlog"):
            log = EventLog(d, segment_bytes=SEG)
        with log:
            assert log.recovered_bytes == cut - start, cut
            assert log.next_seq == n - 1
            assert (d / last.name).stat().st_size == start
            assert log.append(b"after recovery") == n - 1
        warning = caplog.records[-1].getMessage()
        assert last.name in warning
        assert "offset %d" % start in warning
        assert "dropping %d bytes" % (cut - start) in warning
        assert list(read_records(d)) == expected(range(n - 1)) + [(n - 1, b"after recovery")]


@pytest.mark.parametrize("keep", range(8))
def test_last_segment_shorter_than_header_is_rewritten(tmp_path, keep):
    pristine, last, data, _ = _two_segment_log(tmp_path)
    base = int(last.name[:-4])
    d = _fresh_copy(pristine, tmp_path, "work")
    (d / last.name).write_bytes(data[:keep])
    with EventLog(d, segment_bytes=SEG) as log:
        assert log.recovered_bytes == keep
        assert log.next_seq == base
        assert (d / last.name).read_bytes() == MAGIC
        log.append(b"next")
    assert list(read_records(d)) == expected(range(base)) + [(base, b"next")]


def test_last_segment_with_wrong_magic_is_rewritten(tmp_path):
    pristine, last, data, _ = _two_segment_log(tmp_path)
    base = int(last.name[:-4])
    d = _fresh_copy(pristine, tmp_path, "work")
    (d / last.name).write_bytes(b"DCTRLEV2" + data[8:])
    with EventLog(d, segment_bytes=SEG) as log:
        assert log.recovered_bytes == len(data)
        assert log.next_seq == base
    assert (d / last.name).read_bytes() == MAGIC
    assert list(read_records(d)) == expected(range(base))


def test_flipped_byte_anywhere_in_last_record_drops_it(tmp_path):
    n = 9
    pristine, last, data, start = _two_segment_log(tmp_path, n)
    for pos in range(start, len(data)):
        d = _fresh_copy(pristine, tmp_path, "work")
        corrupted = bytearray(data)
        corrupted[pos] ^= 0x40
        (d / last.name).write_bytes(bytes(corrupted))
        with EventLog(d, segment_bytes=SEG) as log:
            assert log.recovered_bytes == len(data) - start, pos
            assert log.next_seq == n - 1
        assert list(read_records(d)) == expected(range(n - 1))


@pytest.mark.parametrize(
    "garbage",
    [
        b"garbage!" * 5,
        b"\x00" * 4096,  # zero-filled tail: must not parse as empty records
        b"\xff\x01\x02",  # incomplete record header
        struct.pack("<II", 50, 0) + b"short",  # runs past end of file
        struct.pack("<II", 2**20 + 1, 0) + b"x" * 64,  # length above max_record
        struct.pack("<II", 3, zlib.crc32(b"abc") ^ 1) + b"abc",  # CRC mismatch
    ],
    ids=["text", "zeros", "short-header", "past-eof", "too-long", "bad-crc"],
)
def test_garbage_after_valid_records_is_dropped(tmp_path, garbage):
    d = tmp_path / "log"
    write_log(d, range(5))
    seg = segments(d)[-1]
    with open(seg, "ab") as f:
        f.write(garbage)
    with EventLog(d) as log:
        assert log.recovered_bytes == len(garbage)
        assert log.next_seq == 5
        log.append(body_for(5))
    assert list(read_records(d)) == expected(range(6))


def test_earlier_segments_are_trusted_at_open_but_checked_by_readers(tmp_path):
    d = tmp_path / "log"
    write_log(d, range(12), segment_bytes=120)
    first, second = segments(d)[:2]
    second_base = int(second.name[:-4])
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # last byte of the first segment's last record body
    first.write_bytes(bytes(data))

    with EventLog(d, segment_bytes=120) as log:
        assert log.recovered_bytes == 0
        assert log.next_seq == 12

    with pytest.raises(CorruptLog) as excinfo:
        list(read_records(d))
    assert first.name in str(excinfo.value) and "offset" in str(excinfo.value)
    # Starting in a later segment skips the damaged one entirely.
    assert list(read_records(d, start_seq=second_base)) == expected(range(second_base, 12))
    it = follow(d, start_seq=0, poll=0, stop=lambda: True)
    with pytest.raises(CorruptLog):
        list(it)


def test_truncated_earlier_segment_is_reported(tmp_path):
    d = tmp_path / "log"
    write_log(d, range(12), segment_bytes=120)
    first = segments(d)[0]
    records = parse_segment(first.read_bytes())
    with open(first, "r+b") as f:
        f.truncate(records[-1][0])  # drop a whole record: count mismatch
    with pytest.raises(CorruptLog, match="next segment starts"):
        list(read_records(d))


# -- flush policy -------------------------------------------------------------


def test_flush_fsyncs_after_fsync_every_records(tmp_path, fsyncs):
    d = tmp_path / "log"
    clock = FakeClock()
    with EventLog(d, fsync_every=3, fsync_interval=1000, clock=clock) as log:
        fsyncs.clear()
        assert log.due_in() is None
        log.append(b"a")
        log.append(b"b")
        assert log.due_in() == pytest.approx(1000)
        assert log.flush() is False
        assert fsyncs == []
        # flush() wrote the data even without fsync: a reader sees it.
        assert list(read_records(d)) == [(0, b"a"), (1, b"b")]
        log.append(b"c")
        assert fsyncs == []  # append never fsyncs
        assert log.due_in() == 0.0
        assert log.flush() is True
        assert len(fsyncs) == 1
        assert log.due_in() is None
        assert log.flush() is False
        assert log.flush(force=True) is False  # nothing pending
        assert len(fsyncs) == 1


def test_flush_fsyncs_after_interval_since_first_unsynced_append(tmp_path, fsyncs):
    clock = FakeClock(10.0)
    with EventLog(tmp_path / "log", fsync_every=1000, fsync_interval=0.05, clock=clock) as log:
        fsyncs.clear()
        log.append(b"a")
        assert log.due_in() == pytest.approx(0.05)
        clock.now = 10.03
        log.append(b"b")  # does not restart the timer
        assert log.due_in() == pytest.approx(0.02)
        assert log.flush() is False
        clock.now = 10.0499
        assert log.flush() is False
        assert fsyncs == []
        clock.now = 10.05
        assert log.due_in() == 0.0
        assert log.flush() is True
        assert len(fsyncs) == 1
        assert log.due_in() is None

        clock.now = 20.0  # a long idle time does not count: timer starts at the append
        log.append(b"c")
        assert log.due_in() == pytest.approx(0.05)
        assert log.flush() is False
        clock.now = 25.0
        assert log.due_in() == 0.0
        assert log.flush() is True


def test_force_and_close_fsync_pending_records(tmp_path, fsyncs):
    clock = FakeClock()
    log = EventLog(tmp_path / "log", fsync_every=1000, fsync_interval=1000, clock=clock)
    fsyncs.clear()
    log.append(b"a")
    assert log.flush(force=True) is True
    assert len(fsyncs) == 1
    log.append(b"b")
    log.close()
    assert len(fsyncs) == 2
    assert list(read_records(tmp_path / "log")) == [(0, b"a"), (1, b"b")]


def test_roll_syncs_old_segment_and_resets_pending(tmp_path, fsyncs):
    clock = FakeClock()
    with EventLog(
        tmp_path / "log",
        segment_bytes=8 + 2 * 9,
        fsync_every=1000,
        fsync_interval=1000,
        clock=clock,
    ) as log:
        fsyncs.clear()
        log.append(b"a")
        log.append(b"b")
        assert fsyncs == []
        log.append(b"c")  # rolls: old segment, new segment and directory fsynced
        assert len(fsyncs) == 3
        assert log.due_in() == pytest.approx(1000)  # only "c" pending, since now
        assert len(segments(tmp_path / "log")) == 2


# -- readers ----------------------------------------------------------------------


def test_read_records_from_every_start_seq(tmp_path):
    d = tmp_path / "log"
    n = 25
    write_log(d, range(n), segment_bytes=160)
    bases = [int(p.name[:-4]) for p in segments(d)]
    assert len(bases) >= 3
    for start in range(n + 3):  # includes every segment boundary and mid-segment point
        assert list(read_records(d, start_seq=start)) == expected(range(start, n)), start
    for base in bases:
        assert next(iter(read_records(d, start_seq=base)))[0] == base


def test_read_records_stops_quietly_at_unfinished_tail(tmp_path):
    d = tmp_path / "log"
    write_log(d, range(4))
    seg = segments(d)[-1]
    body = b"being written"
    with open(seg, "ab") as f:
        f.write(struct.pack("<II", len(body), zlib.crc32(body)) + body[:5])
    assert list(read_records(d)) == expected(range(4))
    # A new last segment still being created (header not yet complete).
    (d / segment_name(4)).write_bytes(MAGIC[:3])
    with pytest.raises(CorruptLog):  # now the torn tail is in a non-last segment
        list(read_records(d))
    with open(seg, "r+b") as f:
        f.truncate(len(seg.read_bytes()) - 8 - 5)
    assert list(read_records(d)) == expected(range(4))


def test_read_records_missing_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert list(read_records(tmp_path / "empty")) == []


def test_follow_with_writer_thread_yields_each_record_once_in_order(tmp_path):
    d = tmp_path / "log"
    n = 400
    log = EventLog(d, segment_bytes=600, fsync_every=8, fsync_interval=0.01)
    for s in range(20):
        log.append(body_for(s))
    log.flush()

    got: list[tuple[int, bytes]] = []
    cond = threading.Condition()
    errors: list[BaseException] = []
    deadline = time.monotonic() + 10

    def writer() -> None:
        try:
            for s in range(20, n):
                assert log.append(body_for(s)) == s
                if s % 7 == 0:
                    log.flush()
                if s % 50 == 0:
                    # Let the follower catch up (so it must poll for the next
                    # records) before continuing.
                    log.flush()
                    with cond:
                        ok = cond.wait_for(lambda: len(got) >= s + 1, timeout=10)
                    assert ok, "follower did not catch up"
            log.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def stop() -> bool:
        return len(got) >= n or time.monotonic() > deadline

    thread = threading.Thread(target=writer, daemon=True)
    try:
        for record in follow(d, start_seq=0, poll=0.002, stop=stop):
            with cond:
                got.append(record)
                cond.notify_all()
            if len(got) == 1:
                thread.start()  # the writer races with a running follower
    finally:
        if thread.ident is not None:
            thread.join(timeout=15)
        if not thread.is_alive():
            log.close()
    assert not errors, errors
    assert len(segments(d)) >= 5
    assert [s for s, _ in got] == list(range(n))
    assert got == expected(range(n))


def test_follow_from_now_skips_existing_records(tmp_path):
    d = tmp_path / "log"
    with EventLog(d, segment_bytes=200) as log:
        for s in range(10):
            log.append(body_for(s))
        log.flush()
        it = follow(d, poll=0, stop=lambda: True)  # "now" is this call
        for s in range(10, 30):
            log.append(body_for(s))
        log.flush()
        assert list(it) == expected(range(10, 30))
    assert list(follow(d, poll=0, stop=lambda: True)) == []


def test_follow_through_missing_dir_torn_tail_restart_and_rolls(tmp_path):
    """Drive the writer from stop(), which follow calls each time it has caught up."""
    d = tmp_path / "log"
    n_before_crash = 6
    got: list[tuple[int, bytes]] = []
    calls = []

    def step1() -> None:  # the log appears
        with EventLog(d, segment_bytes=SEG) as log:
            for s in range(n_before_crash):
                log.append(body_for(s))

    def step2() -> None:  # a half-written record (the writer crashed mid-write)
        body = body_for(n_before_crash)
        with open(segments(d)[-1], "ab") as f:
            f.write(struct.pack("<II", len(body), zlib.crc32(body)) + body[:3])

    def step3() -> None:  # the writer restarts, recovers the tail and goes on
        with EventLog(d, segment_bytes=SEG) as log:
            assert log.recovered_bytes == 8 + 3
            for s in range(n_before_crash, 30):
                log.append(body_for(s))

    script = [lambda: None, step1, step2, step3]

    def stop() -> bool:
        calls.append(len(got))
        if len(calls) > len(script):
            return True
        script[len(calls) - 1]()
        return False

    for record in follow(d, start_seq=0, poll=0, stop=stop):
        got.append(record)
    assert calls == [0, 0, n_before_crash, n_before_crash, 30]
    assert got == expected(range(30))
    assert len(segments(d)) >= 3


def test_follow_start_seq_beyond_end_waits_for_it(tmp_path):
    d = tmp_path / "log"
    write_log(d, range(5), segment_bytes=100)
    got = []
    calls = []

    def stop() -> bool:
        calls.append(1)
        if len(calls) == 1:
            with EventLog(d, segment_bytes=100) as log:
                for s in range(5, 20):
                    log.append(body_for(s))
            return False
        return True

    for record in follow(d, start_seq=12, poll=0, stop=stop):
        got.append(record)
    assert got == expected(range(12, 20))


# -- crash with a real process ----------------------------------------------

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from actors.eventlog import EventLog

def body_for(seq):
    return b"%d:" % seq + bytes((seq * 7 + i) % 256 for i in range(seq % 41))

log = EventLog(sys.argv[2], segment_bytes=256, fsync_every=int(sys.argv[3]),
               fsync_interval=3600)
print("open", log.next_seq, log.recovered_bytes, flush=True)
for _ in range(1_000_000):
    seq = log.append(body_for(log.next_seq))
    if log.flush():
        print(seq, flush=True)
"""


def test_sigkilled_writer_loses_nothing_it_reported_fsynced(tmp_path):
    d = tmp_path / "log"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    reported_max = -1
    on_disk = 0  # complete records readable after the previous kill
    for round_ in range(3):
        # At least 10 fsynced records a round: 30+ records of 10+ bytes always fill several
        # 256-byte segments, so the kill lands across segment rolls (not by chance).
        target = rng.randint(10, 40)
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(ROOT), str(d), str(rng.randint(1, 9))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        watchdog = threading.Timer(30, proc.kill)
        watchdog.start()
        try:
            header = proc.stdout.readline().split()
            assert header[:1] == [b"open"], (header, proc.stderr.read())
            # Recovery kept every complete record (so all reported fsynced).
            assert int(header[1]) == on_disk, (seed, round_, header)
            assert on_disk > reported_max
            reported = []
            while len(reported) < target:
                line = proc.stdout.readline()
                assert line.endswith(b"\n"), (seed, proc.stderr.read())
                reported.append(int(line))
            os.kill(proc.pid, signal.SIGKILL)
            rest, _err = proc.communicate(timeout=30)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, (seed, proc.returncode)
        # Only complete lines count; a line cut by the kill is ignored.
        reported += [int(x) for x in rest.split(b"\n")[:-1]]
        assert reported == sorted(reported)
        reported_max = max(reported_max, reported[-1])

        records = list(read_records(d))
        assert [s for s, _ in records] == list(range(len(records))), seed
        assert records == expected(range(len(records))), seed
        assert len(records) > reported_max, (seed, len(records), reported_max)
        on_disk = len(records)

    with EventLog(d, segment_bytes=256) as log:
        n = log.next_seq
        assert n > reported_max
        assert log.append(body_for(n)) == n
    assert list(read_records(d)) == expected(range(n + 1))
    assert len(segments(d)) >= 2


# -- property tests -------------------------------------------------------------

bodies = st.lists(st.binary(min_size=1, max_size=300), max_size=30)
# tmp_path only serves as a parent for a fresh per-example TemporaryDirectory.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(items=bodies, segment_bytes=st.integers(min_value=1, max_value=1000), data=st.data())
def test_property_round_trip(tmp_path, items, segment_bytes, data):
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        d = Path(tmp) / "log"
        with EventLog(d, segment_bytes=segment_bytes, max_record=300) as log:
            assert [log.append(b) for b in items] == list(range(len(items)))
        assert list(read_records(d, max_record=300)) == list(enumerate(items))
        start = data.draw(st.integers(min_value=0, max_value=len(items) + 1))
        assert list(read_records(d, start_seq=start, max_record=300)) == list(
            enumerate(items)
        )[start:]
        with EventLog(d, segment_bytes=segment_bytes, max_record=300) as log:
            assert log.next_seq == len(items)
            assert log.recovered_bytes == 0


@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    items=st.lists(st.binary(min_size=1, max_size=50), max_size=6),
    tail=st.binary(max_size=120),
    replace_whole_file=st.booleans(),
)
def test_property_arbitrary_tail_never_breaks_open(tmp_path, items, tail, replace_whole_file):
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        d = Path(tmp) / "log"
        with EventLog(d, max_record=64) as log:
            for b in items:
                log.append(b)
        seg = segments(d)[-1]
        if replace_whole_file:
            seg.write_bytes(tail)
        else:
            with open(seg, "ab") as f:
                f.write(tail)

        with EventLog(d, max_record=64) as log:  # must not raise
            n = log.next_seq
            if not replace_whole_file:
                assert n >= len(items)
                assert log.recovered_bytes <= len(tail)
            assert log.append(b"sentinel") == n
        records = list(read_records(d, max_record=64))
        assert [s for s, _ in records] == list(range(n + 1))
        assert records[-1] == (n, b"sentinel")
        if not replace_whole_file:
            assert [b for _, b in records[: len(items)]] == items
        with EventLog(d, max_record=64) as log:  # and the result is clean
            assert log.recovered_bytes == 0
            assert log.next_seq == n + 1


# -- retention (issue 10): prune, and readers across a prune ---------------------------------------


def _old(paths, days):
    t = time.time() - days * 86400
    for p in paths:
        os.utime(p, (t, t))


def test_prune_by_age_and_size_deletes_a_prefix_never_the_last_segment(tmp_path):
    d = tmp_path / "log"
    write_log(d, range(40), segment_bytes=200)
    segs = segments(d)
    assert len(segs) >= 6
    _old(segs[:3], 40)  # the three oldest last written 40 days ago
    _old(segs[4:5], 40)  # an old one after a recent one: not a prefix, stays
    removed = eventlog.prune(d, older_than=time.time() - 30 * 86400)
    assert [name for name, _ in removed] == [p.name for p in segs[:3]]
    left = segments(d)
    assert left == segs[3:]
    records = list(read_records(d))
    assert records == expected(range(int(left[0].stem), 40))  # contiguous from the first kept

    size = sum(p.stat().st_size for p in left)
    last = left[-1].stat().st_size
    removed = eventlog.prune(d, max_bytes=size - 1)
    assert [name for name, _ in removed] == [left[0].name]
    removed = eventlog.prune(d, max_bytes=0, older_than=time.time() + 10)
    assert segments(d) == left[-1:] and left[-1].stat().st_size == last  # the writer's stays
    assert eventlog.prune(tmp_path / "missing", max_bytes=0) == []
    with EventLog(d, segment_bytes=200) as log:  # the writer carries on after a prune
        assert log.append(body_for(40)) == 40
    assert list(read_records(d))[-1] == (40, body_for(40))


def test_readers_skip_segments_pruned_while_they_read(tmp_path):
    d = tmp_path / "log"
    write_log(d, range(30), segment_bytes=200)
    segs = segments(d)
    it = read_records(d)
    assert next(it) == (0, body_for(0))
    # the reader is in the first segment; the second and third go meanwhile
    for p in segs[1:3]:
        p.unlink()
    rest = [s for s, _ in it]
    first_after = int(segs[3].stem)
    assert rest[: first_after - 0][:1] == [1] and rest[-1] == 29
    assert [s for s in rest if s >= first_after] == list(range(first_after, 30))
    assert not [s for s in rest if int(segs[1].stem) <= s < first_after]

    # follow: positioned in a segment that is pruned, it goes on with the first one left
    stop = threading.Event()
    got = []
    f = follow(d, start_seq=0, poll=0.01, stop=stop.is_set)
    got.append(next(f))
    for p in segments(d)[:-2]:
        p.unlink()
    stop.set()
    got += list(f)
    tail_start = int(segments(d)[0].stem)
    assert got[0] == (0, body_for(0)) and got[-1] == (29, body_for(29))
    assert [s for s, _ in got if s >= tail_start] == list(range(tail_start, 30))


# -- refused records sampled (issue 10, hole 4) ----------------------------------------------------


def test_reject_sampler_stores_the_first_per_sender_and_counts_the_rest():
    from actors.event_logger.actor import RejectSampler

    clock = FakeClock(1000.0)
    s = RejectSampler(per_sender=3, total=5, period=60, clock=clock)
    stored = [s.admit("vm1", "bad_encoding", b"machine.vm1.x.") for _ in range(10)]
    assert stored == [True] * 3 + [False] * 7
    assert [s.admit("vm2", "bad_signature", b"machine.vm2.") for _ in range(3)] == [True, True, False]  # total 5
    assert not s.due()
    clock.now += 60
    assert s.due()
    summaries = {x["sender"]: x for x in s.roll()}
    assert summaries["vm1"] == {"sender": "vm1", "suppressed": 7, "codes": {"bad_encoding": 7},
                                "topics": {"machine.vm1.x": 7}, "from": 1_000_000, "to": 1_060_000}
    assert summaries["vm2"]["suppressed"] == 1
    assert s.suppressed_total == 8
    # a new period: each sender gets its sample again
    assert s.admit("vm1", "bad_encoding", b"machine.vm1.x.") and s.roll() == []


def test_reject_sampler_bounds_senders_and_topics_tracked():
    from actors.event_logger import actor as event_logger

    s = event_logger.RejectSampler(per_sender=0, total=0, period=60, clock=FakeClock())
    for i in range(event_logger.MAX_TRACKED_SENDERS + 50):
        s.admit(f"s{i}", "bad_encoding", b"debug.t%d." % i)
    summaries = s.roll()
    assert len(summaries) == event_logger.MAX_TRACKED_SENDERS + 1  # the rest under "*"
    star = next(x for x in summaries if x["sender"] == "*")
    assert star["suppressed"] == 50 and len(star["topics"]) <= event_logger.MAX_SUMMARY_TOPICS + 1


def test_storage_quota_per_sender_per_period(caplog):
    from actors.event_logger.actor import StorageQuota

    clock = FakeClock(1000.0)
    q = StorageQuota(max_bytes=1000, period=3600, clock=clock)
    with caplog.at_level(logging.WARNING, logger="actors.event_logger.actor"):
        assert [q.take("admin", 300) for _ in range(5)] == [True, True, True, False, False]
        assert q.take("vm1", 900) and not q.take("vm1", 101)  # each sender its own
        assert q.take("admin", 100)  # a smaller one still fits
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and warned[0].startswith("admin is past its storage quota")  # once a period
    clock.now += 3600
    assert q.take("admin", 1000) and not q.take("admin", 1)  # a new period
    assert StorageQuota(max_bytes=0, period=3600, clock=clock).take("admin", 10**9)  # 0: no quota


# -- the event logger's records, CLI and socket (issue 10) ------------------------------------------

from tests.harness import BusClient, Network, dctrl, new_home, wait_for  # noqa: E402


def _query(home, *args):
    import json

    return [json.loads(ln) for ln in dctrl(home, "events", "query", "--json", *args).stdout.splitlines()]


def test_query_json_gives_the_senders_seq_and_the_logs_own_number_and_token_requests_untokened(tmp_path):
    home = new_home(tmp_path / "home")
    net = Network(home).start_healthy("broker", "vault", "event_logger")
    try:
        tx = BusClient(home, "admin")
        try:
            for n in range(5):
                tx.publish("debug.seqcheck", {"n": n})
            wait_for(lambda: len(_query(home, "--topic", "debug.seqcheck")) == 5, what="5 events logged")
            recs = _query(home, "--topic", "debug.seqcheck")
            last_sent = tx.runtime.proxy.seq
        finally:
            tx.close()
        seqs = [r["seq"] for r in recs]
        assert seqs == list(range(seqs[0], seqs[0] + 5)) and seqs[-1] <= last_sent  # the sender's numbers
        everything = _query(home)
        assert [r["log_seq"] for r in everything] == list(range(len(everything)))  # the log's numbers
        assert {r["log_seq"] for r in recs} <= {r["log_seq"] for r in everything}
        # token requests are untokened by design: never "rejected bad_token"
        reqs = _query(home, "--topic", "vault.req")
        assert reqs and all(r["verdict"] == "untokened" and r["code"] is None for r in reqs), reqs[:2]
        # admin's, sent once the logger was up (the logger's own first request can go out before
        # its subscription is live: a slow joiner, seen in CI on a loaded machine)
        assert "admin" in {r["sender"] for r in reqs}
        human = dctrl(home, "events", "query", "--topic", "debug.seqcheck").stdout.splitlines()
        assert human[0].split()[2] == f"#{recs[0]['log_seq']}"
    finally:
        net.close()


def test_one_senders_storage_quota_leaves_the_others_history_whole(tmp_path):
    """Issue 10: an identity past its storage quota (an admin, unbounded by the broker's rate
    limit if a space lifts it) has the rest of its messages counted, not stored; another
    sender's are all stored, and no sequence gap is reported for either."""
    home = new_home(tmp_path / "home")
    with open(home.root / "config.toml", "a") as f:
        f.write("\n[event_logger]\nquota_mb = 0.05\nrejected_period_s = 1\n")  # 51 KiB; summaries every second
    net = Network(home).start_healthy("broker", "vault", "event_logger")
    sent = 60
    try:
        flood, other = BusClient(home, "admin"), BusClient(home, "price_notifier")
        try:
            for n in range(sent):
                flood.publish("debug.quota", {"n": n, "pad": "x" * 4000})  # 60 of these: 240 KB; 60 prices: 20 KB
                other.publish("price.btc_cad", {"cad_per_btc": f"{100000 + n}.00", "sources": [], "used": 3,
                                                "as_of": int(time.time() * 1000)})
        finally:
            flood.close()
            other.close()

        def over_quota():
            return sum(r["body"]["topics"].get("debug.quota", 0) for r in _query(home, "--topic", "events.suppressed")
                       if r["body"]["sender"] == "admin" and "over_quota" in r["body"]["codes"])

        def accounted():
            return len(_query(home, "--topic", "debug.quota")) + over_quota() == sent

        wait_for(accounted, what="every flooded message stored or counted over quota")
        stored = len(_query(home, "--topic", "debug.quota"))
        assert 0 < stored < sent // 2 and over_quota() == sent - stored  # the quota bit, and counted exactly
        assert len(_query(home, "--topic", "price.btc_cad")) == sent  # the other sender: all of it
        assert _query(home, "--topic", "events.gap") == []
        wait_for(lambda: any(f"{sent - stored} over quota not stored" in (r["body"]["detail"] or "")
                             for r in _query(home, "--topic", "health", "--sender", "event_logger")),
                 what="the logger's health counting what it did not store")
    finally:
        net.close()


def _old_log(home, days=100, n=60):
    """A log of several segments written long ago (the logger not running)."""
    with EventLog(home.events_dir, segment_bytes=2000) as log:
        import msgpack

        for i in range(n):
            log.append(msgpack.packb([0, b"debug.old.", b"x" * 80, "bad_frames", "old"], use_bin_type=True))
    segs = segments(home.events_dir)
    _old(segs, days)
    return segs


def test_event_logger_applies_retention_by_age_when_it_starts(tmp_path):
    home = new_home(tmp_path / "home")
    with open(home.root / "config.toml", "a") as f:
        f.write("\n[event_logger]\nretention_days = 30\n")
    segs = _old_log(home)
    assert len(segs) >= 3
    net = Network(home).start_healthy("broker", "vault", "event_logger")
    try:
        wait_for(lambda: segments(home.events_dir)[0] == segs[-1], what="the old segments pruned")
        assert [p for p in segs if p.exists()] == segs[-1:]  # the writer's segment stays
    finally:
        net.close()


def test_dctrl_events_prune_by_age_and_size(tmp_path):
    import json

    home = new_home(tmp_path / "home")
    segs = _old_log(home, days=40)
    _old(segs[2:], 1)  # the third on: written yesterday
    out = json.loads(dctrl(home, "events", "prune", "--older-than", "30d", "--json").stdout)
    assert [r["segment"] for r in out["removed"]] == [p.name for p in segs[:2]]
    assert "removed 0 segment(s)" in dctrl(home, "events", "prune", "--older-than", "30d").stdout
    left = segments(home.events_dir)
    out = dctrl(home, "events", "prune", "--max-mb", "0").stdout
    assert f"removed {len(left) - 1} segment(s)" in out and segments(home.events_dir) == left[-1:]
    bad = dctrl(home, "events", "prune", check=False)
    assert bad.returncode != 0 and "--older-than" in bad.stderr
    bad = dctrl(home, "events", "prune", "--older-than", "soon", check=False)
    assert bad.returncode != 0 and "30d" in bad.stderr


def test_event_logger_sub_socket_has_no_receive_hwm(tmp_path):
    """libzmq#3937 (hole 5): a connection that drops while the receive pipe is full aborts the
    process. The logger's SUB socket has no receive HWM, so its pipe is never full."""
    import zmq

    from actors.event_logger.actor import EventLogger
    from actors.runtime import Runtime

    home = new_home(tmp_path / "home")
    actor = EventLogger(home)
    rt = Runtime(actor, home.bus_settings("event_logger"))
    try:
        rt._open_sockets()
        assert rt.sub.rcvhwm == 0 and rt.sub.getsockopt(zmq.RCVHWM) == 0
        assert rt.pub.sndhwm == 50_000  # only the SUB side changes
    finally:
        rt._close_sockets()
        actor.log.close()
        rt.ctx.term()
