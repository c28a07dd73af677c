"""Salvage what can be read from a damaged store file.

Three readers, each tolerant of damage the others are not:

``sql``
    SQLite's own read path, in ``seq`` order, creeping up to a damaged range
    and stepping over it (a bad page costs only the rows on it).
``recover``
    The ``sqlite3`` command-line shell's ``.recover`` (when the binary is
    installed; it is optional). It walks every b-tree it can still find and
    puts orphaned rows into ``lost_and_found``.
``pages``
    A pure-Python scan of every table b-tree leaf page of the file (and of the
    committed frames of its ``-wal``), following overflow chains. Rows are
    recognised by the shape of their record, so it works when the header page,
    the schema or every interior page is gone.

Their results are merged by ``seq`` (the row id of ``events``). A row is kept
only when its record is whole and, for events, its body is the canonical
event JSON of its own columns: salvaged rows are byte-identical to what was
stored or they are not salvaged.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import sqlite3
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from gateway.core.events import SCHEMA

log = structlog.get_logger(__name__)

#: (seq, event_id, type, priority, device, only_sink, created, body)
EventRow = tuple[int, str, str, int, str, str | None, float, bytes]
#: (id, kind, sink, device, event_id, type, reason, body, context, created)
DeadRow = tuple[int, str, str | None, str | None, str | None, str | None, str, bytes,
                bytes | None, float]

METHODS: Final = ("sql", "recover", "pages")
#: Seconds the ``.recover`` shell may take before it is given up on.
RECOVER_TIMEOUT_S: Final = 300.0
_HEADER_MAGIC: Final = b"SQLite format 3\x00"
_WAL_MAGICS: Final = (0x377F0682, 0x377F0683)
_PAGE_SIZES: Final = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)
_TABLE_LEAF: Final = 0x0D
#: Row ids of ``sqlite_sequence`` rows; the shape (text, int) is that of ``counters`` too.
_SEQUENCE_NAMES: Final = frozenset({"events", "dead_letters"})


@dataclass(slots=True)
class Harvest:
    """Rows one reader found, keyed as their tables key them.

    With ``emit_event``/``emit_dead`` set, event and dead-letter rows are
    handed on as they are found instead of being kept (a store can be far
    larger than memory); ``n_events`` counts them either way.
    """

    events: dict[int, EventRow] = field(default_factory=dict)
    dead_letters: dict[int, DeadRow] = field(default_factory=dict)
    cursors: dict[str, tuple[int, float]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    emit_event: Callable[[EventRow], None] | None = None
    emit_dead: Callable[[DeadRow], None] | None = None
    n_events: int = 0
    n_dead: int = 0
    max_seq: int = 0

    def add_event(self, row: EventRow) -> None:
        """Keep (or hand on) one event row."""
        self.n_events += 1
        self.max_seq = max(self.max_seq, row[0])
        if self.emit_event is not None:
            self.emit_event(row)
        else:
            self.events.setdefault(row[0], row)

    def add_dead(self, row: DeadRow) -> None:
        """Keep (or hand on) one dead-letter row."""
        self.n_dead += 1
        if self.emit_dead is not None:
            self.emit_dead(row)
        else:
            self.dead_letters.setdefault(row[0], row)

    def add_cursor(self, sink: str, seq: int, updated: float) -> None:
        """Keep the furthest version of a cursor (a cursor only moves forward)."""
        have = self.cursors.get(sink)
        if have is None or seq > have[0]:
            self.cursors[sink] = (seq, updated)

    def add_counter(self, name: str, value: int) -> None:
        """Keep the largest version of a counter (counters only grow)."""
        self.counters[name] = max(value, self.counters.get(name, value))

    def add_sequence(self, name: str, value: int) -> None:
        """Keep the largest ``sqlite_sequence`` value seen for a table."""
        self.sequences[name] = max(value, self.sequences.get(name, value))


@dataclass(frozen=True, slots=True)
class SalvageResult:
    """What ``salvage`` copied and which reader did best."""

    events: int = 0
    dead_letters: int = 0
    #: The reader that brought back the most event rows (``"none"``: no reader found any).
    method: str = "none"
    #: Event rows each reader brought back that no earlier reader had (``-1``: not available).
    added: dict[str, int] = field(default_factory=dict)
    #: Event rows each reader found, including ones an earlier reader had (and, for
    #: the page scan, stale copies of the same row).
    found: dict[str, int] = field(default_factory=dict)
    #: ``seq`` the new file continues above.
    high_seq: int = 0


# -- validation ------------------------------------------------------------------------


def _is_canonical(event_id: str, type_: str, device: str, body: bytes) -> bool:
    """True when ``body`` is the canonical event JSON of these columns."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return (
        isinstance(doc, dict)
        and doc.get("event_id") == event_id
        and doc.get("type") == type_
        and doc.get("device") == device
        and doc.get("schema") == SCHEMA
    )


