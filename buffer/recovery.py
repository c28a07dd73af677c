"""Opening the store file: integrity check, corruption move-aside and salvage, rewind check.

Invariants of this module (store invariants 7 and 8):

* Opening never raises for a corrupt file. A file that fails
  ``PRAGMA quick_check`` or is not a database is moved aside (with its
  ``-wal`` and ``-shm``) under ``<name>.corrupt-<UTC stamp>[-n]``, never
  overwriting an earlier one; every readable row is salvaged into a fresh
  file (``buffer.salvage``) and the outcome is in ``OpenReport`` and the
  ``store_corruptions`` / ``salvaged_events`` counters.
* A file of a newer schema version is the one refusal (``StoreError``):
  it is not corrupt, it is not ours to touch.
* The WAL-index header is read before any connection opens the file (opening
  rebuilds it), so a lost ``-wal`` is seen even when the high-water mark has
  not caught up (``buffer.highwater``). A rewound file is reported
  (``store_rewound``) and, when recording, ``seq`` resumes above the mark.
* With ``recover=False`` (operator commands) nothing is moved, salvaged or
  repaired: the file is only reported on, so the daemon still finds and
  alerts on what the command saw.
* On a disk below ``min_free_bytes`` the reserve is released first, because
  opening in WAL mode creates the ``-wal`` and ``-shm`` files.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from buffer.disk import DiskGuard
from buffer.highwater import HighWater, wal_lost_frames
from buffer.salvage import salvage
from buffer.schema import Synchronous, bump, connect, init_schema

log = structlog.get_logger(__name__)


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


def open_store(
    path: Path,
    *,
    synchronous: Synchronous,
    recover: bool,
    clock: Callable[[], float],
    disk: DiskGuard,
) -> tuple[sqlite3.Connection, HighWater, OpenReport]:
    """Open (check, recover, rewind-check) the store at ``path``.

    Returns the connection, the high-water keeper for it and what happened.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    wal_lost = wal_lost_frames(path)  # before any connection rebuilds the WAL index
    if disk.fs_free() < disk.min_free_bytes:
        # Opening in WAL mode creates -wal and -shm; a full disk would fail that.
        disk.release_reserve("open")
    else:
        disk.ensure_reserve()
    problem = check_file(path) if recover else None
    report = OpenReport()
    if problem is not None:
        conn, report = _recover(path, problem, synchronous=synchronous, clock=clock)
    else:
        conn = connect(path, synchronous)
        init_schema(conn, path)
    # -- high-water mark: detect a rewound file (invariant 8) --
    high_water = HighWater(path, clock=clock, record=recover)
    rewind = high_water.check(conn, wal_frames_lost=wal_lost)
    if rewind is not None:
        report = dataclasses.replace(report, rewound=True, **dataclasses.asdict(rewind))
        log.error("store_rewound", path=str(path), **dataclasses.asdict(rewind),
                  missing_seqs=rewind.high_water_seq - rewind.opened_at_seq)
    return conn, high_water, report


def check_file(path: Path) -> str | None:
    """Return why the existing file is unusable, or None when it is fine (or absent)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        return f"{type(err).__name__}: {err}"
    if rows != [("ok",)]:
        return "quick_check: " + "; ".join(str(r[0]) for r in rows[:5])
    return None


def move_aside(path: Path, now: float) -> Path:
    """Rename the store file (and its ``-wal``/``-shm``) to a new ``.corrupt-`` name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while moved.exists():
        n += 1
        moved = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(moved) + suffix))
    return moved


def _recover(
    path: Path, reason: str, *, synchronous: Synchronous, clock: Callable[[], float]
) -> tuple[sqlite3.Connection, OpenReport]:
    """Move the corrupt file aside and salvage it into a fresh one."""
    moved = move_aside(path, clock())
    log.error("store_corrupt_moved_aside", path=str(path), moved_to=str(moved),
              reason=reason)
    conn = connect(path, synchronous)
    init_schema(conn, path)
    got = salvage(moved, conn)
    events, dead = got.events, got.dead_letters
    report = OpenReport(
        corrupt=True,
        moved_to=str(moved),
        salvaged_events=events,
        salvaged_dead_letters=dead,
        reason=reason,
        salvage_method=got.method,
        salvaged_by=tuple(got.added.items()),
    )
    bump(conn, {"store_corruptions": 1, "salvaged_events": events})
    log.error("store_salvaged", path=str(path), moved_to=str(moved),
              salvaged_events=events, salvaged_dead_letters=dead, method=got.method,
              salvaged_by=got.added, found=got.found, seq_continues_above=got.high_seq)
    return conn, report
