"""Focused tests of the SQLite store-and-forward buffer (``buffer.store``).

The invariants themselves are listed in the module docstring of
``buffer/store.py``; ``tests/test_store_model.py`` holds them against a model.
These tests pin down the individual behaviours with hand-picked cases.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import structlog
from waiting import ManualClock as FakeClock
from waiting import wait_until

from buffer.service import StoreService
from buffer.store import (
    ROW_OVERHEAD,
    SCHEMA_VERSION,
    OpenReport,
    Store,
    StoreDiskFull,
    StoreError,
)
from gateway.core.events import Event
from gateway.core.records import IngestDeadLetter, RecognizerNote, SinkDeadLetter

ROW = 500  #: bytes every ``sized`` event costs in the store (body + ROW_OVERHEAD)
REPO = Path(__file__).resolve().parent.parent


def ev(key: int | str, type_: str = "pick", *, pad: int = 0) -> Event:
    return Event.create(
        site="DC-TEST",
        device="sorter-1",
        type=type_,
        source_key=str(key),
        occurred_at=1_790_000_000.0,
        observed_at=1_790_000_000.5,
        data={"key": str(key), "pad": "x" * pad},
    )


def sized(key: int | str, type_: str = "pick", nbytes: int = ROW) -> Event:
    """An event whose stored size (body + ROW_OVERHEAD) is exactly ``nbytes``."""
    base = len(ev(key, type_).body) + ROW_OVERHEAD
    event = ev(key, type_, pad=nbytes - base)
    assert len(event.body) + ROW_OVERHEAD == nbytes
    return event


def stored_ids(store: Store) -> list[str]:
    return [r[0] for r in store._conn.execute("SELECT event_id FROM events ORDER BY seq")]


def stored_seqs(store: Store) -> list[int]:
    return [r[0] for r in store._conn.execute("SELECT seq FROM events ORDER BY seq")]


def corrupt_files(path: Path) -> list[Path]:
    """Moved-aside database files (not their -wal/-shm companions)."""
    return sorted(
        p
        for p in path.parent.glob(f"{path.name}.corrupt-*")
        if not p.name.endswith(("-wal", "-shm"))
    )


def checkpoint_and_close(store: Store) -> None:
    """Fold the WAL into the main file and close, leaving a single file behind."""
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(str(store.path) + suffix).unlink(missing_ok=True)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "buffer.db"


# -- seq, group commits, duplicates ---------------------------------------------------


def test_seq_keeps_growing_after_table_emptied_and_reopened(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms"])
    store.append([[ev(i)] for i in range(10)])
    rows, scanned = store.read("wms", 0, 100)
    assert [r.seq for r in rows] == list(range(1, 11))
    assert store.advance("wms", scanned) == 10
    assert stored_seqs(store) == []  # the table is empty now
    store.close()

    store = Store(db)
    assert store.cursors() == {"wms": 10}
    store.append([[ev("after-reopen")]])
    rows, scanned = store.read("wms", store.cursors()["wms"], 100)
    # Without AUTOINCREMENT the row would get seq 1 and the reader would never see it.
    assert [(r.seq, r.event_id) for r in rows] == [(11, ev("after-reopen").event_id)]
    assert scanned == 11
    store.close()


def test_group_append_reports_units_and_duplicates(db: Path) -> None:
    store = Store(db)
    assert store.append([[ev(1)]]).inserted == 1
    bad = IngestDeadLetter(device="scanner-1", reason="unparseable", payload=b"\x00garbage")
    result = store.append([[ev(2), ev(3)], [ev(1)], [ev(4), ev(2)], [bad]])
    assert result.units_committed == 4
    assert result.inserted == 3  # 2, 3, 4
    assert result.duplicates == 2  # 1 was stored before, 2 came twice in this group
    assert result.dead_letters == 1
    assert not result.full
    # Stored once each, in append order (a skipped duplicate may leave a seq gap).
    assert stored_ids(store) == [ev(i).event_id for i in (1, 2, 3, 4)]
    counters = store.counters()
    assert counters["duplicate_events"] == 2
    assert counters["ingest_dead_letters"] == 1
    assert store.append([]).units_committed == 0
    store.close()


# -- capacity -------------------------------------------------------------------------


def test_capacity_evicts_oldest_telemetry_never_business_and_counts(db: Path) -> None:
    store = Store(db, max_bytes=10 * ROW)
    store.register_sinks(["wms"])  # nothing delivered: every row is still owed to wms
    t = [sized(f"t{i}", "telemetry") for i in range(8)]
    b = [sized(f"b{i}", "pick") for i in range(10)]
    x = sized("x0", "exception")
    first = [t[0], t[1], b[0], t[2], t[3], b[1], t[4], t[5], b[2], x]
    result = store.append([[e] for e in first])
    assert (result.units_committed, result.evicted_telemetry, result.full) == (10, 0, False)
    assert store.used_bytes == 10 * ROW

    result = store.append([[b[3]]])
    assert (result.units_committed, result.evicted_telemetry, result.full) == (1, 1, False)
    result = store.append([[b[4], b[5]]])
    assert (result.units_committed, result.evicted_telemetry) == (1, 2)
    telemetry = {e.event_id for e in t}
    assert [i for i in stored_ids(store) if i in telemetry] == [e.event_id for e in t[3:6]]

    # Three more units evict the last three telemetry rows; the fourth cannot fit
    # because only business and exception rows remain, and none of them may go.
    result = store.append([[b[6]], [b[7]], [b[8]], [b[9]]])
    assert result.units_committed == 3
    assert result.evicted_telemetry == 3
    assert result.full
    precious = [b[0], b[1], b[2], x, *b[3:9]]
    assert sorted(stored_ids(store)) == sorted(e.event_id for e in precious)
    assert store.used_bytes == 10 * ROW

    # Telemetry that does not fit is dropped and counted, never blocking.
    result = store.append([[t[6]]])
    assert (result.units_committed, result.dropped_telemetry, result.full) == (1, 1, False)
    # A unit of business and telemetry is all-or-nothing once telemetry is gone.
    result = store.append([[b[9], t[7]]])
    assert (result.units_committed, result.dropped_telemetry, result.full) == (0, 0, True)
    assert sorted(stored_ids(store)) == sorted(e.event_id for e in precious)
    assert store.counters()["evicted_telemetry"] == 6
    assert store.counters()["dropped_telemetry"] == 1
    store.close()

    store = Store(db, max_bytes=10 * ROW)
    assert store.counters()["evicted_telemetry"] == 6
    assert store.counters()["dropped_telemetry"] == 1
    assert store.used_bytes == 10 * ROW
    assert sorted(stored_ids(store)) == sorted(e.event_id for e in precious)
    store.close()


def test_full_commits_only_the_prefix_that_fits_then_the_rest_after_delivery(db: Path) -> None:
    store = Store(db, max_bytes=10 * ROW)
    store.register_sinks(["wms"])
    b = [sized(f"b{i}") for i in range(12)]
    units = [b[0:4], b[4:8], b[8:11], b[11:12]]
    result = store.append(units)
    # The third unit does not fit; the fourth would, but units keep their order.
    assert result.units_committed == 2
    assert result.full
    assert stored_ids(store) == [e.event_id for e in b[0:8]]
    assert store.used_bytes == 8 * ROW

    rows, scanned = store.read("wms", 0, 100)
    assert len(rows) == 8
    assert store.advance("wms", scanned) == 8
    assert store.used_bytes == 0

    result = store.append(units[result.units_committed :])
    assert (result.units_committed, result.inserted, result.full) == (2, 4, False)
    assert stored_ids(store) == [e.event_id for e in b[8:12]]
    assert stored_seqs(store) == [9, 10, 11, 12]
    store.close()


def test_delivered_rows_are_freed_before_any_telemetry_is_evicted(db: Path) -> None:
    clock = FakeClock(1_000.0)
    store = Store(db, max_bytes=5 * ROW, retention_s=3_600, clock=clock)
    store.register_sinks(["wms"])
    store.append([[sized(f"t{i}", "telemetry")] for i in range(5)])
    _rows, scanned = store.read("wms", 0, 100)
    assert store.advance("wms", scanned) == 0  # kept for the retention window
    result = store.append([[sized("b0")]])
    assert (result.units_committed, result.evicted_telemetry, result.full) == (1, 0, False)
    assert stored_ids(store) == [sized("b0").event_id]
    assert "evicted_telemetry" not in store.counters()
    store.close()


def test_used_bytes_stays_exact_when_an_append_evicts_its_own_telemetry(db: Path) -> None:
    store = Store(db, max_bytes=5 * ROW)
    units = [[sized("t0", "telemetry")], [sized("t1", "telemetry")]]
    units += [[sized(f"b{i}")] for i in range(4)]
    result = store.append(units)
    # The last unit only fits by dropping t0, queued earlier in this same append.
    assert (result.units_committed, result.evicted_telemetry, result.full) == (6, 1, False)
    assert sized("t0", "telemetry").event_id not in stored_ids(store)
    assert store.used_bytes == 5 * ROW
    assert store.used_bytes == store._measure_used()
    # So the next business unit is refused instead of overfilling the store.
    assert store.append([[sized("b9")]]).full is False  # evicts t1
    assert store.append([[sized("b10")]]).full is True
    assert store._measure_used() <= store.max_bytes
    store.close()


def test_disk_full_reports_full_and_keeps_the_store_usable(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms"])
    store.append([[ev(i)] for i in range(10)])
    used = store.used_bytes
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # the disk fills up
    result = store.append([[ev(f"big{i}", pad=3000)] for i in range(50)])
    assert result.full
    assert result.units_committed == 0
    assert len(stored_ids(store)) == 10  # nothing half-committed
    assert store.used_bytes == used
    store._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    result = store.append([[ev("after")]])
    assert (result.units_committed, result.full) == (1, False)
    assert stored_seqs(store)[-1] == 11
    store.close()


# -- cursors, sinks and retention -------------------------------------------------


def test_retention_keeps_delivered_rows_then_prunes(db: Path) -> None:
    clock = FakeClock(1_000.0)
    store = Store(db, retention_s=60, clock=clock)
    store.register_sinks(["wms"])
    store.append([[ev(i)] for i in range(5)])
    clock.now = 1_030.0
    store.append([[ev("late")]])
    rows, scanned = store.read("wms", 0, 100)
    assert scanned == 6
    assert store.advance("wms", scanned) == 0
    assert len(stored_ids(store)) == 6
    assert store.read("wms", scanned, 100) == ([], 6)  # kept, but not sent again

    # A sink added inside the window starts at the oldest stored row.
    assert store.register_sinks(["wms", "erp"]) == {"wms": 6, "erp": 0}
    rows, scanned = store.read("erp", 0, 100)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]
    store.advance("erp", scanned)

    clock.now = 1_059.0
    assert store.prune() == 0
    clock.now = 1_060.5
    assert store.prune() == 5  # the rows written at t=1000
    assert stored_seqs(store) == [6]
    clock.now = 1_090.5
    assert store.prune() == 1
    assert stored_seqs(store) == []
    store.close()


def test_new_sink_starts_at_oldest_stored_row(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms"])
    store.append([[ev(i)] for i in range(5)])
    rows, scanned = store.read("wms", 0, 2)
    assert (len(rows), scanned) == (2, 2)
    assert store.advance("wms", scanned) == 2  # rows 1 and 2 are gone
    cursors = store.register_sinks(["wms", "erp"])
    assert cursors == {"wms": 2, "erp": 2}
    rows, _ = store.read("erp", cursors["erp"], 100)
    assert [r.seq for r in rows] == [3, 4, 5]
    store.close()


def test_removed_sink_loses_its_cursor_and_stops_holding_rows(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms", "erp"])
    store.append([[ev(i)] for i in range(3)])
    assert store.advance("wms", 3) == 0  # erp still owes all three
    assert store.register_sinks(["wms"]) == {"wms": 3}
    with pytest.raises(StoreError, match="no cursor for sink 'erp'"):
        store.advance("erp", 3)
    assert store.prune() == 3
    store.close()
    store = Store(db)
    assert store.cursors() == {"wms": 3}
    store.close()


def test_advance_refuses_to_move_a_cursor_back(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms"])
    store.append([[ev(i)] for i in range(3)])
    store.advance("wms", 2)
    with pytest.raises(StoreError, match=r"may not move back \(2 -> 1\)") as info:
        store.advance("wms", 1, [SinkDeadLetter(1, ev(0).event_id, "late reject")])
    assert info.value.path == str(db)
    assert store.cursors() == {"wms": 2}
    assert store.dead_letters() == []
    store.advance("wms", 2)  # staying put is fine
    store.close()


def test_read_scanned_covers_rows_the_route_filter_skips(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms"])
    store.append([[ev(1, "telemetry")], [ev(2, "pick")], [ev(3, "telemetry")]])
    rows, scanned = store.read("wms", 0, 10, frozenset({"pick"}))
    assert ([r.seq for r in rows], scanned) == ([2], 3)
    rows, scanned = store.read("wms", 0, 10, frozenset({"pack"}))
    assert (rows, scanned) == ([], 3)  # routes nothing, still lets the cursor move
    rows, scanned = store.read("wms", 0, 1)
    assert ([r.seq for r in rows], scanned) == ([1], 1)
    store.close()


# -- dead letters -----------------------------------------------------------------


def test_sink_dead_letters_commit_in_the_cursor_transaction(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms", "erp"])
    store.append([[ev(i)] for i in range(3)])
    observer = sqlite3.connect(db)

    def observed() -> tuple[int, int]:
        n = observer.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        cur = observer.execute("SELECT seq FROM cursors WHERE sink = 'wms'").fetchone()[0]
        return n, cur

    # A failing cursor update takes the dead letters written before it down too.
    observer.execute(
        "CREATE TRIGGER stop_move BEFORE UPDATE ON cursors"
        " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    observer.commit()
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        store.advance("wms", 3, [SinkDeadLetter(2, ev(1).event_id, "422 unknown sku")])
    assert observed() == (0, 0)
    observer.execute("DROP TRIGGER stop_move")
    observer.commit()

    # While the transaction is open another connection sees neither change.
    during: list[tuple[int, int]] = []

    def trace(statement: str) -> None:
        if statement.startswith("UPDATE cursors"):
            during.append(observed())

    store._conn.set_trace_callback(trace)
    try:
        store.advance("wms", 3, [SinkDeadLetter(2, ev(1).event_id, "422 unknown sku")])
    finally:
        store._conn.set_trace_callback(None)
    assert during == [(0, 0)]
    assert observed() == (1, 3)
    observer.close()

    (dead,) = store.dead_letters()
    assert (dead.kind, dead.sink, dead.event_id, dead.type) == (
        "sink",
        "wms",
        ev(1).event_id,
        "pick",
    )
    assert (dead.reason, dead.body) == ("422 unknown sku", ev(1).body)
    assert store.counters()["sink_dead_letters"] == 1
    # The in-memory size accounting includes the dead letter's body.
    assert store.used_bytes == store._measure_used()
    store.close()


def test_replay_requeues_only_for_the_rejecting_sink(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms", "erp"])
    store.append([[ev(1)], [ev(2)]])
    rows, scanned = store.read("wms", 0, 10)
    store.advance("wms", scanned, [SinkDeadLetter(rows[0].seq, rows[0].event_id, "422")])
    (dead,) = store.dead_letters(sink="wms")
    used, dead_bytes = store.used_bytes, store.dead_letter_bytes

    assert store.replay([dead.id]) == 1
    assert store.dead_letters() == []
    assert store.counters()["replayed_dead_letters"] == 1
    # The body moved from the dead-letter budget to the events' capacity.
    assert store.used_bytes == used + dead_bytes == store._measure_used()
    assert store.dead_letter_bytes == 0 == store._measure_dead()

    rows, scanned = store.read("wms", store.cursors()["wms"], 10)
    assert [(r.seq, r.event_id, r.body) for r in rows] == [(3, ev(1).event_id, ev(1).body)]
    store.advance("wms", scanned)
    # erp had not read yet: it gets the original rows once, not the replayed copy.
    rows, scanned = store.read("erp", store.cursors()["erp"], 10)
    assert [(r.seq, r.event_id) for r in rows] == [(1, ev(1).event_id), (2, ev(2).event_id)]
    assert scanned == 3
    assert store.advance("erp", scanned) == 3
    assert stored_seqs(store) == []
    store.close()


def test_replay_refuses_ingest_dead_letters_and_changes_nothing(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms"])
    raw = IngestDeadLetter("scanner-1", "bad json", b"{not json", {"topic": "scan/1"})
    store.append([[ev(1)], [raw]])
    store.advance("wms", 1, [SinkDeadLetter(1, ev(1).event_id, "422")])
    sink_dl = store.dead_letters(kind="sink")[0]
    ingest_dl = store.dead_letters(kind="ingest")[0]
    assert (ingest_dl.device, ingest_dl.body, ingest_dl.context) == (
        "scanner-1",
        b"{not json",
        {"topic": "scan/1"},
    )

    with pytest.raises(StoreError, match=rf"\[{ingest_dl.id}\] are ingest dead letters"):
        store.replay([sink_dl.id, ingest_dl.id])
    assert len(store.dead_letters()) == 2  # the sink one was not replayed either
    assert stored_seqs(store) == []
    with pytest.raises(StoreError, match=r"no dead letter with id \[999\]"):
        store.replay([999])
    store.close()


def test_discard_deletes_dead_letters_for_good(db: Path) -> None:
    store = Store(db)
    raw = IngestDeadLetter("plc-1", "bad register map", b"\x01\x02\x03" * 100)
    store.append([[raw], [raw]])
    first, second = store.dead_letters()
    before = store.dead_letter_bytes
    assert store.discard([first.id, 12345]) == 1
    assert [d.id for d in store.dead_letters()] == [second.id]
    assert store.counters()["discarded_dead_letters"] == 1
    assert store.dead_letter_bytes == before - (300 + ROW_OVERHEAD)
    store.close()
    store = Store(db)
    assert [d.id for d in store.dead_letters()] == [second.id]
    store.close()


# -- corruption, salvage, schema --------------------------------------------------


def test_garbage_file_is_moved_aside_and_a_fresh_store_starts(db: Path) -> None:
    clock = FakeClock(1_790_000_000.0)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock.now))
    garbage = random.Random(7).randbytes(64 * 1024)
    db.write_bytes(garbage)

    store = Store(db, clock=clock)
    report = store.open_report
    assert report.corrupt
    assert report.moved_to == f"{db}.corrupt-{stamp}"
    assert report.reason
    assert report.salvaged_events == 0
    assert Path(report.moved_to).read_bytes() == garbage
    assert store.counters()["store_corruptions"] == 1
    store.register_sinks(["wms"])
    store.append([[ev(1)]])
    assert [r.event_id for r in store.read("wms", 0, 10)[0]] == [ev(1).event_id]
    store.close()

    store = Store(db, clock=clock)  # the fresh file is fine: nothing moves again
    assert store.open_report == OpenReport()
    assert stored_ids(store) == [ev(1).event_id]
    store.close()

    db.write_bytes(garbage)  # a second corruption in the same second keeps both copies
    store = Store(db, clock=clock)
    assert store.open_report.moved_to == f"{db}.corrupt-{stamp}-2"
    assert corrupt_files(db) == [Path(f"{db}.corrupt-{stamp}"), Path(f"{db}.corrupt-{stamp}-2")]
    store.close()


def test_damaged_pages_are_salvaged_around(db: Path) -> None:
    types = ["pick", "pack", "move", "exception", "telemetry"]
    store = Store(db, synchronous="NORMAL")
    store.register_sinks(["wms", "erp"])
    for chunk in range(5):
        units = [
            [ev(i, types[i % 5], pad=i % 200)] for i in range(chunk * 1000, chunk * 1000 + 1000)
        ]
        assert store.append(units).inserted == 1000
    _rows, scanned = store.read("wms", 0, 1200)
    store.advance("wms", scanned)
    assert store.cursors() == {"wms": 1200, "erp": 0}
    page = store._conn.execute("PRAGMA page_size").fetchone()[0]
    checkpoint_and_close(store)

    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek((size // page // 2) * page)
        f.write(random.Random(11).randbytes(3 * page))

    store = Store(db)
    report = store.open_report
    assert report.corrupt
    assert report.moved_to is not None
    assert Path(report.moved_to).exists()
    assert 0 < report.salvaged_events < 5000
    assert store.cursors() == {"wms": 1200, "erp": 0}

    rows, _ = store.read("erp", 0, 10_000)
    assert len(rows) == report.salvaged_events
    assert [r.seq for r in rows] == sorted({r.seq for r in rows})
    for row in rows:
        doc = json.loads(row.body)
        assert (doc["event_id"], doc["type"]) == (row.event_id, row.type)
        assert row.event_id == ev(int(doc["data"]["key"])).event_id

    # Every row still readable in the damaged file made it across (invariant 7).
    damaged = sqlite3.connect(f"file:{report.moved_to}?mode=ro", uri=True)
    readable = set()
    for seq in range(1, 5001):
        try:
            if damaged.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone():
                readable.add(seq)
        except sqlite3.DatabaseError:
            pass
    damaged.close()
    assert len(readable) < 5000
    assert {r.seq for r in rows} == readable

    store.append([[ev("after-salvage")]])
    assert stored_seqs(store)[-1] == 5001
    salvaged = len(stored_seqs(store))
    store.close()

    for _ in range(2):  # no crash loop: the salvaged store opens cleanly, twice
        store = Store(db)
        assert store.open_report == OpenReport()
        assert len(stored_seqs(store)) == salvaged
        store.close()
    assert corrupt_files(db) == [Path(report.moved_to)]


def test_salvage_keeps_seq_above_salvaged_cursors(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms"])
    store.append([[ev(i)] for i in range(100)])
    store.advance("wms", 100)  # all delivered, table empty
    root = store._conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_sequence'"
    ).fetchone()[0]
    page = store._conn.execute("PRAGMA page_size").fetchone()[0]
    checkpoint_and_close(store)
    with db.open("r+b") as f:  # the page that remembers the highest seq is lost
        f.seek((root - 1) * page)
        f.write(random.Random(3).randbytes(page))

    store = Store(db)
    assert store.open_report.corrupt
    assert store.cursors() == {"wms": 100}
    store.append([[ev("new")]])
    rows, _ = store.read("wms", 100, 10)
    assert [(r.seq, r.event_id) for r in rows] == [(101, ev("new").event_id)]
    assert store.advance("wms", 100) == 0  # the undelivered row is not pruned
    assert stored_ids(store) == [ev("new").event_id]
    store.close()


def test_newer_schema_version_is_refused(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError,
                       match=rf"schema version 99 is newer .* \({SCHEMA_VERSION}\)") as info:
        Store(db)
    assert info.value.path == str(db)
    assert corrupt_files(db) == []  # refused, not treated as corrupt
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
    conn.close()


# -- kill -9 ----------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from buffer.store import Store
    from gateway.core.events import Event

    store = Store(sys.argv[1])
    n = 0
    while True:
        units = []
        for _ in range(50):
            units.append([Event.create(site="S", device="d", type="pick", source_key=str(n),
                                       occurred_at=1.0, observed_at=1.0, data={"n": n})])
            n += 1
        store.append(units)
        print(n, flush=True)  # acknowledged: every event below n is accepted
    """
)


