"""Salvage of damaged store files (``buffer.salvage``): what can be read comes back.

Every test damages a real store file the way disks and operators do
(truncation, garbage pages, a lost header page, a main file gone with its
WAL intact), reopens it with ``Store`` and compares what came back with
what was stored, column by column.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import structlog
from waiting import ManualClock as FakeClock

from buffer import salvage as salvage_mod
from buffer.store import Store
from gateway.core.events import Event

COLUMNS = "seq, event_id, type, priority, device, only_sink, created, body"
TYPES = ["pick", "pack", "move", "exception", "telemetry"]


def ev(key: int, *, pad: int = 0) -> Event:
    return Event.create(
        site="DC-TEST",
        device=f"scanner-{key % 7}",
        type=TYPES[key % 5],
        source_key=str(key),
        occurred_at=1_790_000_000.0 + key,
        observed_at=1_790_000_000.5 + key,
        data={"key": key, "pad": "x" * pad},
    )


def pad_of(key: int) -> int:
    # Every 97th event is larger than a page, so overflow chains are exercised.
    return 9000 if key % 97 == 0 else key % 300


def fill(db: Path, n: int, *, sinks: tuple[str, ...] = ("wms",), **kw: Any) -> Store:
    store = Store(db, synchronous="OFF", clock=FakeClock(1_790_000_000.25), **kw)
    store.register_sinks(list(sinks))
    for start in range(0, n, 1000):
        units = [[ev(i, pad=pad_of(i))] for i in range(start, min(n, start + 1000))]
        assert store.append(units).inserted == len(units)
    return store


def rows_of(store: Store) -> dict[int, tuple[Any, ...]]:
    return {r[0]: tuple(r) for r in store._conn.execute(f"SELECT {COLUMNS} FROM events")}


def checkpoint_and_close(store: Store) -> None:
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{store.path}{suffix}").unlink(missing_ok=True)


def page_size(store: Store) -> int:
    return int(store._conn.execute("PRAGMA page_size").fetchone()[0])


def assert_identical(salvaged: dict[int, tuple[Any, ...]],
                     original: dict[int, tuple[Any, ...]]) -> None:
    """Every salvaged row is exactly a stored row (no invented or altered rows)."""
    wrong = [seq for seq, row in salvaged.items() if original.get(seq) != row]
    assert wrong == [], f"{len(wrong)} salvaged rows differ from what was stored: {wrong[:5]}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "buffer.db"


def test_truncated_to_half_salvages_the_intact_rows(db: Path) -> None:
    store = fill(db, 20_000)
    original = rows_of(store)
    assert len(original) == 20_000
    checkpoint_and_close(store)
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)

    with structlog.testing.capture_logs() as logs:
        store = Store(db)
    report = store.open_report
    assert report.corrupt
    salvaged = rows_of(store)
    assert len(salvaged) == report.salvaged_events
    assert len(salvaged) >= 0.40 * 20_000, dict(report.salvaged_by)
    assert_identical(salvaged, original)
    assert any(original[s][7] != b"" and len(original[s][7]) > 9000 for s in salvaged), (
        "no row with an overflow chain came back"
    )
    by = dict(report.salvaged_by)
    assert report.salvage_method == "pages"
    assert by["sql"] < by["pages"] == len(salvaged)
    (line,) = [e for e in logs if e["event"] == "store_salvaged"]
    assert line["salvaged_events"] == len(salvaged)
    assert line["method"] == "pages"
    assert line["salvaged_by"]["pages"] == len(salvaged)
    assert store.stats()["open_report"]["salvage_method"] == "pages"
    assert store.stats()["open_report"]["salvaged_by"]["pages"] == len(salvaged)
    assert store.cursors() == {"wms": 0}
    # seq continues above everything the old file handed out (invariant 2).
    store.append([[ev(99_999)]])
    assert max(rows_of(store)) == 20_001
    store.close()


def test_random_page_garbage_and_a_lost_root_page(db: Path) -> None:
    store = fill(db, 5000, sinks=("wms", "erp"))
    original = rows_of(store)
    _rows, scanned = store.read("wms", 0, 200)
    store.advance("wms", scanned)
    assert store.cursors() == {"wms": 200, "erp": 0}
    size = page_size(store)
    root = store._conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'events'"
    ).fetchone()[0]
    checkpoint_and_close(store)

    pages = db.stat().st_size // size
    rng = random.Random(7)
    hit = {root} | set(rng.sample(range(2, pages + 1), 20))
    with db.open("r+b") as f:
        for pgno in sorted(hit):  # the events root page: SQL cannot walk the table at all
            f.seek((pgno - 1) * size)
            f.write(rng.randbytes(size))

    store = Store(db)
    report = store.open_report
    assert report.corrupt
    salvaged = rows_of(store)
    assert_identical(salvaged, original)
    found = dict(report.salvaged_by)
    assert found["sql"] == 0
    # 21 of the pages are lost; everything on the others comes back.
    assert len(salvaged) >= 5000 - 21 * 40, found
    assert store.cursors() == {"wms": 200, "erp": 0}
    store.close()


def test_rows_deleted_before_the_damage_stay_deleted(db: Path) -> None:
    """Freed pages still hold delivered rows; salvage must not bring them back."""
    store = fill(db, 3000)
    original = rows_of(store)
    store.advance("wms", 1500)  # delivered everywhere: deleted
    root = store._conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'events'"
    ).fetchone()[0]
    size = page_size(store)
    checkpoint_and_close(store)
    with db.open("r+b") as f:
        f.seek((root - 1) * size)
        f.write(bytes(size))

    store = Store(db)
    salvaged = rows_of(store)
    assert min(salvaged) > 1500
    assert len(salvaged) >= 1400
    assert_identical(salvaged, original)
    store.close()


def test_header_page_destroyed_with_unusual_page_size(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA page_size = 8192")
    conn.execute("VACUUM")
    conn.close()
    store = fill(db, 3000, sinks=("wms", "erp"))
    store.advance("wms", 10)
    store._bump(store._conn, {"evicted_telemetry": 42})
    assert page_size(store) == 8192
    original = rows_of(store)
    checkpoint_and_close(store)
    with db.open("r+b") as f:
        f.write(bytes(8192))  # header and schema: gone

    store = Store(db)
    report = store.open_report
    assert report.corrupt
    assert "not a database" in (report.reason or "")
    salvaged = rows_of(store)
    assert_identical(salvaged, original)
    # Page 1 held only the schema: every row comes back.
    assert len(salvaged) == 3000
    assert store.cursors() == {"wms": 10, "erp": 0}
    assert store.counters()["evicted_telemetry"] == 42
    store.append([[ev(99_999)]])
    assert max(rows_of(store)) == 3001
    store.close()


def crash_copy(db: Path, dest: Path) -> Path:
    """Copy a live store's files as a kill -9 leaves them (main file and WAL)."""
    dest.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(f"{db}{suffix}", dest / f"{db.name}{suffix}")
    return dest / db.name