def _real(v: Any) -> float | None:
    # SQLite stores a whole-number REAL as an integer on disk.
    if isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return None


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def classify(rowid: int, values: list[Any], into: Harvest) -> None:
    """File one decoded record under the table its shape says it belongs to.

    ``events``: 8 columns, the first NULL (it is the row id, ``seq``), then
    text, text, int, text, text-or-null, real, blob. ``dead_letters``: 10
    columns. ``cursors``: text, int, real. ``counters`` and
    ``sqlite_sequence``: text, int. Anything else is ignored.
    """
    n = len(values)
    if n == 8:
        seq, event_id, type_, prio, device, only_sink, created, body = values
        when = _real(created)
        if (
            seq is None and rowid > 0
            and isinstance(event_id, str) and isinstance(type_, str)
            and isinstance(prio, int) and 0 <= prio <= 2
            and isinstance(device, str) and _opt_str(only_sink)
            and when is not None and isinstance(body, bytes)
            and _is_canonical(event_id, type_, device, body)
        ):
            into.add_event((rowid, event_id, type_, prio, device, only_sink, when, body))
    elif n == 10:
        id_, kind, sink, device, event_id, type_, reason, body, context, created = values
        when = _real(created)
        if (
            id_ is None and rowid > 0 and kind in ("sink", "ingest")
            and _opt_str(sink) and _opt_str(device) and _opt_str(event_id) and _opt_str(type_)
            and isinstance(reason, str) and isinstance(body, bytes)
            and (context is None or isinstance(context, bytes)) and when is not None
        ):
            into.add_dead(
                (rowid, kind, sink, device, event_id, type_, reason, body, context, when)
            )
    elif n == 3:
        sink, seq, updated = values
        when = _real(updated)
        if isinstance(sink, str) and isinstance(seq, int) and when is not None:
            into.add_cursor(sink, seq, when)
    elif n == 2:
        name, value = values
        if isinstance(name, str) and isinstance(value, int):
            if name in _SEQUENCE_NAMES:
                into.add_sequence(name, value)
            else:
                into.add_counter(name, value)


# -- reader 1: SQLite's read path ----------------------------------------------------------


_EVENTS_SQL: Final = (
    "SELECT seq, event_id, type, priority, device, only_sink, created, body"
    " FROM events WHERE seq >= ? ORDER BY seq LIMIT ?"
)