def test_kill_9_loses_no_accepted_event(db: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    acked = 0
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 2000:
                break
    finally:
        proc.kill()  # SIGKILL, mid-append most likely
        proc.wait()
    assert acked >= 2000
    store = Store(db)
    assert store.open_report == OpenReport()
    count, top = store._conn.execute("SELECT COUNT(*), MAX(seq) FROM events").fetchone()
    assert count >= acked
    assert count == top  # no holes
    assert count % 50 == 0  # whole group commits only
    store.close()


# -- a full disk while moving a cursor; operator changes from another process ------


def _fill_disk(store: Store) -> None:
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")


def _free_disk(store: Store) -> None:
    store._conn.execute("PRAGMA max_page_count = 1073741823")


def test_advance_on_a_full_disk_raises_and_changes_nothing(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms"])
    store.append([[ev(f"big{i}", pad=3000)] for i in range(20)])
    rows, scanned = store.read("wms", 0, 100)
    _fill_disk(store)
    dead = [SinkDeadLetter(r.seq, r.event_id, "422: bad") for r in rows]
    with pytest.raises(StoreDiskFull):
        store.advance("wms", scanned, dead)
    assert store.cursors() == {"wms": 0}
    assert store.dead_letters() == []
    _free_disk(store)
    store.advance("wms", scanned, dead)
    assert store.cursors() == {"wms": scanned}
    assert len(store.dead_letters()) == 20
    store.close()


async def test_service_retries_a_cursor_move_until_the_disk_has_room(db: Path) -> None:
    service = StoreService(lambda: Store(db))
    store = await service.open()
    await service.call(store.register_sinks, ["wms"])
    await service.call(store.append, [[ev(f"big{i}", pad=3000)] for i in range(20)])
    rows, scanned = await service.call(store.read, "wms", 0, 100)
    await service.call(_fill_disk, store)
    dead = [SinkDeadLetter(r.seq, r.event_id, "422: bad") for r in rows]
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(service.advance("wms", scanned, dead))
        # The positive signal: the first attempt met the full disk and was held.
        await wait_until(lambda: any(e["event"] == "store_disk_full" for e in logs), 10,
                         "the refused cursor move logged")
    assert not task.done(), "a full disk must hold the cursor move, not fail it"
    assert await service.call(store.cursors) == {"wms": 0}
    await service.call(_free_disk, store)
    await asyncio.wait_for(task, 5)
    assert await service.call(store.cursors) == {"wms": scanned}
    await service.close()


def test_daemon_sees_space_freed_by_an_operator_command(db: Path) -> None:
    daemon = Store(db)
    daemon.register_sinks(["wms"])
    daemon.append([[ev(f"big{i}", pad=3000)] for i in range(5)])
    rows, scanned = daemon.read("wms", 0, 100)
    daemon.advance("wms", scanned, [SinkDeadLetter(r.seq, r.event_id, "bad") for r in rows])
    assert daemon.refresh_if_changed_elsewhere() is False  # first look: baseline
    before = daemon.dead_letter_bytes
    operator = Store(db, recover=False)  # `warehouse-gateway store discard` while it runs
    operator.discard([d.id for d in operator.dead_letters()])
    operator.close()
    assert daemon.refresh_if_changed_elsewhere() is True
    assert daemon.dead_letter_bytes < before - 5 * 3000
    assert daemon.refresh_if_changed_elsewhere() is False  # its own commits do not count
    daemon.close()


# -- recognizer notes ---------------------------------------------------------------------


def test_recognizer_notes_commit_with_their_unit_and_survive_reopen(db: Path) -> None:
    store = Store(db)
    note = RecognizerNote("amr-fleet", "vehicle:M/AMR-1", b'{"carried": 1}')
    store.append([[ev(1), note], [RecognizerNote("amr-fleet", "vehicle:M/AMR-2", b"two")]])
    used = store.used_bytes
    assert used == len(ev(1).body) + ROW_OVERHEAD  # notes do not count against max_bytes
    store.close()
    store = Store(db)
    assert store.notes("amr-fleet") == {"vehicle:M/AMR-1": b'{"carried": 1}',
                                        "vehicle:M/AMR-2": b"two"}
    assert store.notes("other") == {}
    # In one batch the last note of a key wins; None deletes.
    store.append([[RecognizerNote("amr-fleet", "vehicle:M/AMR-1", b"newer")],
                  [RecognizerNote("amr-fleet", "vehicle:M/AMR-2", b"x")],
                  [RecognizerNote("amr-fleet", "vehicle:M/AMR-2", None)]])
    assert store.notes("amr-fleet") == {"vehicle:M/AMR-1": b"newer"}
    assert stored_ids(store) == [ev(1).event_id]
    store.close()


def test_recognizer_notes_of_a_refused_unit_are_not_written(db: Path) -> None:
    store = Store(db, max_bytes=ROW)
    store.register_sinks(["wms"])
    result = store.append([[sized(1)], [sized(2), RecognizerNote("d", "k", b"v")]])
    assert result.units_committed == 1 and result.full
    assert store.notes("d") == {}
    store.close()