def test_page_scan_reads_committed_wal_frames(db: Path, tmp_path: Path) -> None:
    store = Store(db, synchronous="OFF", clock=FakeClock(1_790_000_000.25))
    store._conn.execute("PRAGMA wal_autocheckpoint = 0")  # everything stays in the WAL
    store.register_sinks(["wms"])
    store.append([[ev(i, pad=pad_of(i))] for i in range(2000)])
    original = rows_of(store)
    copy = crash_copy(db, tmp_path / "crashed")
    store.close()
    copy.write_bytes(random.Random(5).randbytes(copy.stat().st_size))  # main file: garbage
    with Path(f"{copy}-wal").open("ab") as f:  # a torn frame after the last commit
        f.write(random.Random(6).randbytes(4096 + 24))

    got = salvage_mod.read_pages(copy)
    assert got.events == original
    assert got.cursors == {"wms": (0, 1_790_000_000.25)}


def test_rows_only_in_the_wal_come_back_from_a_damaged_file(db: Path, tmp_path: Path) -> None:
    store = fill(db, 4000)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store._conn.execute("PRAGMA wal_autocheckpoint = 0")
    store.append([[ev(i, pad=pad_of(i))] for i in range(4000, 5000)])  # WAL only
    original = rows_of(store)
    copy = crash_copy(db, tmp_path / "crashed")
    store.close()
    with copy.open("r+b") as f:
        f.truncate(copy.stat().st_size // 2)

    store = Store(copy)
    report = store.open_report
    assert report.corrupt
    salvaged = rows_of(store)
    assert_identical(salvaged, original)
    assert set(range(4001, 5001)) <= set(salvaged)
    assert len(salvaged) >= 0.4 * 5000, dict(report.salvaged_by)
    store.append([[ev(99_999)]])
    assert max(rows_of(store)) == 5001
    store.close()


def _recover_works(binary: str, tmp_path: Path) -> str | None:
    """None when ``binary`` can ``.recover`` an intact file, else why not."""
    probe = tmp_path / "probe.db"
    conn = sqlite3.connect(probe)
    conn.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")
    conn.execute("INSERT INTO t(b) VALUES ('probe-row')")
    conn.commit()
    conn.close()
    proc = subprocess.run([binary, str(probe), ".recover"], capture_output=True, timeout=30,
                          check=False)
    if proc.returncode == 0 and b"probe-row" in proc.stdout:
        return None
    return proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"


def test_recover_shell_salvages_a_damaged_file(db: Path, tmp_path: Path) -> None:
    binary = salvage_mod.sqlite3_binary()
    if binary is None:
        pytest.skip("the sqlite3 shell is not installed (Debian package sqlite3)")
    why = _recover_works(binary, tmp_path)
    if why is not None:
        pytest.skip(f"{binary} cannot .recover even an intact file ({why}): this build lacks "
                    "the sqlite_dbpage table (SQLITE_ENABLE_DBPAGE_VTAB)")
    store = fill(db, 3000)
    original = rows_of(store)
    size = page_size(store)
    checkpoint_and_close(store)
    with db.open("r+b") as f:
        f.seek(size * 10)
        f.write(random.Random(9).randbytes(size * 3))
    got = salvage_mod.read_recover(db, binary)
    assert len(got.events) >= 2500
    wrong = [s for s, row in got.events.items() if original.get(s) != row]
    assert wrong == []
    with structlog.testing.capture_logs() as logs:
        store = Store(db)
    (line,) = [e for e in logs if e["event"] == "store_salvaged"]
    assert line["found"]["recover"] == len(got.events)
    assert_identical(rows_of(store), original)
    store.close()


def test_salvage_goes_on_whatever_the_recover_shell_does(db: Path, tmp_path: Path) -> None:
    """A missing or broken ``sqlite3`` shell costs its reader only."""
    store = fill(db, 1000)
    original = rows_of(store)
    checkpoint_and_close(store)
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)
    with structlog.testing.capture_logs() as logs:
        store = Store(db)
    found = dict(store.open_report.salvaged_by)
    salvaged = rows_of(store)
    assert_identical(salvaged, original)
    assert len(salvaged) >= 400
    binary = salvage_mod.sqlite3_binary()
    failed = [e for e in logs if e["event"] == "store_salvage_recover_failed"]
    if binary is None:
        assert found["recover"] == -1
        assert failed == []
    elif _recover_works(binary, tmp_path) is not None:
        assert found["recover"] == 0
        assert failed and failed[0]["binary"] == binary
    else:
        (line,) = [e for e in logs if e["event"] == "store_salvaged"]
        assert line["found"]["recover"] > 0
    store.close()


