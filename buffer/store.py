"""The SQLite store-and-forward buffer.

Invariants (each one is held by ``tests/test_store_model.py`` against a model):

1. An event is *accepted* exactly when the transaction that inserted it has
   committed. ``append`` returns only after that commit; callers acknowledge
   their sources only after ``append`` returned.
2. ``seq`` grows forever (``INTEGER PRIMARY KEY AUTOINCREMENT``): a row
   inserted later always has a larger ``seq``, even after the table was
   emptied or the file reopened. A reader that keeps ``seq > cursor`` never
   misses a row.
3. Each sink has one cursor: the largest ``seq`` it has finished with. A
   cursor only moves forward, and it moves in the same transaction that writes
   the dead letters of the rows it passes.
4. A row is deleted only when every sink's cursor has passed it (and the
   retention window, if any, has elapsed), or when it is telemetry and the
   store is at capacity. Business and exception rows are never evicted: when
   they do not fit, ``append`` commits the units that fit and reports how many,
   so the caller can push back on its sources.
5. Redeliveries are absorbed: an event whose id is among the last
   ``dedup_window`` ids appended (seeded at open from the newest rows, so a
   source's redelivery after a crash is caught too) is not stored again and
   is counted as a duplicate. Older repeats reach upstream, which
   deduplicates by ``event_id``. (A unique index would make this exact, at
   4-5x the cost of every insert and delete: ids are random, so the index is
   written all over the file.)
6. Every eviction or drop of telemetry is counted in ``counters``, which
   survive reopen.
7. Opening a file that fails ``PRAGMA quick_check`` (or is not a database)
   moves it aside under a timestamped name, salvages every readable row into a
   fresh file (``buffer.salvage``), and reports it in ``OpenReport`` — opening
   never raises for a corrupt file.
8. A file that opens below its recorded high-water ``seq`` (``buffer.highwater``:
   its ``-wal`` was lost) is reported as rewound and ``seq`` resumes above the
   mark, so no ``seq`` upstream may have seen is handed out again.
9. Dead letters have their own byte budget (``dead_letter_max_bytes``) and
   never count against ``max_bytes``, so they can never block an event.
   Policy when the budget is exceeded: the oldest *ingest* dead letters
   (raw source messages) are evicted first and counted
   (``evicted_ingest_dead_letters``); *sink* dead letters (events an upstream
   rejected, which may be business events) are never evicted: their
   overrunning the budget is reported (``dead_letters_over_budget``), not
   enforced. An oversized ingest payload is kept as a bounded prefix
   (``dead_letter_payload_bytes``) with its original size and SHA-256 in the
   context.
10. Disk space: ``append`` admits nothing while the file system holding the
   store has less than ``min_free_bytes`` available (free blocks plus the
   file's own free pages), and reports ``full_reason="disk"``. A preallocated
   ``<store>.reserve`` file is released when a cursor move (the only thing
   that deletes delivered rows) hits a full disk, and re-created once there
   is room again, so deletes can always proceed. (Held by
   ``tests/test_store_disk_full.py`` on a real small file system, not by the
   model.)

This module is synchronous and owns one ``sqlite3`` connection; it must be
used from one thread at a time. ``buffer.service`` runs it on a dedicated
thread for the asyncio side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgpack
import structlog

from buffer.highwater import COUNTER as HIGH_WATER_COUNTER
from buffer.highwater import HighWater, wal_lost_frames
from buffer.salvage import salvage
from gateway.core.events import Event, Priority
from gateway.core.records import DeadLetter, IngestDeadLetter, Record, Row, SinkDeadLetter
from gateway.core.throttle import LogThrottle

log = structlog.get_logger(__name__)

SCHEMA_VERSION: Final = 1
#: Bytes counted per row on top of its body: the row header, the other
#: columns and b-tree slack. Deliberately generous (a row of this schema
#: carries about 70 bytes besides its body), so capacity errs on the safe side.
ROW_OVERHEAD: Final = 100
#: Default share of ``max_bytes`` that dead letters may use on top of it.
DEAD_LETTER_SHARE: Final = 8
#: Defaults of the disk guards (see invariant 10).
MIN_FREE_BYTES: Final = 64 * 1024**2
RESERVE_BYTES: Final = 8 * 1024**2
DEAD_LETTER_PAYLOAD_BYTES: Final = 4096
#: The WAL is cut back to this size when it restarts (``journal_size_limit``).
WAL_KEEP_BYTES: Final = 4 * 1024**2

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    priority INTEGER NOT NULL,
    device TEXT NOT NULL,
    only_sink TEXT,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
DROP INDEX IF EXISTS events_event_id;
CREATE INDEX IF NOT EXISTS events_telemetry ON events(seq) WHERE priority = 2;
CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('sink', 'ingest')),
    sink TEXT,
    device TEXT,
    event_id TEXT,
    type TEXT,
    reason TEXT NOT NULL,
    body BLOB NOT NULL,
    context BLOB,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class StoreError(Exception):
    """Base class of store errors; carries the store path."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] = "") -> None:
        super().__init__(message)
        self.path = str(path)


