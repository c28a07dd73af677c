"""The gateway keeps running when one of its tasks fails: supervised restarts.

An in-process ``Gateway`` with a real store in tmp_path, a real Mosquitto and
scanners, a real ``HttpSink`` to the WMS simulator, plus deliberately faulty
sink and driver classes that raise unexpected errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import structlog
from e2e import alert_messages, connect_fleet, publish, wait_until

from buffer.lock import StoreLocked
from buffer.service import Committer, StoreService
from buffer.store import Store
from gateway.app import Gateway, GatewayFailed, StartupError
from gateway.config import GatewayConfig, parse_config
from gateway.core.alert import Alert
from gateway.core.events import Event
from gateway.core.records import Row, SinkDeadLetter
from gateway.supervisor import Supervisor
from simulators.broker import MosquittoBroker, free_port
from simulators.wms import WmsSimulator


class FlakySink:
    """A sink with a bug: ``deliver`` raises while ``failing`` is set.

    With ``bad_dead_letter`` it also returns, once, a dead letter whose reason
    the store cannot bind, so that batch's cursor move fails in the store.
    """

    routes: frozenset[str] | None = None

    def __init__(self, sink_id: str = "flaky", batch_max: int = 50) -> None:
        self.id = sink_id
        self.batch_max = batch_max
        self.failing = True
        self.calls = 0
        self.bad_dead_letter = False
        self.rejected: str | None = None
        self.delivered: list[str] = []

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def deliver(self, rows: list[Row]) -> list[SinkDeadLetter]:
        self.calls += 1
        if self.failing:
            raise TypeError(f"unsupported operand type(s) in batch {self.calls}")
        out: list[SinkDeadLetter] = []
        for r in rows:
            if self.rejected is None:
                self.rejected = r.event_id
            if r.event_id == self.rejected:
                # The first event is always rejected; the first time with a reason
                # the store cannot write, which makes the cursor move fail.
                reason: Any = {"not": "a string"} if self.bad_dead_letter else "rejected"
                self.bad_dead_letter = False
                out.append(SinkDeadLetter(r.seq, r.event_id, cast(str, reason)))
            else:
                self.delivered.append(r.event_id)
        return out

    async def close(self) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"state": "ok"}


class CrashingDriver:
    """A driver with a bug: ``run`` raises its first ``crashes`` times, then runs."""

    def __init__(self, crashes: int) -> None:
        self.name = "crashing-driver"
        self.crashes = crashes
        self.starts = 0

    async def run(self) -> None:
        self.starts += 1
        if self.starts <= self.crashes:
            raise RuntimeError(f"driver bug #{self.starts}")
        await asyncio.Event().wait()

    def pause(self) -> None:
        return None

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {}

    def alerts(self) -> list[Alert]:
        return []

    def ready(self) -> bool:
        return True


def config(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> GatewayConfig:
    raw: dict[str, Any] = {
        "site": {"id": "DC-EAST-1"},
        "store": {"path": str(tmp_path / "buffer.db"), "synchronous": "NORMAL"},
        "brokers": [{"id": "site", "port": broker.port}],
        "devices": [
            {"id": f"scan-{i:02d}", "driver": "mqtt", "broker": "site",
             "topic": f"site/DC-EAST-1/scanners/scan-{i:02d}/reads"}
            for i in (1, 2)
        ],
        "sinks": [{"id": "wms", "type": "http", "url": wms.url, "batch_max": 50,
                   "backoff_initial": 0.05, "backoff_max": 0.5}],
        "status": {"port": free_port()},
        "shutdown_timeout": 5.0,
    }
    return parse_config(raw, tmp_path / "gateway.toml")


def fast_supervisor() -> Supervisor:
    return Supervisor(backoff_initial=0.05, backoff_max=0.2, stable_s=0.5)


@contextlib.asynccontextmanager
async def running(gw: Gateway) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(gw.run(install_signals=False))
    try:
        async with asyncio.timeout(15):
            await gw.ready.wait()
        yield task
    finally:
        gw.stop()
        async with asyncio.timeout(15):
            await task


async def get(gw: Gateway, path: str) -> str:
    url = f"http://127.0.0.1:{gw.cfg.status.port}{path}"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        return await r.text()


async def test_failing_sink_is_restarted_while_ingest_and_other_sink_go_on(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    gw = Gateway(config(tmp_path, broker, wms), supervisor=fast_supervisor())
    flaky = FlakySink()
    gw.sinks.append(flaky)
    with structlog.testing.capture_logs() as logs:
        async with running(gw) as task:
            fleet = connect_fleet(broker, count=2)
            first = await publish(fleet, 300)
            # The WMS sink keeps delivering while the flaky one fails again and again.
            await wait_until(lambda: wms.stats()["unique"] >= 300, 20, "300 events at the WMS")
            await wait_until(lambda: flaky.calls >= 3, 10, "three failed deliveries")
            assert not task.done()
            snap = gw.snapshot().to_json()
            tasks = snap["tasks"]
            assert tasks["forwarder-flaky"]["restarts"] >= 2
            assert tasks["forwarder-flaky"]["last_error"].startswith(
                "TypeError: unsupported operand")
            assert tasks["forwarder-wms"]["restarts"] == 0
            assert tasks["committer"]["restarts"] == 0
            alerts = [a for a in alert_messages(snap)
                      if a.startswith("task forwarder-flaky failed")]
            assert len(alerts) == 1, snap["alerts"]
            assert "(TypeError: unsupported operand" in alerts[0]
            assert "restarted" in alerts[0]
            status = await get(gw, "/api/status")
            assert '"forwarder-flaky"' in status
            metrics = await get(gw, "/metrics")
            line = next(x for x in metrics.splitlines()
                        if x.startswith('wh_task_restarts_total{task="forwarder-flaky"}'))
            assert int(line.split()[1]) >= 2
            assert 'wh_task_restarts_total{task="committer"} 0' in metrics

            # The fault stops (one more bug on the way: a cursor move that fails).
            flaky.bad_dead_letter = True
            flaky.failing = False
            second = await publish(fleet, 200)
            fleet.close()
            assert len(first) + len(second) == 500
            await wait_until(lambda: wms.stats()["unique"] >= 500, 20, "500 events at the WMS")
            want = wms.accepted_ids()
            await wait_until(
                lambda: set(flaky.delivered) | {flaky.rejected or ""} == want, 20,
                "every event at the flaky sink")
            assert len(want) == 500
            assert wms.stats()["duplicates"] == 0
            # The failed cursor move was not skipped: after the restart the batch
            # came again from the store's cursor, and its dead letter is stored.
            store = gw.service.store
            dls = await gw.service.call(store.dead_letters, sink="flaky", kind="sink",
                                        limit=10, after_id=0)
            assert [d.event_id for d in dls] == [flaky.rejected]
            await wait_until(lambda: not any(a.message.startswith("task forwarder-flaky")
                                             for a in gw.snapshot().alerts),
                             10, "the alert to clear once the task stays up")
    failed = [e for e in logs if e["event"] == "task_failed" and e["task"] == "forwarder-flaky"]
    kinds = {e["error"].split(":")[0] for e in failed}
    assert kinds == {"TypeError", "ProgrammingError"}
    # Each kind of failure is logged at once with its traceback; repeats are throttled.
    assert sum(1 for e in failed if e["error"].startswith("TypeError")) == 1
    assert all(isinstance(e.get("exc_info"), BaseException) for e in failed)
    assert not [e for e in logs if e["event"] == "gateway_failed"]


async def test_crashing_driver_is_restarted(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    gw = Gateway(config(tmp_path, broker, wms), supervisor=fast_supervisor())
    driver = CrashingDriver(crashes=3)
    gw.drivers.append(driver)
    async with running(gw) as task:
        await wait_until(lambda: driver.starts == 4, 10, "the driver's fourth start")
        fleet = connect_fleet(broker, count=2)
        await publish(fleet, 50)
        fleet.close()
        await wait_until(lambda: wms.stats()["unique"] >= 50, 20, "50 events at the WMS")
        snap = gw.snapshot().to_json()
        assert snap["tasks"]["crashing-driver"]["restarts"] == 3
        assert snap["tasks"]["crashing-driver"]["state"] == "running"
        assert snap["tasks"]["crashing-driver"]["last_error"] == "RuntimeError: driver bug #3"
        assert not task.done()
    assert task.result() is None  # a clean stop after the restarts


async def test_what_escapes_is_logged_as_gateway_failed(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    gw = Gateway(config(tmp_path, broker, wms), supervisor=fast_supervisor())
    gw.drivers += [CrashingDriver(crashes=0), CrashingDriver(crashes=0)]
    with structlog.testing.capture_logs() as logs, pytest.raises(GatewayFailed) as err:
        await asyncio.wait_for(gw.run(install_signals=False), 15)
    failed = [e for e in logs if e["event"] == "gateway_failed"]
    assert len(failed) == 1
    assert isinstance(failed[0]["exc_info"], BaseException)
    expected = "ValueError: task name"
    assert failed[0]["error"].startswith(expected)
    assert str(err.value).startswith(expected)
    events = [e["event"] for e in logs]
    stopped = next(e for e in logs if e["event"] == "gateway_stopped")
    assert stopped["failed"] is True
    assert events.index("gateway_failed") < events.index("gateway_stopped")


async def test_store_folder_that_is_a_file_is_a_startup_error(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    (tmp_path / "file").write_text("x")
    cfg = config(tmp_path, broker, wms)
    cfg = cfg.model_copy(update={"store": cfg.store.model_copy(
        update={"path": tmp_path / "file" / "buffer.db"})})
    gw = Gateway(cfg, supervisor=fast_supervisor())
    with structlog.testing.capture_logs() as logs, pytest.raises(StartupError) as err:
        await asyncio.wait_for(gw.run(install_signals=False), 15)
    assert err.value.reason == "store_dir"
    assert str(tmp_path / "file") in str(err.value)
    # Nothing was started, and no traceback is logged for an operator's mistake.
    assert not [e for e in logs if e["event"] in ("gateway_failed", "gateway_starting")]


async def test_second_gateway_in_process_is_refused(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    cfg = config(tmp_path, broker, wms)
    first = Gateway(cfg, supervisor=fast_supervisor())
    async with running(first):
        other = cfg.model_copy(update={"status": cfg.status.model_copy(
            update={"port": free_port()})})
        second = Gateway(other)
        with pytest.raises(StoreLocked) as err:
            await second.run(install_signals=False)
        assert f"PID {__import__('os').getpid()}" in str(err.value)
        assert str(cfg.store.path) in str(err.value)
        assert first.ready.is_set()


def scan_event(key: int) -> Event:
    return Event.create(site="DC-EAST-1", device="scan-01", type="scan",
                        source_key=f"read:{key}", occurred_at=1_790_000_000.0,
                        observed_at=1_790_000_000.5, data={"code": f"T{key:06d}"})


async def test_committer_restart_keeps_its_pending_units(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    service = StoreService(lambda: Store(path, synchronous="NORMAL"))
    store = await service.open()
    # Fail fast instead of after the default 10 s when the file is locked.
    await service.call(lambda: store._conn.execute("PRAGMA busy_timeout = 50"))
    committer = Committer(service, window_s=0.001)
    sup = fast_supervisor()
    # An operator command holds the store's write lock: every commit fails meanwhile.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    acked: list[int] = []
    try:
        async with asyncio.TaskGroup() as tg:
            commit_task = sup.start(tg, "committer", committer.run)
            committer.submit([scan_event(1)], lambda: acked.append(1))
            waiting = tg.create_task(committer.append([scan_event(2)]))
            await wait_until(lambda: sup.tasks["committer"].restarts >= 2, 10,
                             "two committer failures", interval=0.01)
            assert sup.tasks["committer"].last_error == (
                "OperationalError: database is locked")
            assert committer.pending == 2
            assert not waiting.done() and not acked
            other.execute("ROLLBACK")
            async with asyncio.timeout(10):
                await waiting  # not cancelled: committed after the restart
            assert acked == [1]
            assert committer.pending == 0
            commit_task.cancel()
    finally:
        other.close()
    events = await service.call(store.stats)
    assert events["events"] == 2
    await service.close()


async def test_cancellation_is_never_taken_for_a_failure() -> None:
    sup = fast_supervisor()
    starts: list[int] = []
    gate = asyncio.Event()

    async def stray_cancel_then_wait() -> None:
        starts.append(1)
        if len(starts) == 1:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.cancel()
            await fut  # a future cancelled by someone else: not our cancellation
        gate.set()
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as tg:
        task = sup.start(tg, "worker", stray_cancel_then_wait)
        async with asyncio.timeout(5):
            await gate.wait()
        assert len(starts) == 2
        assert sup.tasks["worker"].restarts == 1
        assert sup.tasks["worker"].last_error == "CancelledError"
        task.cancel()  # a real cancellation ends the task, without a restart
    assert task.cancelled()
    assert len(starts) == 2
    assert sup.tasks["worker"].state == "cancelled"
    assert sup.alerts() == []