def read_sql(src: sqlite3.Connection, out: Harvest | None = None) -> Harvest:
    """Every row SQLite itself can still read, stepping over damaged ranges."""
    out = Harvest() if out is None else out
    start: int | None = 0
    limit = 500
    while start is not None:
        try:
            rows = src.execute(_EVENTS_SQL, (start, limit)).fetchall()
        except sqlite3.Error:
            if limit > 1:
                limit = 1  # creep up to the damage one row at a time
            else:
                start, limit = _step_over(src, _EVENTS_SQL, start), 500
            continue
        except (OverflowError, ValueError):
            break
        if not rows:
            break
        for r in rows:
            classify(int(r[0]), [None, *r[1:]], out)
        start = int(rows[-1][0]) + 1
    with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
        for sink, seq, updated in src.execute("SELECT sink, seq, updated FROM cursors"):
            classify(0, [sink, seq, updated], out)
    with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
        for name, value in src.execute("SELECT name, value FROM counters"):
            if isinstance(name, str) and isinstance(value, int):
                out.add_counter(name, value)
    with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
        for name, value in src.execute("SELECT name, seq FROM sqlite_sequence"):
            if isinstance(name, str) and isinstance(value, int):
                out.add_sequence(name, value)
    with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
        for r in src.execute(
            "SELECT id, kind, sink, device, event_id, type, reason, body, context, created"
            " FROM dead_letters ORDER BY id"
        ):
            classify(int(r[0]), [None, *r[1:]], out)
    return out


def _step_over(src: sqlite3.Connection, sql: str, bad: int) -> int | None:
    """Return the smallest ``start > bad`` from which ``sql`` reads again, or None.

    Reading ``seq >= bad`` fails. Probes with doubling strides for a point that
    reads, then bisects back, so readable rows right after the damage are kept.
    """

    def reads(start: int) -> bool:
        try:
            src.execute(sql, (start, 1)).fetchall()
        except sqlite3.Error:
            return False
        return True

    lo, stride = bad, 1
    while not reads(lo + stride):
        lo += stride
        stride *= 2
        if lo + stride >= 1 << 62:
            return None
    hi = lo + stride
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reads(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _read_file_sql(path: Path, out: Harvest) -> Harvest:
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return out
    try:
        return read_sql(src, out)
    except sqlite3.Error:
        return out
    finally:
        src.close()


# -- reader 2: the sqlite3 shell's .recover ---------------------------------------------------


def sqlite3_binary() -> str | None:
    """Path of the ``sqlite3`` shell, or None when it is not installed."""
    return shutil.which("sqlite3")


def read_recover(path: Path, binary: str, out: Harvest | None = None) -> Harvest:
    """Rows the ``sqlite3`` shell's ``.recover`` gets out of ``path``.

    One shell opens the damaged file read-only (the moved-aside evidence is
    not changed) and prints SQL; a second shell loads it into a scratch
    database next to it, which is then read like the original, plus the
    orphaned rows of its ``lost_and_found`` tables. The SQL is relayed in
    chunks, never held whole: a store can be larger than memory.
    """
    out = Harvest() if out is None else out
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.recover-", dir=path.parent))
    target = scratch / "recovered.db"
    try:
        with (scratch / "dump.err").open("wb") as dump_err, \
                (scratch / "load.err").open("wb") as load_err:
            dump = subprocess.Popen([binary, "-readonly", str(path), ".recover"],
                                    stdout=subprocess.PIPE, stderr=dump_err)
            load = subprocess.Popen([binary, str(target)], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=load_err)

            def give_up() -> None:
                dump.kill()
                load.kill()

            watchdog = threading.Timer(RECOVER_TIMEOUT_S, give_up)
            watchdog.start()
            try:
                assert dump.stdout is not None and load.stdin is not None
                with contextlib.suppress(OSError):
                    while chunk := dump.stdout.read(1 << 16):
                        load.stdin.write(chunk)
                    # A dump cut short never reaches its COMMIT; keep what it printed.
                    load.stdin.write(b"\nCOMMIT;\n")
                with contextlib.suppress(OSError):
                    load.stdin.close()
                dump.wait()
                load.wait()
            finally:
                watchdog.cancel()
        if dump.returncode != 0:
            # E.g. a shell built without the sqlite_dbpage table fails at once.
            log.warning("store_salvage_recover_failed", path=str(path), binary=binary,
                        returncode=dump.returncode,
                        error=(scratch / "dump.err").read_bytes()[-500:]
                        .decode("utf-8", "replace").strip())
        if target.exists():
            _read_recovered(target, out)
    except OSError as err:
        log.warning("store_salvage_recover_failed", path=str(path), binary=binary,
                    error=str(err))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _read_recovered(target: Path, out: Harvest) -> None:
    try:
        conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        with contextlib.suppress(sqlite3.Error):
            read_sql(conn, out)
        with contextlib.suppress(sqlite3.Error):
            tables = [
                r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name LIKE 'lost_and_found%'"
                )
            ]
            for table in tables:
                cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
                if "nfield" not in cols or "id" not in cols:
                    continue
                fields = [c for c in cols if c.startswith("c") and c[1:].isdigit()]
                for row in conn.execute(
                    f'SELECT nfield, id, {", ".join(fields)} FROM "{table}"'
                ):
                    nfield, rowid = row[0], row[1]
                    if isinstance(nfield, int) and isinstance(rowid, int) and nfield <= len(fields):
                        classify(rowid, list(row[2:2 + nfield]), out)
    finally:
        conn.close()


