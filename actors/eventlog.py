"""Crash-safe, segmented, append-only on-disk log (the EventLogger's store).

The EventLogger actor appends every bus event it sees to an :class:`EventLog`;
other processes read it with :func:`read_records` (a snapshot) or
:func:`follow` (``tail -f``).  This module treats record bodies as opaque
bytes; encoding events is the caller's business.

On-disk format (version 1)
--------------------------

A log is a directory of *segment* files::

    <directory>/00000000000000000000.seg
    <directory>/00000000000000000412.seg
    ...

Each file is named ``%020d.seg`` after the sequence number of its first
record.  Sequence numbers start at 0 and are global across segments: the
records of a segment are numbered consecutively from its file name, and a
segment's successor starts exactly where it ends.  Files with other names are
ignored.

A segment is an 8-byte header, the magic ``b"DCTRLEV1"``, followed by records::

    +----------------+----------------+----------------------+
    | N: uint32 (LE) | CRC: uint32 LE | body: N bytes        |
    +----------------+----------------+----------------------+

``CRC`` is :func:`zlib.crc32` of the body.  ``N`` is at least 1 and at most
``max_record`` (default 1 MiB).  Empty bodies are refused on append and a zero
length is treated as a bad record on read: a file tail that a crash left
zero-filled (some file systems do that after a power cut) would otherwise parse
as a run of valid empty records, because ``crc32(b"") == 0``.

The writer starts a new segment when an append would make the current one
exceed ``segment_bytes`` (default 16 MiB) and the current one already holds a
record, so a segment is never empty of records unless it is the last one, and a
single record larger than ``segment_bytes`` gets a segment of its own.

Durability contract
-------------------

* :meth:`EventLog.append` only buffers and writes; it never fsyncs.  Data is
  made durable by :meth:`EventLog.flush`, which the actor calls from its loop
  (it fsyncs after ``fsync_every`` pending records or ``fsync_interval``
  seconds after the first unsynced append, or when forced), by
  :meth:`EventLog.close`, and by rolling to a new segment.
* A record for which ``flush()`` returned True (or that was appended before
  such a call, or before a roll, or before a clean ``close()``) survives a
  crash of the process or of the machine.
* A crash loses at most the unsynced tail: the records appended after the last
  fsync.  It never corrupts earlier records: the log is only ever appended to,
  and the only truncation (recovery at open) happens at the first incomplete
  or bad record of the last segment, which lies after everything that was
  fsynced.
* When rolling, the old segment is written and fsynced before the new file is
  created (and the new file and the directory are fsynced), so every segment
  but the last is complete; :class:`EventLog` trusts them at open, and
  :func:`read_records` / :func:`follow` raise :class:`CorruptLog` if one is not.
* Recovery at open scans the last segment and truncates it at the first record
  whose 8-byte record header is incomplete, whose length is 0 or exceeds
  ``max_record`` or runs past the end of the file, or whose CRC does not match;
  a last segment shorter than the 8-byte file header or with a wrong magic is
  rewritten as just the header.  The dropped byte count is logged (warning)
  and exposed as :attr:`EventLog.recovered_bytes`.

Concurrency: one writer per directory.  :class:`EventLog` takes an exclusive,
non-blocking :func:`fcntl.flock` on the directory and raises :class:`LogLocked`
if another writer holds it; the kernel drops the lock when the holder dies.
Readers take no lock and may run in other processes while the writer appends:
they stop quietly at an incomplete record at the end of the last segment (the
writer may be in the middle of writing it).  A reader sees what the writer has
*written* (on :meth:`EventLog.flush`, on a roll, on close, or when the internal
64 KiB write buffer fills), not only what it has fsynced.  An :class:`EventLog`
object is not thread-safe; use it from one thread.

Retention: :func:`prune` deletes whole segments from the front of the log (never the last
one, which the writer appends to), by age (a segment's mtime is the time of its last write) and
by total size. It takes no lock and may run beside the writer and readers: readers that find a
segment gone skip it (its records are simply not there any more, as after any prune).

Linux/POSIX only (``os.O_DIRECTORY``, directory fsync, :mod:`fcntl`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from keys.files import fsync_dir as _fsync_dir  # the one careful writer's helpers (keys/files.py)
from keys.files import write_all as _write_all
from proto.errors import DctrlError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_RECORD",
    "DEFAULT_SEGMENT_BYTES",
    "MAGIC",
    "CorruptLog",
    "EventLog",
    "LogLocked",
    "follow",
    "prune",
    "read_records",
    "segment_name",
]

MAGIC = b"DCTRLEV1"
"""The 8-byte header every segment file starts with."""

DEFAULT_SEGMENT_BYTES = 16 * 2**20
DEFAULT_MAX_RECORD = 2**20

_FILE_HEADER_SIZE = len(MAGIC)
_RECORD_HEADER = struct.Struct("<II")  # body length, crc32(body)
_RECORD_HEADER_SIZE = _RECORD_HEADER.size
_MAX_LENGTH_FIELD = 2**32 - 1
_SEGMENT_RE = re.compile(r"([0-9]{20})\.seg", re.ASCII)
_WRITE_BUFFER = 64 * 1024  # write buffered records to the file beyond this


class CorruptLog(DctrlError, ValueError):
    """A segment that must be complete (any segment but the last) is not.

    The message names the segment file and the byte offset of the problem.
    """

    code = "corrupt_log"


class LogLocked(DctrlError, RuntimeError):
    """Another :class:`EventLog` (in this or another process) holds the log."""

    code = "log_locked"


def segment_name(first_seq: int) -> str:
    """Return the file name of the segment whose first record is ``first_seq``."""
    return "%020d.seg" % first_seq


def _list_segments(directory: str) -> list[tuple[int, str]]:
    """Return ``(first_seq, path)`` of every segment in ``directory``, sorted.

    Raises :class:`FileNotFoundError` if the directory does not exist.
    """
    segments = []
    for name in os.listdir(directory):
        match = _SEGMENT_RE.fullmatch(name)
        if match:
            segments.append((int(match.group(1)), os.path.join(directory, name)))
    segments.sort()
    return segments


def _check_file_header(f: BinaryIO) -> str | None:
    """Read the segment header from ``f``; return None if good, else why not."""
    magic = f.read(_FILE_HEADER_SIZE)
    if len(magic) < _FILE_HEADER_SIZE:
        return "segment shorter than its %d-byte header (%d bytes)" % (
            _FILE_HEADER_SIZE,
            len(magic),
        )
    if magic != MAGIC:
        return "wrong magic %r" % (magic,)
    return None


def _read_record(f: BinaryIO, max_record: int) -> tuple[bytes | None, str | None]:
    """Read one record at the current position of the buffered file ``f``.

    Returns ``(body, None)`` for a good record (``f`` is then positioned after
    it), ``(None, None)`` at a clean end of file, and ``(None, reason)`` for an
    incomplete or bad record (the position of ``f`` is then unspecified).
    """
    head = f.read(_RECORD_HEADER_SIZE)
    if not head:
        return None, None
    if len(head) < _RECORD_HEADER_SIZE:
        return None, "incomplete record header (%d of %d bytes)" % (
            len(head),
            _RECORD_HEADER_SIZE,
        )
    length, crc = _RECORD_HEADER.unpack(head)
    if length == 0:
        return None, "zero record length"
    if length > max_record:
        return None, "record length %d exceeds max_record %d" % (length, max_record)
    body = f.read(length)
    if len(body) < length:
        return None, "record of %d bytes runs past end of file (%d present)" % (
            length,
            len(body),
        )
    if zlib.crc32(body) != crc:
        return None, "CRC mismatch"
    return body, None


def _check_max_record(max_record: int) -> None:
    if not 1 <= max_record <= _MAX_LENGTH_FIELD:
        raise ValueError(
            "max_record must be between 1 and %d, not %r" % (_MAX_LENGTH_FIELD, max_record)
        )


class EventLog:
    """The writer side of an event log directory (see the module docstring).

    Opening recovers a torn tail of the last segment (see
    :attr:`recovered_bytes`) and creates the directory (mode 0o700) and the
    first segment if needed.  Raises :class:`LogLocked` if another
    :class:`EventLog` has the directory open, :class:`ValueError` for bad
    parameters and :class:`OSError` for I/O errors.

    Parameters:
        directory: the log directory (str or path-like).
        segment_bytes: roll to a new segment when an append would make the
            current one larger than this (and it already holds a record).
        max_record: largest record body accepted by :meth:`append`, and the
            largest length recovery accepts as plausible.  Readers must use a
            ``max_record`` at least as large as the writer's.
        fsync_interval: :meth:`flush` fsyncs once this many seconds (by
            ``clock``) have passed since the first unsynced append.
        fsync_every: :meth:`flush` fsyncs once this many records are pending.
        clock: monotonic clock returning seconds, injectable for tests.

    After any :class:`OSError` while writing or syncing, the object refuses
    further appends and flushes (raising :class:`OSError`); records not yet
    reported durable may or may not be on disk.  Close it and open the log
    again, which recovers the tail.  Use it from one thread only.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_record: int = DEFAULT_MAX_RECORD,
        fsync_interval: float = 0.05,
        fsync_every: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_max_record(max_record)
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive, not %r" % (segment_bytes,))
        if fsync_every < 1:
            raise ValueError("fsync_every must be at least 1, not %r" % (fsync_every,))
        if fsync_interval < 0:
            raise ValueError("fsync_interval must not be negative, not %r" % (fsync_interval,))
        self._directory = os.fspath(directory)
        self._segment_bytes = segment_bytes
        self._max_record = max_record
        self._fsync_interval = fsync_interval
        self._fsync_every = fsync_every
        self._clock = clock

        self._dir_fd = -1
        self._fd = -1  # the open last segment, O_WRONLY | O_APPEND
        self._closed = True  # until fully opened, so close() is a no-op
        self._failed: OSError | None = None
        self._buf = bytearray()  # records appended but not yet written
        self._pending = 0  # records appended since the last fsync
        self._first_unsynced: float | None = None  # clock() at the first of them
        self._next_seq = 0
        self._recovered_bytes = 0
        self._seg_base = 0
        self._seg_path = ""
        self._seg_size = 0  # bytes in the current segment, buffered ones included
        self._seg_records = 0  # records in the current segment

        created = not os.path.isdir(self._directory)
        if created:
            os.makedirs(self._directory, mode=0o700, exist_ok=True)
        try:
            self._dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._lock()
            if created:
                os.fsync(self._dir_fd)
                _fsync_dir(os.path.dirname(os.path.abspath(self._directory)))
            segments = _list_segments(self._directory)
            if not segments:
                self._create_segment(0)
            else:
                base, path = segments[-1]
                records, size, dropped = self._recover(path)
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                self._seg_base, self._seg_path = base, path
                self._seg_size, self._seg_records = size, records
                self._next_seq = base + records
                self._recovered_bytes = dropped
        except BaseException:
            self._close_fds()
            raise
        self._closed = False
        log.debug(
            "event log %s opened: next_seq=%s, segment %s",
            self._directory,
            self._next_seq,
            os.path.basename(self._seg_path),
        )

    # -- public API -------------------------------------------------------

    @property
    def directory(self) -> str:
        """The log directory, as given."""
        return self._directory

    @property
    def next_seq(self) -> int:
        """The sequence number the next :meth:`append` will return."""
        return self._next_seq

    @property
    def recovered_bytes(self) -> int:
        """Bytes of the last segment discarded by recovery at open (0 if clean)."""
        return self._recovered_bytes

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def append(self, body: bytes | bytearray | memoryview) -> int:
        """Append one record and return its sequence number.

        The record is buffered and written to the file (not fsynced); it
        becomes durable at the next :meth:`flush` that returns True, at a roll
        to a new segment, or at :meth:`close`.  Raises :class:`ValueError` if
        the body is empty or longer than ``max_record`` (nothing is appended
        then), :class:`TypeError` if it is not bytes-like, :class:`ValueError`
        if the log is closed and :class:`OSError` on I/O errors.
        """
        self._check_usable()
        if not isinstance(body, bytes):
            if not isinstance(body, (bytearray, memoryview)):
                raise TypeError("record body must be bytes-like, not %s" % type(body).__name__)
            body = bytes(body)
        length = len(body)
        if length == 0:
            raise ValueError("empty records are not allowed")
        if length > self._max_record:
            raise ValueError(
                "record of %d bytes exceeds max_record %d" % (length, self._max_record)
            )
        size = _RECORD_HEADER_SIZE + length
        try:
            if self._seg_records and self._seg_size + size > self._segment_bytes:
                self._roll()
            self._buf += _RECORD_HEADER.pack(length, zlib.crc32(body))
            self._buf += body
            seq = self._next_seq
            self._next_seq += 1
            self._seg_size += size
            self._seg_records += 1
            self._pending += 1
            if self._first_unsynced is None:
                self._first_unsynced = self._clock()
            if len(self._buf) >= _WRITE_BUFFER:
                self._write_buffer()
        except OSError as exc:
            self._set_failed(exc, "append")
            raise
        return seq

    def flush(self, force: bool = False) -> bool:
        """Write buffered records to the file, and fsync it if due.

        An fsync is due if ``force`` is true, if ``fsync_every`` records are
        pending, or if ``fsync_interval`` seconds have passed since the first
        unsynced append; it never happens with no records pending.  Returns
        True if it fsynced, which makes every record appended so far durable.
        Raises :class:`ValueError` if closed and :class:`OSError` on I/O errors.
        """
        self._check_usable()
        return self._flush(force)

    def due_in(self) -> float | None:
        """Seconds until :meth:`flush` would fsync; None if no records are pending.

        Returns 0.0 if an fsync is already due.  The actor uses it as its poll
        timeout so it calls :meth:`flush` in time.
        """
        if self._closed or not self._pending:
            return None
        if self._pending >= self._fsync_every:
            return 0.0
        assert self._first_unsynced is not None
        return max(0.0, self._first_unsynced + self._fsync_interval - self._clock())

    def close(self) -> None:
        """Flush with fsync and close the log.  Idempotent.

        If the log failed earlier (see the class docstring), the buffered tail
        is discarded (with a warning) and the files are just closed.  The
        files are closed even if the final flush raises.
        """
        if self._closed:
            return
        try:
            if self._failed is None:
                self._flush(force=True)
            elif self._buf or self._pending:
                log.warning(
                    "event log %s: closing after an I/O error; %s unsynced records may be lost",
                    self._directory,
                    self._pending,
                )
        finally:
            self._closed = True
            self._buf = bytearray()
            self._close_fds()
            log.debug("event log %s closed at next_seq=%s", self._directory, self._next_seq)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Like an unclosed file: warn, hand buffered records to the OS (no
        # fsync) and release the descriptors and the lock.
        if getattr(self, "_closed", True):
            return
        warnings.warn("unclosed %r" % (self,), ResourceWarning, stacklevel=2, source=self)
        try:
            if self._failed is None:
                self._write_buffer()
        except OSError:
            pass
        finally:
            self._closed = True
            self._close_fds()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return "<EventLog %r %s next_seq=%d>" % (self._directory, state, self._next_seq)

    # -- internals --------------------------------------------------------

    def _flush(self, force: bool) -> bool:
        """:meth:`flush` without the usability check (close() uses it)."""
        try:
            self._write_buffer()
            if not self._pending:
                return False
            assert self._first_unsynced is not None
            due = (
                force
                or self._pending >= self._fsync_every
                or self._clock() - self._first_unsynced >= self._fsync_interval
            )
            if not due:
                return False
            os.fsync(self._fd)
        except OSError as exc:
            self._set_failed(exc, "flush")
            raise
        self._pending = 0
        self._first_unsynced = None
        return True

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on a closed EventLog (%s)" % self._directory)
        if self._failed is not None:
            raise OSError(
                "event log %s is unusable after an earlier I/O error (%s); reopen it"
                % (self._directory, self._failed)
            ) from self._failed

    def _set_failed(self, exc: OSError, what: str) -> None:
        self._failed = exc
        log.error(
            "event log %s: %s failed, log unusable until reopened: %s", self._directory, what, exc
        )

    def _lock(self) -> None:
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogLocked("event log %s is open in another writer" % self._directory) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                raise
            log.warning(
                "event log %s: cannot lock the directory (%s); "
                "not guarding against a second writer",
                self._directory,
                exc,
            )

    def _close_fds(self) -> None:
        for name in ("_fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                try:
                    os.close(fd)
                except OSError as exc:  # pragma: no cover - close() of a valid fd
                    log.warning("event log %s: closing fd failed: %s", self._directory, exc)

    def _write_buffer(self) -> None:
        if self._buf:
            data, self._buf = self._buf, bytearray()
            _write_all(self._fd, data)

    def _recover(self, path: str) -> tuple[int, int, int]:
        """Make the last segment ``path`` end after its last good record.

        Returns ``(records, size, dropped_bytes)`` for the recovered segment.
        """
        name = os.path.basename(path)
        with open(path, "rb") as f:
            original_size = os.fstat(f.fileno()).st_size
            problem = _check_file_header(f)
            if problem is not None:
                log.warning(
                    "event log %s: last segment %s: %s; rewriting it as an empty segment, "
                    "dropping %s bytes",
                    self._directory,
                    name,
                    problem,
                    original_size,
                )
                self._rewrite_header(path)
                return 0, _FILE_HEADER_SIZE, original_size
            records = 0
            offset = _FILE_HEADER_SIZE
            while True:
                body, problem = _read_record(f, self._max_record)
                if body is None:
                    break
                records += 1
                offset += _RECORD_HEADER_SIZE + len(body)
        if problem is None:
            return records, offset, 0
        dropped = original_size - offset
        log.warning(
            "event log %s: last segment %s: %s at offset %s; truncating, dropping %s bytes",
            self._directory,
            name,
            problem,
            offset,
            dropped,
        )
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        return records, offset, dropped

    def _rewrite_header(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            _write_all(fd, MAGIC)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _create_segment(self, base: int) -> None:
        """Create segment ``base`` with its header, durably, and make it current."""
        path = os.path.join(self._directory, segment_name(base))
        self._fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        _write_all(self._fd, MAGIC)
        os.fsync(self._fd)
        os.fsync(self._dir_fd)
        self._seg_base, self._seg_path = base, path
        self._seg_size, self._seg_records = _FILE_HEADER_SIZE, 0

    def _roll(self) -> None:
        """Seal the current segment (write + fsync) and start the next one."""
        old = os.path.basename(self._seg_path)
        self._write_buffer()
        os.fsync(self._fd)
        self._pending = 0
        self._first_unsynced = None
        fd, self._fd = self._fd, -1
        os.close(fd)
        self._create_segment(self._next_seq)
        log.info(
            "event log %s: rolled %s -> %s",
            self._directory,
            old,
            os.path.basename(self._seg_path),
        )


# -- retention ----------------------------------------------------------------


def prune(
    directory: str | os.PathLike[str],
    *,
    older_than: float | None = None,
    max_bytes: int | None = None,
) -> list[tuple[str, int]]:
    """Delete whole segments from the front of the log; return ``(name, first_seq)`` of each.

    A segment goes if its last write (mtime) is before ``older_than`` (Unix seconds), or while
    the log is larger than ``max_bytes``; the last segment (the writer's) always stays, and only
    a prefix of the log is deleted, so what remains is contiguous. A missing directory prunes
    nothing.
    """
    directory = os.fspath(directory)
    try:
        segments = _list_segments(directory)
    except FileNotFoundError:
        return []
    sizes = []
    for _base, path in segments:
        try:
            st = os.stat(path)
        except FileNotFoundError:  # another prune got there first
            st = None
        sizes.append(st)
    total = sum(st.st_size for st in sizes if st is not None)
    removed = []
    for (base, path), st in zip(segments[:-1], sizes[:-1]):
        if st is None:
            continue
        too_old = older_than is not None and st.st_mtime < older_than
        too_big = max_bytes is not None and total > max_bytes
        if not (too_old or too_big):
            break
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        total -= st.st_size
        removed.append((os.path.basename(path), base))
    if removed:
        _fsync_dir(directory)
        log.info("event log %s: pruned %d segments (records below %d)", directory, len(removed),
                 segments[len(removed)][0])
    return removed


# -- readers ----------------------------------------------------------------


def read_records(
    directory: str | os.PathLike[str],
    *,
    start_seq: int = 0,
    max_record: int = DEFAULT_MAX_RECORD,
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(seq, body)`` for every record from ``start_seq`` on, in order.

    The segment list is taken when this function is called (it raises
    :class:`FileNotFoundError` then if the directory is missing); records are
    read lazily.  Segments whose successor starts at or below ``start_seq``
    are not opened.  Safe while a writer appends in another process: at an
    incomplete or bad record at the end of the last segment (a torn or
    still-being-written tail), and at a last segment whose header is missing
    or wrong, iteration just ends.  A bad record, bad header or a record count
    that does not match the successor's first seq in any other segment raises
    :class:`CorruptLog` naming the file and offset.  ``max_record`` must be at
    least the writer's.  If ``start_seq`` lies before the first segment on
    disk, a warning is logged and reading starts at the first segment.
    """
    if start_seq < 0:
        raise ValueError("start_seq must not be negative, not %r" % (start_seq,))
    _check_max_record(max_record)
    directory = os.fspath(directory)
    segments = _list_segments(directory)
    return _read_segments(directory, segments, start_seq, max_record)


def _start_index(directory: str, segments: list[tuple[int, str]], want: int) -> int:
    """Index of the segment that holds seq ``want`` (or the first segment)."""
    index = 0
    for i, (base, _path) in enumerate(segments):
        if base > want:
            break
        index = i
    if segments and want < segments[0][0]:
        log.warning(
            "event log %s: records %s..%s are not on disk; starting at %s",
            directory,
            want,
            segments[0][0] - 1,
            segments[0][0],
        )
    return index


def _read_segments(
    directory: str, segments: list[tuple[int, str]], start_seq: int, max_record: int
) -> Iterator[tuple[int, bytes]]:
    if not segments:
        return
    last = len(segments) - 1
    for i in range(_start_index(directory, segments, start_seq), last + 1):
        base, path = segments[i]
        seq = base
        offset = 0
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            if i == last:
                return
            continue  # pruned while we read (retention): its records are gone
        with f:
            problem = _check_file_header(f)
            if problem is None:
                offset = _FILE_HEADER_SIZE
                while True:
                    body, problem = _read_record(f, max_record)
                    if body is None:
                        break
                    if seq >= start_seq:
                        yield seq, body
                    seq += 1
                    offset += _RECORD_HEADER_SIZE + len(body)
        if problem is not None:
            if i == last:
                log.debug(
                    "event log %s: stopping at %s offset %s: %s", directory, path, offset, problem
                )
                return
            raise CorruptLog("%s: %s at offset %d" % (path, problem, offset))
        if i < last and seq != segments[i + 1][0]:
            raise CorruptLog(
                "%s: ends at offset %d after seq %d, but the next segment starts at seq %d"
                % (path, offset, seq - 1, segments[i + 1][0])
            )


def follow(
    directory: str | os.PathLike[str],
    *,
    start_seq: int | None = None,
    poll: float = 0.2,
    stop: Callable[[], bool] | None = None,
    max_record: int = DEFAULT_MAX_RECORD,
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(seq, body)`` from ``start_seq`` on, then wait for more (``tail -f``).

    ``start_seq=None`` means only records appended after this call: the end of
    the log is located when :func:`follow` is called, not when iteration
    starts.  A ``start_seq`` beyond the current end waits for that record.
    Every record is yielded exactly once, in order, with no gaps, across
    segment rolls and across a writer restart that recovers a torn tail.

    Whenever follow has caught up with the log it calls ``stop()`` (if given);
    if that returns True the iterator ends, otherwise it sleeps ``poll``
    seconds and looks again.  So ``stop=lambda: True`` reads what is on disk
    and ends; ``stop=None`` follows forever.  While records keep arriving the
    caller gets control after each one and can stop iterating itself.

    A missing or empty directory is waited for.  Raises :class:`CorruptLog`
    like :func:`read_records` for a bad segment that is not the last.
    """
    if start_seq is not None and start_seq < 0:
        raise ValueError("start_seq must not be negative, not %r" % (start_seq,))
    if poll < 0:
        raise ValueError("poll must not be negative, not %r" % (poll,))
    _check_max_record(max_record)
    follower = _Follower(os.fspath(directory), max_record)
    if start_seq is None:
        follower.seek_end()
    else:
        follower.want = start_seq
    return follower.run(poll, stop)


class _Follower:
    """Reading position of :func:`follow` in a log directory.

    ``path`` is the current segment (None before one is chosen), ``offset``
    the byte offset of the next unread record in it (0: header not yet
    checked), ``seq`` that record's sequence number; records below ``want``
    are read but not yielded.
    """

    def __init__(self, directory: str, max_record: int) -> None:
        self.directory = directory
        self.max_record = max_record
        self.want = 0
        self.base = 0
        self.path: str | None = None
        self.offset = 0
        self.seq = 0

    def segments(self) -> list[tuple[int, str]]:
        try:
            return _list_segments(self.directory)
        except FileNotFoundError:
            return []

    def select(self, base: int, path: str) -> None:
        self.base, self.path, self.offset, self.seq = base, path, 0, base

    def seek_end(self) -> None:
        """Position after the last complete record currently on disk."""
        segments = self.segments()
        if not segments:
            self.want = 0
            return
        self.select(*segments[-1])
        for _ in self.read_available(yield_records=False):
            pass
        self.want = self.seq

    def read_available(self, yield_records: bool = True) -> Iterator[tuple[int, bytes]]:
        """Read the current segment from the current position to its end.

        Yields the records at or above ``want``; advances the position past
        every good record (before yielding it).  Returns (via StopIteration)
        None at a clean end, else the reason reading stopped.
        """
        assert self.path is not None
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:  # pruned (retention): go on from the first segment left
            segments = [seg for seg in self.segments() if seg[0] > self.base]
            if segments:
                self.select(*segments[0])
                self.want = max(self.want, self.base)
            return None
        with f:
            if self.offset == 0:
                problem = _check_file_header(f)
                if problem is not None:
                    return problem
                self.offset = _FILE_HEADER_SIZE
            else:
                f.seek(self.offset)
            while True:
                body, problem = _read_record(f, self.max_record)
                if body is None:
                    return problem
                seq = self.seq
                self.seq += 1
                self.offset += _RECORD_HEADER_SIZE + len(body)
                if yield_records and seq >= self.want:
                    yield seq, body

    def run(self, poll: float, stop: Callable[[], bool] | None) -> Iterator[tuple[int, bytes]]:
        while True:
            if self.path is None:
                segments = self.segments()
                if segments:
                    self.select(*segments[_start_index(self.directory, segments, self.want)])
            if self.path is not None:
                # List *before* reading: the writer writes and fsyncs a segment
                # before creating its successor, so if a successor exists now,
                # the read below sees the current segment complete.
                successor = next(
                    ((b, p) for b, p in self.segments() if b > self.base), None
                )
                before = self.seq
                problem = yield from self.read_available()
                if successor is not None:
                    if not os.path.exists(self.path):
                        # Pruned under us (retention): its records and any segments between
                        # are gone; go on with what is left.
                        self.select(*successor)
                        self.want = max(self.want, self.base)
                        continue
                    if problem is not None:
                        raise CorruptLog("%s: %s at offset %d" % (self.path, problem, self.offset))
                    if self.seq != successor[0]:
                        raise CorruptLog(
                            "%s: ends at offset %d after seq %d, but the next segment "
                            "starts at seq %d"
                            % (self.path, self.offset, self.seq - 1, successor[0])
                        )
                    self.select(*successor)
                    continue
                if self.seq != before:
                    continue  # made progress: look again before sleeping
            if stop is not None and stop():
                return
            time.sleep(poll)