def test_record_decoder_rejects_cut_and_malformed_records() -> None:
    conn = sqlite3.connect(":memory:")
    body = ev(1).body
    # Build a real record with SQLite itself and read it back raw.
    conn.execute("CREATE TABLE t(a, b, c, d)")
    conn.execute("INSERT INTO t VALUES (NULL, 'text', 12345678901, ?)", (body,))
    conn.execute("INSERT INTO t VALUES (1.5, -1, 0, 1)")
    record = _raw_records(conn)
    values = salvage_mod.decode_record(record[0])
    assert values == [None, "text", 12345678901, body]
    assert salvage_mod.decode_record(record[1]) == [1.5, -1, 0, 1]
    assert salvage_mod.decode_record(record[0][:-1]) is None  # cut
    assert salvage_mod.decode_record(b"\x05\x0a\x0b\x0c\x0d") is None  # reserved types
    assert salvage_mod.decode_record(b"") is None
    conn.close()


def _raw_records(conn: sqlite3.Connection) -> list[bytes]:
    """Record payloads of table ``t`` via the page scanner's own cell reader."""
    conn.commit()
    data = conn.serialize()
    size = int.from_bytes(data[16:18], "big")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 't'").fetchone()[0]
    page = data[(root - 1) * size:root * size]
    cells = list(salvage_mod._leaf_cells(page, 0, size, lambda _n: None))
    return [payload for _rowid, payload in cells]