class StoreDiskFull(StoreError):
    """SQLite could not write: the disk (or the file system quota) is full."""


@dataclass(slots=True)
class AppendResult:
    """What one ``append`` did."""

    units_committed: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    evicted_telemetry: int = 0
    dropped_telemetry: int = 0
    evicted_ingest_dead_letters: int = 0
    full: bool = False
    #: Why ``full``: ``"capacity"`` (``max_bytes``) or ``"disk"`` (file system).
    full_reason: str | None = None


@dataclass(frozen=True, slots=True)
class OpenReport:
    """What happened when the store was opened."""

    corrupt: bool = False
    moved_to: str | None = None
    salvaged_events: int = 0
    salvaged_dead_letters: int = 0
    reason: str | None = None
    #: The salvage reader that brought back the most rows ("sql", "recover", "pages").
    salvage_method: str | None = None
    #: Event rows each salvage reader brought back (-1: reader not available).
    salvaged_by: tuple[tuple[str, int], ...] = ()
    #: The file opened below its recorded high-water ``seq`` (its WAL was lost).
    rewound: bool = False
    high_water_seq: int | None = None
    opened_at_seq: int | None = None
    resumes_at_seq: int | None = None
    wal_frames_lost: int = 0


def _size(record: Record) -> int:
    """Bytes a record takes from ``max_bytes`` (dead letters have their own budget)."""
    if isinstance(record, Event):
        return len(record.body) + ROW_OVERHEAD
    return 0


