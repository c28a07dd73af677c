"""The store file's shape, and the small vocabulary every store module shares.

Invariants of this module:

* The tables are created idempotently (``CREATE ... IF NOT EXISTS``); a file
  whose ``user_version`` is newer than ``SCHEMA_VERSION`` is refused
  (``StoreError``) before anything in it is touched.
* ``events.seq`` is ``INTEGER PRIMARY KEY AUTOINCREMENT``: SQLite keeps the
  largest ``seq`` ever handed out in ``sqlite_sequence`` and never hands it
  out again, even after the table was emptied (store invariant 2). ``top``
  reads that value, not ``MAX(seq)``.
* There is no index on ``event_id``: the redelivery window
  (``buffer.admission``) does deduplication in memory, because ids are random
  and an index on them is written all over the file (4-5x the cost of every
  insert and delete).
* Byte accounting: a row counts ``len(body) + ROW_OVERHEAD``; events against
  ``max_bytes``, dead letters against their own budget. ``measure_used`` and
  ``measure_dead`` compute the same figures from the file.
* Schema migration is additive: version 2 only adds tables (``audit``,
  ``discarded``, ``tallies``), so a version 1 file opens as it is, gains them
  and is marked version 2; no existing row is rewritten.
* Version 3 adds ``notes`` (``RecognizerNote``: a recognizer's unfinished
  business, one row per device and key), again only a new table.
* Counters are only ever incremented (``bump``) inside the transaction whose
  effect they count, so they are exactly as durable as that effect.

Nothing here keeps state; every function takes the connection it works on.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Final, Literal

#: 1: events, cursors, dead letters, counters. 2: the audit trail, the archive of
#: discarded dead letters and the daily tallies (added to a version 1 file as it
#: opens; nothing in it changes). 3: recognizer notes (added the same way).
SCHEMA_VERSION: Final = 3
#: Bytes counted per row on top of its body: the row header, the other
#: columns and b-tree slack. Deliberately generous (a row of this schema
#: carries about 70 bytes besides its body), so capacity errs on the safe side.
ROW_OVERHEAD: Final = 100
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
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    count INTEGER NOT NULL,
    ids TEXT NOT NULL,
    filter TEXT
);
CREATE TABLE IF NOT EXISTS discarded (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    sink TEXT,
    device TEXT,
    event_id TEXT,
    type TEXT,
    reason TEXT NOT NULL,
    body BLOB NOT NULL,
    context BLOB,
    created REAL NOT NULL,
    discarded_at REAL NOT NULL,
    audit_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS discarded_at ON discarded(discarded_at);
CREATE TABLE IF NOT EXISTS tallies (
    day TEXT NOT NULL,
    type TEXT NOT NULL,
    sink TEXT NOT NULL,
    name TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (day, type, sink, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notes (
    device TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (device, key)
) WITHOUT ROWID;
"""


class StoreError(Exception):
    """Base class of store errors; carries the store path."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] = "") -> None:
        super().__init__(message)
        self.path = str(path)


class StoreDiskFull(StoreError):
    """SQLite could not write: the disk (or the file system quota) is full."""


def is_disk_full(err: sqlite3.Error) -> bool:
    """True when ``err`` is SQLite's SQLITE_FULL (disk or quota full)."""
    return getattr(err, "sqlite_errorcode", None) == 13 or "full" in str(err).lower()


def connect(path: str | os.PathLike[str], synchronous: Synchronous) -> sqlite3.Connection:
    """Open the store's one connection: autocommit mode, WAL, the given ``synchronous``."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    # A WAL that ballooned (a long transaction, a long reader) is cut back
    # to this size when it restarts, instead of keeping its blocks forever.
    conn.execute(f"PRAGMA journal_size_limit = {WAL_KEEP_BYTES}")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def init_schema(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    """Create the tables (idempotent); refuse a file of a newer schema version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: store schema version {version} is newer than this gateway "
            f"understands ({SCHEMA_VERSION}); refusing to touch it",
            path=path,
        )
    conn.executescript(_SCHEMA)
    if version != SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def bump(conn: sqlite3.Connection, deltas: dict[str, int]) -> None:
    """Add ``deltas`` to the persistent counters (zeros are skipped)."""
    conn.executemany(
        "INSERT INTO counters(name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        [(k, v) for k, v in deltas.items() if v],
    )


def top(conn: sqlite3.Connection) -> int:
    """The largest ``seq`` ever handed out (0 for a new file)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return 0 if row is None else int(row[0])


def min_cursor(conn: sqlite3.Connection) -> int | None:
    """The smallest cursor of all sinks (None without sinks)."""
    row = conn.execute("SELECT MIN(seq) FROM cursors").fetchone()
    return None if row[0] is None else int(row[0])


def measure_used(conn: sqlite3.Connection) -> int:
    """Bytes of events, as counted against ``max_bytes``."""
    row = conn.execute(
        "SELECT COALESCE(SUM(LENGTH(body)), 0) + COUNT(*) * ? FROM events", (ROW_OVERHEAD,)
    ).fetchone()
    return int(row[0])


def measure_dead(conn: sqlite3.Connection) -> int:
    """Bytes of dead letters, as counted against ``dead_letter_max_bytes``."""
    row = conn.execute(
        "SELECT COALESCE(SUM(LENGTH(body)), 0) + COUNT(*) * ? FROM dead_letters",
        (ROW_OVERHEAD,),
    ).fetchone()
    return int(row[0])
