"""A store file that lost its ``-wal`` must not silently rewind (``buffer.highwater``).

Store level: commits in the WAL, the files copied as a kill -9 leaves them,
the ``-wal`` deleted, reopened. Process level: a real gateway (Mosquitto,
scanner simulator, WMS simulator) SIGKILLed, its ``-wal`` deleted, restarted.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import structlog
from e2e import alert_messages
from waiting import ManualClock as FakeClock

from buffer.highwater import REWIND_SEQ_MARGIN, sidecar_path
from buffer.store import OpenReport, Store
from gateway.core.events import Event
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.wms import WmsSimulator
from tests.e2e import connect_fleet, publish, site, start, wait_until


def ev(key: int) -> Event:
    return Event.create(
        site="DC-TEST", device="sorter-1", type="pick", source_key=str(key),
        occurred_at=1_790_000_000.0, observed_at=1_790_000_000.5, data={"key": key},
    )


def top(store: Store) -> int:
    return Store._top(store._conn)


def crash_copy(db: Path, dest: Path) -> Path:
    """The store's files as a kill -9 leaves them: main file, WAL, shm, sidecar."""
    dest.mkdir()
    for suffix in ("", "-wal", "-shm", ".seq"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            shutil.copy(src, dest / f"{db.name}{suffix}")
    return dest / db.name


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "buffer.db"


def test_deleted_wal_is_detected_and_seq_resumes_above_the_mark(
    db: Path, tmp_path: Path
) -> None:
    clock = FakeClock(1_790_000_000.0)
    store = Store(db, synchronous="NORMAL", clock=clock)
    store._conn.execute("PRAGMA wal_autocheckpoint = 0")  # only the checkpoints below
    store.register_sinks(["wms"])
    for batch in range(200):
        store.append([[ev(batch * 100 + i)] for i in range(100)])
        clock.now += 0.1
        if batch == 157:
            store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            checkpointed = top(store)
    assert (checkpointed, top(store)) == (15_800, 20_000)
    mark = int(sidecar_path(db).read_text())
    assert 19_000 <= mark <= 20_000  # written at most once a second, from commits

    copy = crash_copy(db, tmp_path / "crashed")
    store.close()
    Path(f"{copy}-wal").unlink()

    # An operator command sees the rewind but leaves the repair (and the alert) to the daemon.
    peek = Store(copy, clock=clock, recover=False)
    assert peek.open_report.rewound
    assert (peek.open_report.opened_at_seq, peek.open_report.resumes_at_seq) == (15_800, None)
    peek.close()
    assert int(sidecar_path(copy).read_text()) == mark

    with structlog.testing.capture_logs() as logs:
        store = Store(copy, clock=clock)
    report = store.open_report
    assert report.rewound
    assert not report.corrupt
    assert (report.high_water_seq, report.opened_at_seq) == (mark, 15_800)
    assert report.resumes_at_seq == mark + REWIND_SEQ_MARGIN + 1
    (line,) = [e for e in logs if e["event"] == "store_rewound"]
    assert line["log_level"] == "error"
    assert (line["high_water_seq"], line["opened_at_seq"]) == (mark, 15_800)
    assert line["missing_seqs"] == mark - 15_800
    stats = store.stats()["open_report"]
    assert (stats["rewound"], stats["high_water_seq"], stats["opened_at_seq"]) == (
        True, mark, 15_800)
    assert store.counters()["store_rewinds"] == 1

    store.append([[ev(10**6)]])
    rows, _ = store.read("wms", 0, 100_000)
    assert rows[-1].seq == mark + REWIND_SEQ_MARGIN + 1
    assert rows[-1].seq > 20_000  # no seq upstream may have seen is reused
    store.close()

    # The repair is durable: the next open is clean and reports nothing.
    store = Store(copy, clock=clock)
    assert store.open_report == OpenReport()
    assert store.counters()["store_rewinds"] == 1
    assert top(store) == mark + REWIND_SEQ_MARGIN + 1
    store.close()


def test_clean_restarts_and_crashes_with_the_wal_are_not_rewinds(
    db: Path, tmp_path: Path
) -> None:
    clock = FakeClock(1_790_000_000.0)
    store = Store(db, clock=clock)
    store.register_sinks(["wms"])
    for batch in range(30):
        store.append([[ev(batch * 10 + i)] for i in range(10)])
        clock.now += 0.5
    copy = crash_copy(db, tmp_path / "crashed")  # a kill -9 with every file in place
    store.close()
    assert sidecar_path(db).read_text() == "300\n"  # close writes the exact mark

    for path in (db, copy):
        store = Store(path, clock=clock)
        assert store.open_report == OpenReport()
        assert top(store) == 300
        assert store.counters().get("store_rewinds") is None
        store.close()


def test_lost_wal_is_detected_from_the_shm_when_the_mark_lags(db: Path, tmp_path: Path) -> None:
    """The last second of commits lost with the WAL: the mark cannot show it, the -shm does."""
    clock = FakeClock(1_790_000_000.0)  # never moves: the mark stays at the first commit
    store = Store(db, synchronous="NORMAL", clock=clock)
    store._conn.execute("PRAGMA wal_autocheckpoint = 0")
    store.register_sinks(["wms"])
    store.append([[ev(i)] for i in range(100)])
    store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the main file: seq 100
    store.append([[ev(i)] for i in range(100, 150)])  # only in the WAL
    assert not sidecar_path(db).exists()  # the clock has not moved: no mark written yet
    copy = crash_copy(db, tmp_path / "crashed")
    store.close()
    Path(f"{copy}-wal").unlink()

    with structlog.testing.capture_logs() as logs:
        store = Store(copy, clock=clock)
    report = store.open_report
    assert report.rewound
    assert (report.opened_at_seq, report.high_water_seq) == (100, 100)
    assert report.wal_frames_lost > 0
    assert report.resumes_at_seq == 100 + REWIND_SEQ_MARGIN + 1
    (line,) = [e for e in logs if e["event"] == "store_rewound"]
    assert line["wal_frames_lost"] == report.wal_frames_lost
    store.append([[ev(10**6)]])
    assert top(store) == 100 + REWIND_SEQ_MARGIN + 1
    store.close()


def test_deleting_a_fully_checkpointed_wal_loses_nothing_and_is_no_rewind(
    db: Path, tmp_path: Path
) -> None:
    store = Store(db, clock=FakeClock(1_790_000_000.0))
    store._conn.execute("PRAGMA wal_autocheckpoint = 0")
    store.append([[ev(i)] for i in range(100)])
    store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    copy = crash_copy(db, tmp_path / "crashed")
    store.close()
    Path(f"{copy}-wal").unlink()
    store = Store(copy)
    assert store.open_report == OpenReport()
    assert top(store) == 100
    store.close()


def test_sidecar_is_written_at_most_once_per_interval(db: Path) -> None:
    clock = FakeClock(1_790_000_000.0)
    store = Store(db, clock=clock)
    store.append([[ev(0)]])
    assert sidecar_path(db).read_text() == "1\n"  # the first commit writes it
    for i in range(1, 50):
        store.append([[ev(i)]])
        clock.now += 0.01
    assert sidecar_path(db).read_text() == "1\n"  # 0.49 s later: not yet
    clock.now += 0.6
    store.append([[ev(50)]])
    assert sidecar_path(db).read_text() == "51\n"
    store.close()


def test_failing_sidecar_writes_never_fail_a_commit(db: Path) -> None:
    clock = FakeClock(1_790_000_000.0)
    blocker = Path(f"{sidecar_path(db)}.tmp")
    blocker.mkdir(parents=True)  # the temporary file cannot be created
    with structlog.testing.capture_logs() as logs:
        store = Store(db, clock=clock)
        for i in range(20):
            assert store.append([[ev(i)]]).inserted == 1
            clock.now += 1.5
    failed = [e for e in logs if e["event"] == "store_high_water_write_failed"]
    assert len(failed) == 1  # throttled: one line a minute
    assert not sidecar_path(db).exists()
    blocker.rmdir()
    clock.now += 1.5
    store.append([[ev(20)]])
    assert sidecar_path(db).read_text() == "21\n"
    store.close()


def test_unreadable_sidecar_is_reported_and_does_not_stop_the_store(db: Path) -> None:
    sidecar_path(db).write_text("not a number\n")
    with structlog.testing.capture_logs() as logs:
        store = Store(db)
    assert store.open_report == OpenReport()
    (line,) = [e for e in logs if e["event"] == "store_high_water_unreadable"]
    assert "expected a decimal seq" in line["error"]
    store.append([[ev(0)]])
    store.close()
    assert sidecar_path(db).read_text() == "1\n"


def test_cursor_past_the_top_is_a_rewind_without_sidecar(db: Path) -> None:
    store = Store(db)
    store.register_sinks(["wms"])
    store.append([[ev(i)] for i in range(10)])
    store.close()
    sidecar_path(db).unlink()
    store = Store(db, recover=False)
    # A cursor can only be past a seq that was handed out: the rows above it are gone.
    store._conn.execute("UPDATE cursors SET seq = 25")
    store._conn.execute("UPDATE sqlite_sequence SET seq = 5")
    store._conn.execute("DELETE FROM counters WHERE name = 'high_water_seq'")
    store.close()
    assert not sidecar_path(db).exists()  # an operator's store does not write the mark
    store = Store(db)
    assert store.open_report.rewound
    assert (store.open_report.high_water_seq, store.open_report.opened_at_seq) == (25, 5)
    store.close()


async def test_gateway_alerts_after_sigkill_and_deleted_wal(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    cfg = site(tmp_path, broker, wms)
    db = cfg.workdir / "buffer.db"
    with GatewayProcess(cfg) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=2)
        await publish(fleet, 150)
        await wait_until(lambda: wms.stats()["unique"] >= 150, 30, "first reads delivered")
        await asyncio.sleep(1.2)  # the next commit writes the high-water mark
        await publish(fleet, 10)
        await wait_until(lambda: wms.stats()["unique"] >= 160, 30, "second reads delivered")
        await wait_until(lambda: gw.status()["store"]["last_seq"] >= 160, 10, "stats refresh")
        last = gw.status()["store"]["last_seq"]
        await asyncio.to_thread(gw.kill)
        mark = int(await asyncio.to_thread(sidecar_path(db).read_text))
        assert 150 <= mark <= last
        wal = Path(f"{db}-wal")
        assert await asyncio.to_thread(wal.exists)
        await asyncio.to_thread(wal.unlink)

        await start(gw)
        status = gw.status()
        report = status["store"]["open_report"]
        assert report["rewound"] is True
        assert report["high_water_seq"] == mark
        assert report["wal_frames_lost"] > 0  # the -shm the crash left says so too
        opened = report["opened_at_seq"]
        assert opened < mark
        (alert,) = [a for a in alert_messages(status) if "rewound" in a]
        assert f"opened at seq {opened}," in alert
        assert f"high-water mark is {mark};" in alert
        assert f"seq resumes at {mark + REWIND_SEQ_MARGIN + 1}" in alert
        assert status["store"]["counters"]["store_rewinds"] == 1
        assert gw.log_events("store_rewound")
        # The gateway keeps working, with seq above anything upstream has seen.
        await publish(fleet, 10)
        await wait_until(lambda: wms.stats()["unique"] >= 170, 30, "reads after restart")
        await wait_until(lambda: gw.status()["store"]["last_seq"] > mark + REWIND_SEQ_MARGIN,
                         10, "seq above the high-water mark")
        fleet.close()