# -- reader 3: page scan -------------------------------------------------------------------


def _varint(buf: bytes | mmap.mmap, off: int) -> tuple[int, int]:
    """Decode an SQLite varint at ``off``; return (value, next offset)."""
    v = 0
    for i in range(8):
        b = buf[off + i]
        v = (v << 7) | (b & 0x7F)
        if b < 0x80:
            return v, off + i + 1
    return (v << 8) | buf[off + 8], off + 9


_INT_SIZES: Final = (0, 1, 2, 3, 4, 6, 8)


def decode_record(payload: bytes) -> list[Any] | None:
    """Decode one record (header of serial types, then values); None if malformed."""
    try:
        hsize, off = _varint(payload, 0)
        if hsize < 1 or hsize > len(payload):
            return None
        types = []
        while off < hsize:
            t, off = _varint(payload, off)
            types.append(t)
            if len(types) > 12:  # no table of the store has more columns
                return None
        if off != hsize:
            return None
        pos = hsize
        values: list[Any] = []
        for t in types:
            if t == 0:
                values.append(None)
            elif t <= 6:
                n = _INT_SIZES[t]
                values.append(int.from_bytes(payload[pos:pos + n], "big", signed=True))
                pos += n
            elif t == 7:
                values.append(struct.unpack_from(">d", payload, pos)[0])
                pos += 8
            elif t in (8, 9):
                values.append(t - 8)
            elif t in (10, 11):
                return None
            elif t % 2 == 0:
                n = (t - 12) // 2
                values.append(bytes(payload[pos:pos + n]))
                pos += n
            else:
                n = (t - 13) // 2
                values.append(payload[pos:pos + n].decode("utf-8"))
                pos += n
            if pos > len(payload):
                return None
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return values if pos == len(payload) else None


def _wal_checksum(data: bytes, s0: int, s1: int, fmt: str) -> tuple[int, int]:
    words = struct.unpack(f"{fmt}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & mask
        s1 = (s1 + words[i + 1] + s0) & mask
    return s0, s1


def wal_pages(wal: bytes) -> tuple[int, dict[int, bytes]]:
    """Page size and the newest committed image of each page in a WAL file.

    Frames count only while their salts match the header and the checksum
    chain holds, and only up to the last commit frame: a transaction that
    never committed was never accepted.
    """
    if len(wal) < 32:
        return 0, {}
    magic, _version, page_size, _ckpt = struct.unpack_from(">IIII", wal, 0)
    if magic not in _WAL_MAGICS or page_size < 512 or page_size & (page_size - 1):
        return 0, {}
    fmt = ">" if magic & 1 else "<"
    salts = wal[16:24]
    s0, s1 = _wal_checksum(wal[:24], 0, 0, fmt)
    if (s0, s1) != struct.unpack_from(">II", wal, 24):
        return page_size, {}
    committed: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}
    off = 32
    while off + 24 + page_size <= len(wal):
        pgno, commit = struct.unpack_from(">II", wal, off)
        if wal[off + 8:off + 16] != salts:
            break
        page = wal[off + 24:off + 24 + page_size]
        s0, s1 = _wal_checksum(wal[off:off + 8], s0, s1, fmt)
        s0, s1 = _wal_checksum(page, s0, s1, fmt)
        if (s0, s1) != struct.unpack_from(">II", wal, off + 16):
            break
        pending[pgno] = page
        if commit:
            committed.update(pending)
            pending.clear()
        off += 24 + page_size
    return page_size, committed