def _bounded(record: IngestDeadLetter, limit: int) -> IngestDeadLetter:
    """``record`` with its payload cut to ``limit`` bytes, the cut recorded in context."""
    payload = record.payload
    context = {
        **record.context,
        "truncated": True,
        "original_size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return IngestDeadLetter(record.device, record.reason, payload[:limit], context)


class Store:
    """The SQLite buffer: events, per-sink cursors, dead letters, counters."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 2 * 1024**3,
        synchronous: Synchronous = "FULL",
        retention_s: float = 0.0,
        clock: Any = time.time,
        recover: bool = True,
        dedup_window: int = 16_384,
        dead_letter_max_bytes: int | None = None,
        dead_letter_payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES,
        min_free_bytes: int = MIN_FREE_BYTES,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        for name, value in (("dead_letter_max_bytes", dead_letter_max_bytes or 0),
                            ("dead_letter_payload_bytes", dead_letter_payload_bytes),
                            ("min_free_bytes", min_free_bytes), ("reserve_bytes", reserve_bytes)):
            if value < 0:
                raise ValueError(f"store {name} must be >= 0, got {value}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.synchronous: Synchronous = synchronous
        self.retention_s = retention_s
        self.dead_letter_max_bytes = (
            max_bytes // DEAD_LETTER_SHARE if dead_letter_max_bytes is None
            else dead_letter_max_bytes
        )
        self.dead_letter_payload_bytes = dead_letter_payload_bytes
        self.min_free_bytes = min_free_bytes
        self.reserve_bytes = reserve_bytes
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self._disk_log = LogThrottle(log, 60.0, clock=clock)
        self._dl_over_budget = False
        self._reserve_released = False
        self._disk_low = False
        self._clock = clock
        self.open_report = OpenReport()
        self._recover_enabled = recover
        self._conn = self._open()
        self.used_bytes = self._measure_used()
        self.dead_letter_bytes = self._measure_dead()
        self.dedup_window = dedup_window
        self._data_version: int | None = None
        self._recent_ids: deque[str] = deque()
        self._recent_set: set[str] = set()
        for (event_id,) in reversed(self._conn.execute(
            "SELECT event_id FROM events WHERE only_sink IS NULL ORDER BY seq DESC LIMIT ?",
            (dedup_window,),
        ).fetchall()):
            self._remember_id(event_id)

    def _remember_id(self, event_id: str) -> None:
        self._recent_set.add(event_id)
        self._recent_ids.append(event_id)
        if len(self._recent_ids) > self.dedup_window:
            self._recent_set.discard(self._recent_ids.popleft())

    # -- opening, corruption and salvage ------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        # A WAL that ballooned (a long transaction, a long reader) is cut back
        # to this size when it restarts, instead of keeping its blocks forever.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_KEEP_BYTES}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wal_lost = wal_lost_frames(self.path)  # before any connection rebuilds the WAL index
        if self._fs_free() < self.min_free_bytes:
            # Opening in WAL mode creates -wal and -shm; a full disk would fail that.
            self._release_reserve("open")
        else:
            self.ensure_reserve()
        problem = self._check_file() if self._recover_enabled else None
        if problem is not None:
            conn = self._recover(problem)
        else:
            conn = self._connect()
            self._init_schema(conn)
        # -- high-water mark: detect a rewound file (invariant 8) --
        self._high_water = HighWater(self.path, clock=self._clock, record=self._recover_enabled)
        rewind = self._high_water.check(conn, wal_frames_lost=wal_lost)
        if rewind is not None:
            self.open_report = dataclasses.replace(
                self.open_report, rewound=True, **dataclasses.asdict(rewind))
            log.error("store_rewound", path=str(self.path), **dataclasses.asdict(rewind),
                      missing_seqs=rewind.high_water_seq - rewind.opened_at_seq)
        return conn

    def _check_file(self) -> str | None:
        """Return why the existing file is unusable, or None when it is fine."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                rows = conn.execute("PRAGMA quick_check").fetchall()
            finally:
                conn.close()
        except sqlite3.DatabaseError as err:
            return f"{type(err).__name__}: {err}"
        if rows != [("ok",)]:
            return "quick_check: " + "; ".join(str(r[0]) for r in rows[:5])
        return None

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema version {version} is newer than this gateway "
                f"understands ({SCHEMA_VERSION}); refusing to touch it",
                path=self.path,
            )
        conn.executescript(_SCHEMA)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _recover(self, reason: str) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while moved.exists():
            n += 1
            moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(moved) + suffix))
        log.error("store_corrupt_moved_aside", path=str(self.path), moved_to=str(moved),
                  reason=reason)
        conn = self._connect()
        self._init_schema(conn)
        got = salvage(moved, conn)
        events, dead = got.events, got.dead_letters
        self.open_report = OpenReport(
            corrupt=True,
            moved_to=str(moved),
            salvaged_events=events,
            salvaged_dead_letters=dead,
            reason=reason,
            salvage_method=got.method,
            salvaged_by=tuple(got.added.items()),
        )
        self._bump(conn, {"store_corruptions": 1, "salvaged_events": events})
        log.error("store_salvaged", path=str(self.path), moved_to=str(moved),
                  salvaged_events=events, salvaged_dead_letters=dead, method=got.method,
                  salvaged_by=got.added, found=got.found, seq_continues_above=got.high_seq)
        return conn

    def _measure_used(self) -> int:
        """Bytes of events, as counted against ``max_bytes``."""
        row = self._conn.execute(
            "SELECT COALESCE(SUM(LENGTH(body)), 0) + COUNT(*) * ? FROM events", (ROW_OVERHEAD,)
        ).fetchone()
        return int(row[0])

    def _measure_dead(self) -> int:
        """Bytes of dead letters, as counted against ``dead_letter_max_bytes``."""
        row = self._conn.execute(
            "SELECT COALESCE(SUM(LENGTH(body)), 0) + COUNT(*) * ? FROM dead_letters",
            (ROW_OVERHEAD,),
        ).fetchone()
        return int(row[0])

    # -- disk space -------------------------------------------------------------------

    def _fs_free(self) -> int:
        """Bytes available to this process on the store's file system."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return 1 << 62  # unknown: do not block on it; SQLITE_FULL still guards
        return int(st.f_bavail) * int(st.f_frsize)

    def disk_room(self) -> int:
        """Bytes new rows can still use: free file-system space plus the file's free pages."""
        free = self._fs_free()
        with contextlib.suppress(sqlite3.Error, AttributeError):
            pages = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            free += int(pages) * int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        return free

    def disk_low(self) -> bool:
        """True while ``append`` admits nothing for lack of disk space.

        Low below ``min_free_bytes``; once low, low until a quarter more is
        free, so a store hovering at the mark does not flap.
        """
        mark = self.min_free_bytes
        if self._disk_low:
            mark += mark // 4
        # The common case costs one statvfs and no query.
        low = mark > 0 and self._fs_free() < mark and self.disk_room() < mark
        self._disk_low = low
        return low

    def _release_reserve(self, why: str) -> bool:
        try:
            size = self.reserve_path.stat().st_size
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            log.error("store_reserve_release_failed", path=str(self.reserve_path),
                      error=str(err))
            return False
        log.warning("store_reserve_released", path=str(self.reserve_path), bytes=size,
                    reason=why)
        self._reserve_released = True
        return True

    def ensure_reserve(self) -> bool:
        """Create ``<store>.reserve`` if it is missing and the disk has room for it.

        Room means ``reserve_bytes`` plus ``min_free_bytes`` free, so creating
        it never pushes the store into the low-disk state. Returns True when
        the reserve exists afterwards.
        """
        if self.reserve_bytes <= 0:
            return False
        with contextlib.suppress(OSError):
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
        if self._fs_free() < self.reserve_bytes + self.min_free_bytes:
            return False
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                # Really allocate the blocks: a sparse file would reserve nothing.
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            self._disk_log.log("warning", "store_reserve_not_created", "reserve",
                               path=str(self.reserve_path), error=str(err))
            return False
        if self._reserve_released:  # a first creation at open is not news
            log.info("store_reserve_recreated", path=str(self.reserve_path),
                     bytes=self.reserve_bytes)
            self._reserve_released = False
        return True

    def _checkpoint_if_low(self) -> None:
        """Checkpoint after a delete when the disk is low, so the WAL is reused.

        Deleted pages go to the file's free list (reused by new rows, counted
        by ``disk_room``), but only once the delete is checkpointed; then the
        next write restarts the WAL from its start (cut back to
        ``WAL_KEEP_BYTES``) instead of growing it. A PASSIVE checkpoint never
        waits for readers. Truncating the WAL to nothing would not help: the
        next commit must grow it again, from the same scarce free blocks.
        """
        if self._fs_free() >= self.min_free_bytes + self.reserve_bytes:
            return
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def refresh_if_changed_elsewhere(self) -> bool:
        """Re-measure ``used_bytes`` if another process (an operator command) committed.

        ``PRAGMA data_version`` changes only for commits by other connections.
        """
        version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        if changed:
            self.used_bytes = self._measure_used()
            self.dead_letter_bytes = self._measure_dead()
        return changed

    def close(self) -> None:
        """Close the connection. Everything committed is on disk already."""
        self._high_water.on_close(self._conn)
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    # -- transactions ---------------------------------------------------------------

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            # A COMMIT that fails (SQLITE_FULL while appending to the WAL) leaves
            # the transaction open: it must be rolled back here, or a later
            # COMMIT would store rows their caller was told were refused.
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLITE_FULL/IOERR may have rolled back already
                conn.execute("ROLLBACK")
            raise
        self._high_water.after_commit(conn)

    @staticmethod
    def _bump(conn: sqlite3.Connection, deltas: dict[str, int]) -> None:
        conn.executemany(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(k, v) for k, v in deltas.items() if v],
        )

    # -- append ---------------------------------------------------------------------

    def append(self, units: Sequence[Sequence[Record]]) -> AppendResult:
        """Commit ``units`` (each the records of one source message) in one transaction.

        Commits the longest prefix of units that fits the capacity after
        evicting telemetry; ``units_committed`` says how many. Telemetry that
        does not fit is dropped and counted instead of blocking. Commits
        nothing (``full_reason="disk"``) while the disk is low (invariant 10).
        Ingest dead letters do not count against capacity; oversized payloads
        are cut and old ingest dead letters evicted to their budget (invariant 9).
        """
        result = AppendResult()
        if not units:
            return result
        if self.disk_low():
            self._disk_log.log("error", "store_disk_low", "low", path=str(self.path),
                               disk_room_bytes=self.disk_room(),
                               min_free_bytes=self.min_free_bytes)
            return AppendResult(full=True, full_reason="disk")
        units = self._bound_payloads(units)
        now = self._clock()
        try:
            with self._txn() as conn:
                used = self.used_bytes
                freed_total = 0
                events: list[tuple[str, str, int, str, float, bytes]] = []
                dead: list[tuple[str, str, str, bytes, bytes, float]] = []
                total = sum(_size(r) for unit in units for r in unit)
                if used + total <= self.max_bytes:
                    # Fast path, the common case: everything fits.
                    for unit in units:
                        _to_rows(unit, now, events, dead)
                    used += total
                    result.units_committed = len(units)
                else:
                    for unit in units:
                        need = sum(_size(r) for r in unit)
                        if used + need > self.max_bytes:
                            over = used + need - self.max_bytes
                            freed, n, stored = self._evict(conn, over, events)
                            used -= freed
                            freed_total += stored  # pending rows were never in used_bytes
                            result.evicted_telemetry += n
                        if used + need > self.max_bytes:
                            kept = [r for r in unit if not _is_telemetry(r)]
                            dropped = len(unit) - len(kept)
                            need = sum(_size(r) for r in kept)
                            if used + need > self.max_bytes:
                                result.full = True
                                result.full_reason = "capacity"
                                break
                            result.dropped_telemetry += dropped
                            unit = kept
                        _to_rows(unit, now, events, dead)
                        used += need
                        result.units_committed += 1
                fresh: list[tuple[str, str, int, str, float, bytes]] = []
                seen: set[str] = set()
                recent = self._recent_set
                for e in events:
                    if e[0] in recent or e[0] in seen:
                        result.duplicates += 1
                    else:
                        seen.add(e[0])
                        fresh.append(e)
                _insert_events(conn, fresh)
                result.inserted = len(fresh)
                if dead:
                    conn.executemany(
                        "INSERT INTO dead_letters(device, reason, kind, body, context, created)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        dead,
                    )
                result.dead_letters = len(dead)
                added_dead = sum(len(d[3]) + ROW_OVERHEAD for d in dead)
                evicted_dead, freed_dead = (
                    self._evict_ingest_dead_letters(conn, self.dead_letter_bytes + added_dead)
                    if dead else (0, 0)
                )
                result.evicted_ingest_dead_letters = evicted_dead
                self._bump(conn, {
                    "evicted_ingest_dead_letters": evicted_dead,
                    "evicted_telemetry": result.evicted_telemetry,
                    "dropped_telemetry": result.dropped_telemetry,
                    "ingest_dead_letters": len(dead),
                    "duplicate_events": result.duplicates,
                })
                added = sum(len(e[5]) for e in fresh) + ROW_OVERHEAD * len(fresh)
        except sqlite3.OperationalError as err:
            if _is_disk_full(err):
                # Retried every 0.5 s by the committer: one line a minute.
                self._disk_log.log("error", "store_disk_full", "append", path=str(self.path),
                                   error=str(err))
                return AppendResult(full=True, full_reason="disk")
            raise
        self.used_bytes = self.used_bytes - freed_total + int(added)
        self.dead_letter_bytes += added_dead - freed_dead
        if evicted_dead:
            self._disk_log.log("warning", "ingest_dead_letters_evicted", "dl_evict",
                               evicted=evicted_dead,
                               dead_letter_bytes=self.dead_letter_bytes,
                               dead_letter_max_bytes=self.dead_letter_max_bytes)
        self._check_dead_letter_budget()
        for e in fresh:
            self._remember_id(e[0])
        return result

    def _bound_payloads(self, units: Sequence[Sequence[Record]]) -> Sequence[Sequence[Record]]:
        """Cut oversized ingest payloads (checked cheaply: most units have none)."""
        limit = self.dead_letter_payload_bytes
        out: list[Sequence[Record]] | None = None
        for i, unit in enumerate(units):
            if any(isinstance(r, IngestDeadLetter) and len(r.payload) > limit for r in unit):
                if out is None:
                    out = list(units)
                out[i] = [
                    _bounded(r, limit)
                    if isinstance(r, IngestDeadLetter) and len(r.payload) > limit else r
                    for r in unit
                ]
        return units if out is None else out

    def _evict_ingest_dead_letters(
        self, conn: sqlite3.Connection, total: int
    ) -> tuple[int, int]:
        """Delete the oldest ingest dead letters until ``total`` fits the budget.

        Returns (dead letters evicted, bytes freed). Sink dead letters are
        never touched (invariant 9).
        """
        over = total - self.dead_letter_max_bytes
        evicted = freed = 0
        while over > freed:
            rows = conn.execute(
                "SELECT id, LENGTH(body) FROM dead_letters WHERE kind = 'ingest'"
                " ORDER BY id LIMIT 256"
            ).fetchall()
            if not rows:
                break
            last = rows[0][0]
            for id_, size in rows:
                freed += int(size) + ROW_OVERHEAD
                evicted += 1
                last = id_
                if freed >= over:
                    break
            conn.execute("DELETE FROM dead_letters WHERE kind = 'ingest' AND id <= ?", (last,))
        return evicted, freed

    def _check_dead_letter_budget(self) -> None:
        """Report sink dead letters overrunning the budget (they are kept: invariant 9)."""
        over = self.dead_letter_bytes > self.dead_letter_max_bytes
        if over and not self._dl_over_budget:
            log.error("dead_letters_over_budget", dead_letter_bytes=self.dead_letter_bytes,
                      dead_letter_max_bytes=self.dead_letter_max_bytes,
                      action="sink dead letters are kept; replay or discard them")
        self._dl_over_budget = over

    @property
    def dead_letters_over_budget(self) -> bool:
        """True while dead letters (necessarily sink ones) exceed their budget."""
        return self.dead_letter_bytes > self.dead_letter_max_bytes

    @staticmethod
    def _top(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return 0 if row is None else int(row[0])

    def _evict(
        self,
        conn: sqlite3.Connection,
        need: int,
        pending: list[tuple[str, str, int, str, float, bytes]],
    ) -> tuple[int, int, int]:
        """Free at least ``need`` bytes.

        Returns (bytes freed, telemetry rows lost, bytes of those freed that were
        stored rows rather than ``pending`` ones).

        Rows every sink already has are freed first (they are only kept for the
        replay window), then undelivered telemetry oldest-first.
        """
        freed = 0
        floor = self._min_cursor(conn)
        if floor is not None:
            got = conn.execute(
                "SELECT COALESCE(SUM(LENGTH(body)), 0) + COUNT(*) * ? FROM events WHERE seq <= ?",
                (ROW_OVERHEAD, floor),
            ).fetchone()[0]
            if got:
                conn.execute("DELETE FROM events WHERE seq <= ?", (floor,))
                freed += int(got)
        lost = 0
        while freed < need:
            rows = conn.execute(
                "SELECT seq, LENGTH(body) FROM events WHERE priority = 2 ORDER BY seq LIMIT 256"
            ).fetchall()
            if not rows:
                break
            last = rows[0][0]
            for seq, size in rows:
                freed += int(size) + ROW_OVERHEAD
                lost += 1
                last = seq
                if freed >= need:
                    break
            conn.execute("DELETE FROM events WHERE priority = 2 AND seq <= ?", (last,))
        stored = freed
        # Telemetry queued in this same transaction but not inserted yet may go too.
        while freed < need:
            idx = next((i for i, e in enumerate(pending) if e[2] == Priority.TELEMETRY), None)
            if idx is None:
                break
            freed += len(pending[idx][5]) + ROW_OVERHEAD
            lost += 1
            del pending[idx]
        return freed, lost, stored

    # -- reading and cursors ----------------------------------------------------------

    @staticmethod
    def _min_cursor(conn: sqlite3.Connection) -> int | None:
        row = conn.execute("SELECT MIN(seq) FROM cursors").fetchone()
        return None if row[0] is None else int(row[0])

    def register_sinks(self, sinks: Iterable[str]) -> dict[str, int]:
        """Make sure each sink has a cursor and drop cursors of sinks that are gone.

        A new sink starts at the oldest stored row, so it receives the whole
        backlog. Returns the cursors.
        """
        wanted = set(sinks)
        now = self._clock()
        with self._txn() as conn:
            have = dict(conn.execute("SELECT sink, seq FROM cursors").fetchall())
            for gone in set(have) - wanted:
                log.warning("store_cursor_dropped", sink=gone, seq=have[gone])
                conn.execute("DELETE FROM cursors WHERE sink = ?", (gone,))
            start = conn.execute("SELECT COALESCE(MIN(seq), 1) - 1 FROM events").fetchone()[0]
            for new in wanted - set(have):
                conn.execute(
                    "INSERT INTO cursors(sink, seq, updated) VALUES (?, ?, ?)", (new, start, now)
                )
        return self.cursors()

    def cursors(self) -> dict[str, int]:
        """Every sink's cursor."""
        return dict(self._conn.execute("SELECT sink, seq FROM cursors").fetchall())

    def read(
        self,
        sink: str,
        after: int,
        limit: int,
        routes: frozenset[str] | None = None,
    ) -> tuple[list[Row], int]:
        """Rows for ``sink`` with ``seq > after`` in order, and how far was scanned.

        The second value is the ``seq`` the cursor may move to once the rows
        are delivered: it covers rows skipped by the route filter too, so a
        sink that routes nothing still lets retention proceed.
        """
        sql = "SELECT seq, event_id, type, body FROM events WHERE seq > ?"
        args: list[Any] = [after]
        if routes is not None:
            sql += f" AND type IN ({','.join('?' * len(routes))})"
            args.extend(sorted(routes))
        sql += " AND (only_sink IS NULL OR only_sink = ?) ORDER BY seq LIMIT ?"
        args.extend([sink, limit])
        conn = self._conn
        conn.execute("BEGIN")
        try:
            rows = list(map(Row._make, conn.execute(sql, args).fetchall()))
            if len(rows) < limit:
                top = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
                scanned = max(after, int(top or 0))
            else:
                scanned = rows[-1].seq
        finally:
            conn.execute("COMMIT")
        return rows, scanned

    def advance(
        self,
        sink: str,
        to_seq: int,
        dead_letters: Sequence[SinkDeadLetter] = (),
    ) -> int:
        """Move ``sink``'s cursor to ``to_seq`` and write its dead letters, in one txn.

        Then deletes rows every cursor has passed (after the retention window).
        Returns the number of rows deleted.
        """
        now = self._clock()
        # On a low disk the delete goes in small steps of its own (each one
        # checkpointed, so the WAL is reused instead of grown): a delete of a
        # whole batch in the cursor's transaction can need more WAL space
        # than is left.
        stepwise = self._fs_free() < self.min_free_bytes + self.reserve_bytes
        released = False
        while True:
            used = self.used_bytes
            try:
                with self._txn() as conn:
                    deleted, dl_bytes = self._advance(conn, sink, to_seq, dead_letters, now,
                                                      prune=not stepwise)
                break
            except sqlite3.OperationalError as err:
                self.used_bytes = used  # _prune counted rows the rollback kept
                if not _is_disk_full(err):
                    raise
                if not stepwise:
                    stepwise = True  # the cursor move alone needs only a few pages
                    continue
                # The cursor move is what frees space: give it the reserve, once.
                if not released and self._release_reserve("cursor_move_disk_full"):
                    released = True
                    continue
                raise StoreDiskFull(f"{self.path}: disk full: {err}", path=self.path) from err
        self.dead_letter_bytes += dl_bytes  # only once committed
        if dl_bytes:
            self._check_dead_letter_budget()
        if stepwise:
            deleted += self._prune_stepwise(now)
        if deleted:
            self._checkpoint_if_low()
        self.ensure_reserve()
        return deleted

    def _prune_stepwise(self, now: float, step: int = 100) -> int:
        """Delete what the cursors passed, ``step`` rows per transaction.

        Stops quietly at a full disk: the rest goes at the next cursor move.
        """
        deleted = 0
        while True:
            used = self.used_bytes
            try:
                with self._txn() as conn:
                    n = self._prune(conn, now, limit=step)
            except sqlite3.OperationalError as err:
                self.used_bytes = used
                if not _is_disk_full(err):
                    raise
                self._disk_log.log("warning", "store_prune_disk_full", "prune",
                                   path=str(self.path), error=str(err))
                return deleted
            deleted += n
            if n < step:
                return deleted
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _advance(
        self,
        conn: sqlite3.Connection,
        sink: str,
        to_seq: int,
        dead_letters: Sequence[SinkDeadLetter],
        now: float,
        *,
        prune: bool = True,
    ) -> tuple[int, int]:
        cur = conn.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
        if cur is None:
            raise StoreError(f"no cursor for sink {sink!r}", path=self.path)
        if to_seq < cur[0]:
            raise StoreError(
                f"cursor of sink {sink!r} may not move back ({cur[0]} -> {to_seq})",
                path=self.path,
            )
        dl_bytes = 0
        for dl in dead_letters:
            conn.execute(
                "INSERT INTO dead_letters(kind, sink, device, event_id, type, reason, body,"
                " created) SELECT 'sink', ?, device, event_id, type, ?, body, ? FROM events"
                " WHERE seq = ?",
                (sink, dl.reason, now, dl.seq),
            )
            row = conn.execute(
                "SELECT LENGTH(body) FROM events WHERE seq = ?", (dl.seq,)
            ).fetchone()
            dl_bytes += 0 if row is None else int(row[0]) + ROW_OVERHEAD
        if dead_letters:
            self._bump(conn, {"sink_dead_letters": len(dead_letters)})
        conn.execute(
            "UPDATE cursors SET seq = ?, updated = ? WHERE sink = ?", (to_seq, now, sink)
        )
        deleted = self._prune(conn, now) if prune else 0
        return deleted, dl_bytes

    def _prune(self, conn: sqlite3.Connection, now: float, limit: int | None = None) -> int:
        floor = self._min_cursor(conn)
        if floor is None:
            return 0
        where = "seq <= ?"
        args: list[Any] = [floor]
        if self.retention_s > 0:
            where += " AND created < ?"
            args.append(now - self.retention_s)
        if limit is not None:
            # The oldest ``limit`` of them: seq order is also age order.
            top = conn.execute(
                f"SELECT seq FROM events WHERE {where} ORDER BY seq LIMIT 1 OFFSET ?",
                [*args, limit - 1],
            ).fetchone()
            if top is not None:
                where += " AND seq <= ?"
                args.append(int(top[0]))
        size, n = conn.execute(
            f"SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*) FROM events WHERE {where}", args
        ).fetchone()
        if n:
            conn.execute(f"DELETE FROM events WHERE {where}", args)
            self.used_bytes -= int(size) + int(n) * ROW_OVERHEAD
        return int(n)

    def prune(self) -> int:
        """Delete rows every cursor passed whose retention window elapsed."""
        with self._txn() as conn:
            return self._prune(conn, self._clock())

    # -- dead letters -----------------------------------------------------------------

    def dead_letters(
        self, *, sink: str | None = None, kind: str | None = None, limit: int = 100,
        after_id: int = 0,
    ) -> list[DeadLetter]:
        """List dead letters, oldest first."""
        sql = ("SELECT id, kind, sink, device, event_id, type, reason, body, context, created"
               " FROM dead_letters WHERE id > ?")
        args: list[Any] = [after_id]
        if sink is not None:
            sql += " AND sink = ?"
            args.append(sink)
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        out = []
        for r in self._conn.execute(sql, args):
            ctx = msgpack.unpackb(r[8]) if r[8] else {}
            out.append(DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], ctx, r[9]))
        return out

    def replay(self, ids: Sequence[int]) -> int:
        """Re-queue sink dead letters for the sink that rejected them.

        The event is appended again with a new ``seq`` and ``only_sink`` set, so
        other sinks do not receive it twice. Ingest dead letters cannot be
        replayed (they never became events) and are refused with an error.
        """
        now = self._clock()
        with self._txn() as conn:
            rows = conn.execute(
                f"SELECT id, kind, sink, device, event_id, type, body FROM dead_letters"
                f" WHERE id IN ({','.join('?' * len(ids))})",
                list(ids),
            ).fetchall()
            found = {r[0] for r in rows}
            missing = [i for i in ids if i not in found]
            if missing:
                raise StoreError(f"no dead letter with id {missing}", path=self.path)
            ingest = [r[0] for r in rows if r[1] != "sink"]
            if ingest:
                raise StoreError(
                    f"dead letters {ingest} are ingest dead letters (raw source messages that "
                    "never became events); they cannot be replayed, only exported or discarded",
                    path=self.path,
                )
            for _id, _kind, sink, device, event_id, type_, body in rows:
                conn.execute(
                    "INSERT INTO events(event_id, type, priority, device, only_sink, created,"
                    " body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (event_id, type_, int(Priority.BUSINESS), device, sink, now, body),
                )
            conn.execute(
                f"DELETE FROM dead_letters WHERE id IN ({','.join('?' * len(ids))})", list(ids)
            )
            self._bump(conn, {"replayed_dead_letters": len(rows)})
        # The bodies moved from the dead-letter budget to the events' capacity.
        self.used_bytes = self._measure_used()
        self.dead_letter_bytes = self._measure_dead()
        return len(rows)

    def discard(self, ids: Sequence[int]) -> int:
        """Delete dead letters for good."""
        with self._txn() as conn:
            cur = conn.execute(
                f"DELETE FROM dead_letters WHERE id IN ({','.join('?' * len(ids))})", list(ids)
            )
            self._bump(conn, {"discarded_dead_letters": cur.rowcount})
        self.dead_letter_bytes = self._measure_dead()
        self._check_dead_letter_budget()
        return cur.rowcount

    # -- stats ------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Counters that survive restarts (evictions, duplicates, dead letters...)."""
        # The high-water mark shares the table (it survives salvage) but is not a count.
        return dict(self._conn.execute(
            "SELECT name, value FROM counters WHERE name != ?", (HIGH_WATER_COUNTER,)
        ).fetchall())

    def stats(self) -> dict[str, Any]:
        """A cheap snapshot for the status page and metrics."""
        conn = self._conn
        lo, n = conn.execute("SELECT MIN(seq), COUNT(*) FROM events").fetchone()
        top = self._top(conn)
        dl = dict(conn.execute("SELECT kind, COUNT(*) FROM dead_letters GROUP BY kind").fetchall())
        cursors = self.cursors()
        return {
            "path": str(self.path),
            "events": int(n),
            "first_seq": lo,
            "last_seq": top,
            "used_bytes": self.used_bytes,
            "max_bytes": self.max_bytes,
            "full": self.used_bytes >= self.max_bytes,
            "dead_letter_bytes": self.dead_letter_bytes,
            "dead_letter_max_bytes": self.dead_letter_max_bytes,
            "disk_room_bytes": self.disk_room(),
            "min_free_bytes": self.min_free_bytes,
            "disk_low": self.disk_low(),
            "reserve_bytes": _reserve_size(self.reserve_path),
            "cursors": cursors,
            "backlog": {s: max(0, top - c) for s, c in cursors.items()},
            "dead_letters": {"sink": dl.get("sink", 0), "ingest": dl.get("ingest", 0)},
            "counters": self.counters(),
            "file_bytes": _file_bytes(self.path),
            "open_report": {**dataclasses.asdict(self.open_report),
                            "salvaged_by": dict(self.open_report.salvaged_by)},
        }


