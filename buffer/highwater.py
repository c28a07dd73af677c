"""The high-water ``seq`` of a store, kept where a rewound store file cannot take it.

SQLite in WAL mode keeps recent commits only in the ``-wal`` file until a
checkpoint. If that file is lost (deleted by hand after a crash, restored
from a backup without it), the store opens without complaint at an older
state: acknowledged events are gone and ``seq`` values that upstream has
already seen would be handed out again.

So the store records the highest ``seq`` it has handed out in two places:

* a sidecar file ``<store>.seq`` (written atomically: temporary file, fsync,
  rename, fsync of the directory), at most once per ``interval`` from the
  store thread after a commit, and on close;
* the ``high_water_seq`` counter row (on close), which survives salvage of a
  corrupt file.

At open, a file whose highest ``seq`` is below the recorded mark has been
rewound: ``check`` reports it and moves ``sqlite_sequence`` above the mark
plus ``REWIND_SEQ_MARGIN``, because the sidecar may lag the last commits by
up to ``interval``.

The mark alone misses a loss of only the last second of commits. A crash
leaves the ``-shm`` file (the WAL index) behind, and its header says how many
WAL frames were not yet copied into the main file: ``wal_lost_frames``
reads it before SQLite opens the file, and a ``-wal`` missing (or too short)
while such frames exist is a rewind too, whatever the mark says.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from buffer.schema import top as _top
from gateway.core.throttle import LogThrottle

log = structlog.get_logger(__name__)

#: Seconds between two sidecar writes at most (plus one on close).
INTERVAL_S: Final = 1.0
#: ``seq`` values skipped after a rewind: covers the commits after the last
#: sidecar write, which upstream may have seen although the mark does not show them.
REWIND_SEQ_MARGIN: Final = 1_000_000
COUNTER: Final = "high_water_seq"


@dataclass(frozen=True, slots=True)
class Rewind:
    """A store file that opened below its recorded high-water mark."""

    high_water_seq: int
    opened_at_seq: int
    #: None when the opener only reports (an operator command): the daemon repairs.
    resumes_at_seq: int | None
    #: WAL frames (pages) not yet in the main file when the ``-wal`` went missing
    #: (0: unknown, no ``-shm`` was left).
    wal_frames_lost: int = 0


def sidecar_path(store_path: Path) -> Path:
    """Where the high-water mark of the store at ``store_path`` is kept."""
    return store_path.with_name(store_path.name + ".seq")


_WAL_INDEX_VERSION: Final = 3007000


def wal_lost_frames(store_path: Path) -> int:
    """WAL frames not yet checkpointed whose ``-wal`` file is gone (0: nothing lost).

    Reads the WAL-index header the last writer left in ``<store>-shm`` (two
    identical 48-byte copies in native byte order, then ``nBackfill``). Call
    it before SQLite opens the store: opening rebuilds the index.
    """
    try:
        with open(f"{store_path}-shm", "rb") as f:
            data = f.read(100)
    except OSError:
        return 0
    if len(data) < 100 or data[:48] != data[48:96]:
        return 0  # no index, or one torn mid-write: nothing can be concluded
    version, _unused, _change, is_init, _big_end, size, max_frame, _pages = struct.unpack(
        "=IIIBBHII", data[:24])
    (backfilled,) = struct.unpack_from("=I", data, 96)
    if version != _WAL_INDEX_VERSION or not is_init or max_frame <= backfilled:
        return 0
    page_size = (size & 0xFF00) | ((size & 0x0001) << 16)  # how the index stores it
    try:
        wal_bytes = os.stat(f"{store_path}-wal").st_size
    except OSError:
        wal_bytes = 0
    if wal_bytes >= 32 + max_frame * (24 + page_size):
        return 0
    return int(max_frame - backfilled)


class HighWater:
    """Records and checks the high-water ``seq`` of one store (store thread only)."""

    def __init__(
        self, store_path: Path, *, clock: Callable[[], float], interval: float = INTERVAL_S,
        record: bool = True,
    ) -> None:
        self.path = sidecar_path(store_path)
        self._clock = clock
        self.interval = interval
        #: False for operator commands: they neither write the mark nor repair a
        #: rewind, so the daemon still sees (and alerts on) what they found.
        self.record = record
        self._written = -1
        self._written_at: float | None = None
        # A full disk fails the write every second: one line a minute, with counts.
        self._throttle = LogThrottle(log, 60.0, clock=clock)

    def read(self) -> int:
        """The mark in the sidecar file; 0 when it is missing or unreadable."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as err:
            log.warning("store_high_water_unreadable", path=str(self.path), error=str(err))
            return 0
        if not text.isdigit():
            log.warning("store_high_water_unreadable", path=str(self.path),
                        error=f"expected a decimal seq, got {text[:40]!r}")
            return 0
        return int(text)

    def write(self, seq: int) -> None:
        """Write ``seq`` to the sidecar atomically (never lowers what is there)."""
        if not self.record or seq <= self._written:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{seq}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            # A full disk or a read-only directory must not stop commits; the
            # next attempt comes with the next commit after ``interval``.
            self._throttle.log("warning", "store_high_water_write_failed", "write",
                               path=str(self.path), error=str(err))
            return
        self._written = seq

    def after_commit(self, conn: sqlite3.Connection) -> None:
        """Called after every commit: write the mark if ``interval`` has passed."""
        if not self.record:
            return
        now = self._clock()
        if self._written_at is not None and abs(now - self._written_at) < self.interval:
            return
        self._written_at = now
        # The commit has succeeded: nothing here may make the caller think otherwise.
        with contextlib.suppress(sqlite3.Error):
            self.write(_top(conn))

    def on_close(self, conn: sqlite3.Connection) -> None:
        """Record the mark in the sidecar and in the ``high_water_seq`` counter."""
        if not self.record:
            return
        with contextlib.suppress(sqlite3.Error):
            top = _top(conn)
            self.write(top)
            conn.execute(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
                (COUNTER, top),
            )

    def check(self, conn: sqlite3.Connection, *, wal_frames_lost: int = 0) -> Rewind | None:
        """Compare the opened file with the recorded mark; repair ``seq`` if it was rewound.

        The mark is the largest of the sidecar, the ``high_water_seq``
        counter and every cursor (a cursor cannot be past a ``seq`` that was
        never handed out). ``wal_frames_lost`` (from ``wal_lost_frames``,
        taken before the file was opened) makes it a rewind even when the
        mark has not caught up with the lost commits.
        """
        top = _top(conn)
        row = conn.execute(
            "SELECT MAX(COALESCE((SELECT value FROM counters WHERE name = ?), 0),"
            " COALESCE((SELECT MAX(seq) FROM cursors), 0))",
            (COUNTER,),
        ).fetchone()
        recorded = self.read()
        self._written = max(self._written, recorded)
        mark = max(recorded, int(row[0] or 0))
        if mark <= top and not wal_frames_lost:
            return None
        mark = max(mark, top)
        if not self.record:
            return Rewind(high_water_seq=mark, opened_at_seq=top, resumes_at_seq=None,
                          wal_frames_lost=wal_frames_lost)
        resume = mark + REWIND_SEQ_MARGIN
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not conn.execute(
                "UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (resume,)
            ).rowcount:
                conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('events', ?)",
                             (resume,))
            conn.execute(
                "INSERT INTO counters(name, value) VALUES ('store_rewinds', 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1"
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.write(resume)
        return Rewind(high_water_seq=mark, opened_at_seq=top, resumes_at_seq=resume + 1,
                      wal_frames_lost=wal_frames_lost)