def _leaf_cells(
    page: bytes, base: int, usable: int, get_page: Callable[[int], bytes | None]
) -> Iterator[tuple[int, bytes]]:
    """(rowid, payload) of every whole cell of a table leaf page."""
    limit = min(usable, len(page))
    if base + 8 > limit or page[base] != _TABLE_LEAF:
        return
    ncells = int.from_bytes(page[base + 3:base + 5], "big")
    first = base + 8 + 2 * ncells
    if first > limit:
        return
    max_local = usable - 35
    min_local = ((usable - 12) * 32 // 255) - 23
    for i in range(ncells):
        ptr = int.from_bytes(page[base + 8 + 2 * i:base + 10 + 2 * i], "big")
        if ptr < first or ptr >= limit:
            continue
        try:
            size, off = _varint(page, ptr)
            rowid, off = _varint(page, off)
        except IndexError:
            continue
        if size <= max_local:
            local = size
        else:
            k = min_local + (size - min_local) % (usable - 4)
            local = k if k <= max_local else min_local
        if off + local > limit:
            continue  # the cell is cut
        payload = page[off:off + local]
        if local < size:
            if off + local + 4 > limit:
                continue
            nxt = int.from_bytes(page[off + local:off + local + 4], "big")
            chunks = [payload]
            remaining = size - local
            seen: set[int] = set()
            while remaining > 0 and nxt and nxt not in seen:
                seen.add(nxt)
                over = get_page(nxt)
                if over is None or len(over) < min(usable, 4 + remaining):
                    break
                take = min(remaining, usable - 4)
                chunks.append(over[4:4 + take])
                remaining -= take
                nxt = int.from_bytes(over[:4], "big")
            if remaining > 0:
                continue  # the overflow chain is broken
            payload = b"".join(chunks)
        yield rowid, payload


def _scan(
    main: bytes | mmap.mmap, wal: dict[int, bytes], page_size: int, reserved: int,
    out: Harvest, max_pages: int | None = None,
) -> Harvest:
    usable = page_size - reserved
    n_main = (len(main) + page_size - 1) // page_size

    def get_page(pgno: int) -> bytes | None:
        got = wal.get(pgno)
        if got is not None:
            return got
        if 1 <= pgno <= n_main:
            return bytes(main[(pgno - 1) * page_size:pgno * page_size])
        return None

    pgnos = sorted(set(range(1, n_main + 1)) | set(wal))
    for pgno in pgnos if max_pages is None else pgnos[:max_pages]:
        page = get_page(pgno)
        if page is None:
            continue
        base = 100 if pgno == 1 else 0
        for rowid, payload in _leaf_cells(page, base, usable, get_page):
            values = decode_record(payload)
            if values is not None:
                classify(rowid, values, out)
    return out


#: Bytes sampled per candidate page size when the header page is gone.
_GUESS_BYTES: Final = 8 << 20


def _discard(_row: Any) -> None:
    pass


def read_pages(path: Path, out: Harvest | None = None) -> Harvest:
    """Rows found by scanning the leaf pages of ``path`` and its ``-wal``."""
    out = Harvest() if out is None else out
    wal_path = Path(f"{path}-wal")
    wal_size, wal = 0, dict[int, bytes]()
    with contextlib.suppress(OSError):
        wal_size, wal = wal_pages(wal_path.read_bytes())
    try:
        f = path.open("rb")
    except OSError:
        f = None
    with contextlib.ExitStack() as stack:
        main: bytes | mmap.mmap = b""
        if f is not None:
            stack.enter_context(f)
            if os.fstat(f.fileno()).st_size:
                main = stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        header = bytes(main[:100])
        if header[:16] == _HEADER_MAGIC:
            size = int.from_bytes(header[16:18], "big")
            page_size = 65536 if size == 1 else size
            if page_size in _PAGE_SIZES:
                return _scan(main, wal, page_size, header[20], out)
        if wal_size:
            return _scan(main, wal, wal_size, 0, out)

        # The header page is gone: the page size that reads the most rows from
        # the start of the file is the file's.
        def rows_read(page_size: int) -> int:
            probe = Harvest(emit_event=_discard, emit_dead=_discard)
            _scan(main, {}, page_size, 0, probe, max_pages=_GUESS_BYTES // page_size)
            return probe.n_events + probe.n_dead

        return _scan(main, {}, max(_PAGE_SIZES, key=rows_read), 0, out)


# -- merging and writing ----------------------------------------------------------------------


def merge(into: Harvest, other: Harvest) -> None:
    """Add ``other``'s cursors, counters and sequences (the small tables) to ``into``."""
    for sink, (seq, updated) in other.cursors.items():
        into.add_cursor(sink, seq, updated)
    for name, value in other.counters.items():
        into.add_counter(name, value)
    for name, value in other.sequences.items():
        into.add_sequence(name, value)
    into.max_seq = max(into.max_seq, other.max_seq)


class _Writer:
    """Inserts salvaged rows into the new file in chunks, first reader wins."""

    CHUNK: Final = 500

    def __init__(self, dest: sqlite3.Connection) -> None:
        self.dest = dest
        self.events: list[EventRow] = []
        self.dead: list[DeadRow] = []
        self.live = False
        self.added = 0

    def event(self, row: EventRow) -> None:
        self.events.append(row)
        if len(self.events) >= self.CHUNK:
            self.flush()

    def dead_letter(self, row: DeadRow) -> None:
        self.dead.append(row)
        if len(self.dead) >= self.CHUNK:
            self.flush()

    def flush(self) -> None:
        before = self.dest.total_changes
        self.dest.executemany(
            "INSERT OR IGNORE INTO events(seq, event_id, type, priority, device, only_sink,"
            " created, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            self.events,
        )
        self.added += self.dest.total_changes - before
        if self.live:  # rows of the live table, as SQLite reads it
            self.dest.executemany("INSERT OR IGNORE INTO temp.salvage_live(seq) VALUES (?)",
                                  [(r[0],) for r in self.events])
        self.dest.executemany(
            "INSERT OR IGNORE INTO dead_letters(id, kind, sink, device, event_id, type, reason,"
            " body, context, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.dead,
        )
        self.events.clear()
        self.dead.clear()


def salvage(
    moved: Path, dest: sqlite3.Connection, *, use_recover: bool = True
) -> SalvageResult:
    """Copy every readable row of the damaged store ``moved`` into ``dest``.

    ``dest`` has the store schema and no rows. Readers run in the order
    ``sql``, ``recover``, ``pages``; a row an earlier reader already brought
    back is not written again. ``seq`` keeps its value, and the new file's
    ``sqlite_sequence`` continues above everything the old one handed out
    (its sequence, any salvaged cursor or row, the recorded
    ``high_water_seq``), so salvaged cursors stay valid (invariant 2).
    """
    writer = _Writer(dest)
    total = Harvest()
    added: dict[str, int] = {}
    found: dict[str, int] = {}
    binary = sqlite3_binary() if use_recover else None
    dest.execute("CREATE TEMP TABLE IF NOT EXISTS salvage_live(seq INTEGER PRIMARY KEY)")
    dest.execute("BEGIN IMMEDIATE")  # one commit (one fsync) for all salvaged rows
    try:
        for method in METHODS:
            if method == "recover" and binary is None:
                added[method] = found[method] = -1
                continue
            h = Harvest(emit_event=writer.event, emit_dead=writer.dead_letter)
            writer.live, writer.added = method == "sql", 0
            try:
                if method == "sql":
                    _read_file_sql(moved, h)
                elif method == "pages":
                    read_pages(moved, h)
                else:
                    assert binary is not None
                    read_recover(moved, binary, h)
            except (OSError, ValueError, IndexError, struct.error) as err:
                log.warning("store_salvage_reader_failed", path=str(moved), reader=method,
                            error=str(err))
            writer.flush()
            added[method], found[method] = writer.added, h.n_events
            merge(total, h)
        # Pages keep copies of rows after they were deleted. A row at or below
        # every cursor had been delivered everywhere and was due for deletion:
        # only the live table (the SQL read path) may bring such a row back.
        floor = min((c[0] for c in total.cursors.values()), default=0)
        dest.execute(
            "DELETE FROM events WHERE seq <= ? AND seq NOT IN (SELECT seq FROM temp.salvage_live)",
            (floor,),
        )
        dest.executemany(
            "INSERT OR REPLACE INTO cursors(sink, seq, updated) VALUES (?, ?, ?)",
            [(s, c[0], c[1]) for s, c in total.cursors.items()],
        )
        dest.executemany(
            "INSERT OR REPLACE INTO counters(name, value) VALUES (?, ?)",
            list(total.counters.items()),
        )
        high = max(
            total.sequences.get("events", 0),
            max((c[0] for c in total.cursors.values()), default=0),
            total.max_seq,
            total.counters.get("high_water_seq", 0),
        )
        raise_sequence(dest, "events", high)
        raise_sequence(dest, "dead_letters", total.sequences.get("dead_letters", 0))
        _copy_operator_tables(moved, dest)
        events = int(dest.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        dead = int(dest.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
    except BaseException:
        if dest.in_transaction:
            dest.execute("ROLLBACK")
        raise
    dest.execute("COMMIT")
    dest.execute("DROP TABLE temp.salvage_live")
    best = max(METHODS, key=lambda m: (added[m], -METHODS.index(m)))
    return SalvageResult(
        events=events,
        dead_letters=dead,
        method=best if added[best] > 0 else "none",
        added=added,
        found=found,
        high_seq=high,
    )


#: The operator tables (schema 2), the recognizer notes (schema 3) and their columns,
#: copied as SQLite still reads them.
_OPERATOR_TABLES: Final = {
    "notes": "device, key, value, updated",
    "audit": "id, at, who, via, action, count, ids, filter",
    "tallies": "day, type, sink, name, n",
    "discarded": "id, kind, sink, device, event_id, type, reason, body, context, created,"
                 " discarded_at, audit_id",
}


def _copy_operator_tables(moved: Path, dest: sqlite3.Connection) -> None:
    """Copy the audit trail, the tallies, the discard archive and the notes, as far as SQLite can
    still read them (they are not rebuilt from pages: a table whose pages are damaged
    stays in the moved-aside file)."""
    try:
        src = sqlite3.connect(f"file:{moved}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        for table, columns in _OPERATOR_TABLES.items():
            marks = ",".join("?" * len(columns.split(",")))
            try:
                cur = src.execute(f"SELECT {columns} FROM {table}")
                while rows := cur.fetchmany(500):
                    dest.executemany(
                        f"INSERT OR IGNORE INTO {table}({columns}) VALUES ({marks})", rows)
            except sqlite3.Error as err:
                if "no such table" in str(err):
                    continue  # a file of an older schema never had it
                log.warning("store_salvage_table_lost", path=str(moved), table=table,
                            error=str(err))
        with contextlib.suppress(sqlite3.Error):
            row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
            raise_sequence(dest, "audit", int(row[0]) if row else 0)
    finally:
        src.close()


def raise_sequence(conn: sqlite3.Connection, table: str, value: int) -> None:
    """Make the next AUTOINCREMENT id of ``table`` larger than ``value``."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    if row is None:
        if value > 0:
            conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, value))
    elif int(row[0]) < value:
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (value, table))