EventRow = tuple[str, str, int, str, float, bytes]
DeadRow = tuple[str, str, str, bytes, bytes, float]


def _to_rows(unit: Sequence[Record], now: float, events: list[EventRow],
             dead: list[DeadRow]) -> None:
    """Append one unit's records as table rows."""
    for r in unit:
        if isinstance(r, Event):
            events.append((r.event_id, r.type, int(r.priority), r.device, now, r.body))
        else:
            dead.append((r.device, r.reason, "ingest", r.payload,
                         msgpack.packb(r.context, default=str), now))


_INSERT_ROWS: Final = 500
_insert_sql: dict[int, str] = {}


def _insert_events(
    conn: sqlite3.Connection, events: Sequence[tuple[str, str, int, str, float, bytes]]
) -> None:
    """Insert rows with multi-row statements: one ``sqlite3_step`` per 500 rows.

    ``executemany`` steps once per row and releases and re-takes the GIL each
    time; with the event loop busy on another thread that hand-off, not SQLite,
    would bound the commit rate.
    """
    for start in range(0, len(events), _INSERT_ROWS):
        chunk = events[start:start + _INSERT_ROWS]
        sql = _insert_sql.get(len(chunk))
        if sql is None:
            sql = (
                "INSERT INTO events(event_id, type, priority, device, created, body)"
                " VALUES " + ",".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
            )
            _insert_sql[len(chunk)] = sql
        conn.execute(sql, [v for row in chunk for v in row])


def _is_telemetry(r: Record) -> bool:
    return isinstance(r, Event) and r.priority == Priority.TELEMETRY


def _is_disk_full(err: sqlite3.Error) -> bool:
    return getattr(err, "sqlite_errorcode", None) == 13 or "full" in str(err).lower()


def _reserve_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _file_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(str(path) + suffix).st_size
    return total
