"""ModbusDriver against the conveyor simulator over loopback, into a real store.

The driver runs in the test's event loop with a real ``Store``/``Committer``;
the simulator's pymodbus servers run there too and are reached over TCP.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from e2e import wait_until

from buffer.service import Committer, StoreService
from buffer.store import Store
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from gateway.build import driver_context
from gateway.core.events import make_event_id
from simulators.broker import free_port
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_plc import gateway_device_toml

SITE = "S"
STOP_S = 10.0


def figure(driver: ModbusDriver, key: str) -> Any:
    """One of conveyor-01's figures in the driver's status snapshot."""
    return driver.snapshot()["conveyor-01"][key]


class Harness:
    """A store, its committer and one driver for conveyor-01."""

    def __init__(self, tmp: Path, port: int, **extra: Any) -> None:
        self.service = StoreService(lambda: Store(tmp / "buffer.db", synchronous="NORMAL"))
        self.committer = Committer(self.service)
        keys = {"backoff_initial": "50ms", "backoff_max": "200ms", "timeout": "500ms"} | extra
        raw = tomllib.loads(gateway_device_toml("conveyor-01", port, poll_interval="50ms",
                                                extra=keys))
        self.device = ModbusDevice.model_validate(raw["devices"][0])
        self.driver = ModbusDriver(driver_context(SITE, [self.device], self.committer))
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, *, committer: bool = True) -> None:
        store = await self.service.open()
        await self.service.call(store.register_sinks, ["t"])
        if committer:
            self.start_committer()
        self.tasks.append(asyncio.create_task(self.driver.run()))

    def start_committer(self) -> None:
        self.tasks.append(asyncio.create_task(self.committer.run()))

    async def stop(self) -> None:
        for t in reversed(self.tasks):
            t.cancel()
            # Bounded: a task that ignores its cancellation fails the test here, named.
            _, stuck = await asyncio.wait({t}, timeout=STOP_S)
            assert not stuck, f"{t.get_name()} did not stop within {STOP_S}s of being cancelled"
        await self.service.close()

    async def events(self) -> list[dict[str, Any]]:
        rows, _ = await self.service.read("t", 0, 100_000, None)
        return [json.loads(r.body) for r in rows]

    async def dead_letters(self) -> list[Any]:
        store = self.service.store
        return await self.service.call(store.dead_letters, kind="ingest")


@pytest.fixture
async def sim() -> AsyncIterator[ConveyorSimulator]:
    async with ConveyorSimulator(count=1, tote_rate=1.0, control_port=None) as s:
        yield s


@pytest.fixture
async def harness(tmp_path: Path, sim: ConveyorSimulator) -> AsyncIterator[Harness]:
    h = Harness(tmp_path, sim[1].port)
    yield h
    await h.stop()


def logged(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def test_exception_responses_are_device_errors_logged_once(
        sim: ConveyorSimulator, harness: Harness) -> None:
    with structlog.testing.capture_logs() as logs:
        await harness.start()
        drv = harness.driver
        await wait_until(lambda: drv.polls >= 2, 10, "first polls")
        sim[1].exception.code, sim[1].exception.count, sim[1].exception.function = 2, -1, 4
        await wait_until(lambda: sum(drv.exceptions.values()) >= 4, 10, "several failed polls")
        assert [a.message for a in drv.alerts()] == [
            "device conveyor-01 unavailable: 0x02 ILLEGAL DATA ADDRESS reading input 0..21"]
        assert drv.snapshot()["conveyor-01"]["connected"] is False
        sim[1].exception.count = 0
        polls = drv.polls
        await wait_until(lambda: drv.polls > polls + 2, 10, "polls after the device answers")
    down, back = logged(logs, "device_unavailable"), logged(logs, "device_available")
    assert [d["error"] for d in down] == ["0x02 ILLEGAL DATA ADDRESS reading input 0..21"]
    assert len(back) == 1 and back[0]["device"] == "conveyor-01"
    assert drv.exceptions == {"0x02 ILLEGAL DATA ADDRESS": drv.exceptions[
        "0x02 ILLEGAL DATA ADDRESS"]}
    assert [a.message for a in drv.alerts()] == []
    assert drv.connects == 1, "an exception response must not cost the connection"


async def test_bad_values_become_dead_letters_counted_and_logged_once(
        sim: ConveyorSimulator, harness: Harness) -> None:
    with structlog.testing.capture_logs() as logs:
        await harness.start()
        drv = harness.driver
        await wait_until(lambda: drv.polls >= 2, 10, "first polls")
        sim[1].overrides[("input", 14)] = 0x7FC0  # speed: NaN
        sim[1].overrides[("input", 15)] = 0x0000
        await wait_until(lambda: bool(figure(drv, "ingest_errors")), 10, "a rejected value")
        polls = drv.polls
        await wait_until(lambda: drv.polls > polls + 3, 10, "more polls of the same NaN")
        sim[1].overrides[("input", 14)] = 0x7F80  # +inf: a different reading, same kind
        await wait_until(lambda: figure(drv, "ingest_errors").get("not_finite") == 2,
                         10, "the second bad value")
        sim[1].overrides.clear()
        await wait_until(lambda: drv.snapshot()["conveyor-01"]["points"]["speed"] == 2.0, 10,
                         "speed readable again")
    dls = await harness.dead_letters()
    assert [(d.device, d.body, d.context["point"]) for d in dls] == [
        ("conveyor-01", b"\x7f\xc0\x00\x00", "speed"), ("conveyor-01", b"\x7f\x80\x00\x00",
                                                        "speed")]
    assert dls[0].reason == "not_finite: decodes to nan"
    assert dls[0].context["registers"] == [0x7FC0, 0]
    rejected = logged(logs, "ingest_rejected")
    assert len(rejected) == 1 and rejected[0]["kind"] == "not_finite"
    assert drv.availability.available, "a bad value is not a device outage"


async def test_timeouts_and_restarts_reconnect_with_nothing_lost(
        sim: ConveyorSimulator, harness: Harness) -> None:
    with structlog.testing.capture_logs() as logs:
        await harness.start()
        drv = harness.driver
        await wait_until(lambda: figure(drv, "tracking_seq") is not None, 10, "first moves")
        sim[1].slow.delay_s, sim[1].slow.count = 2.0, 1
        # Back (and said so) before the restart, so the restart is an outage of its own.
        await wait_until(lambda: drv.connects >= 2 and drv.availability.available, 10,
                         "a reconnect after the timeout")
        await sim[1].restart("warm", down_s=0.5)
        await wait_until(lambda: drv.connects >= 3 and drv.availability.available, 10,
                         "back after the restart")
        plc = sim[1].plc
        await wait_until(lambda: plc.tracking_seq >= 10, 10, "ten moves")
        sim.freeze()
        await wait_until(lambda: figure(drv, "tracking_seq") == plc.tracking_seq, 10,
                         "the last move read")

        async def all_stored() -> bool:
            # Read is not yet committed: wait for the store to hold the last move too.
            moves = [e for e in await harness.events() if e["type"] == "move"]
            return len(moves) >= len(plc.moves)

        await wait_until(all_stored, 10, "every move committed")
    down = logged(logs, "device_unavailable")
    assert len(down) == 2, down  # once per outage, not once per failed attempt
    assert down[0]["error"].startswith("no answer within 0.5s reading ")
    # The restart drops the connection; on a loaded machine the read in flight
    # may time out before the drop is seen: all three name the outage.
    assert down[1]["error"].startswith(
        ("connection lost", "cannot connect", "no answer within 0.5s reading ")), down[1]
    assert len(logged(logs, "device_available")) == 2
    moves = [e for e in await harness.events() if e["type"] == "move"]
    want = {make_event_id(SITE, "conveyor-01", f"trk:1:{m.seq}") for m in plc.moves}
    assert [e["event_id"] for e in moves] == [
        make_event_id(SITE, "conveyor-01", f"trk:1:{m.seq}") for m in plc.moves]
    assert len(want) == len(moves) == plc.tracking_seq >= 10
    assert figure(drv, "lost_moves") == 0


async def test_unreachable_device_is_one_alert_and_polling_waits_for_the_store(
        tmp_path: Path, sim: ConveyorSimulator) -> None:
    h = Harness(tmp_path, free_port())
    with structlog.testing.capture_logs() as logs:
        await h.start()
        await wait_until(lambda: h.driver.failures >= 4, 10, "several attempts")
    await h.stop()
    assert len(logged(logs, "device_unavailable")) == 1
    assert h.driver.alerts()[0].message.startswith(
        "device conveyor-01 unavailable: cannot connect to")

    # Backpressure: with the committer stopped, the driver waits in append and polls no more.
    h2 = Harness(tmp_path / "2", sim[1].port)
    (tmp_path / "2").mkdir()
    try:
        await h2.start(committer=False)
        await wait_until(lambda: h2.driver.polls == 1, 10, "the first poll")
        # The positive signal: the first poll's records wait in the committer, and the
        # driver with them (it awaits their commit), so no second poll can start.
        await wait_until(lambda: h2.committer.pending == 1, 10, "the first poll's records queued")
        # Six PLC scans (50 ms each, the driver's poll interval): a driver not held
        # back by the store would have polled again meanwhile.
        plc = sim[1].plc
        scans = plc.heartbeat + 6
        await wait_until(lambda: plc.heartbeat >= scans, 10, "six PLC scans")
        assert h2.driver.polls == 1, "polling went on while nothing could be committed"
        assert h2.committer.pending == 1
        h2.start_committer()
        await wait_until(lambda: h2.driver.polls > 5, 10, "polling resumed")
        await wait_until(lambda: plc.tracking_seq >= 3, 10, "three moves")
        sim.freeze()
        await wait_until(lambda: figure(h2.driver, "tracking_seq") == plc.tracking_seq, 10,
                         "the last move")
        await wait_until(lambda: h2.committer.pending == 0, 10, "the last move committed")
        seqs = [e["data"]["seq"] for e in await h2.events() if e["type"] == "move"]
        assert seqs == list(range(1, plc.tracking_seq + 1))
    finally:
        await h2.stop()


async def test_cancel_arriving_with_an_answer_stops_the_driver(tmp_path: Path) -> None:
    """A stop that coincides with a Modbus answer still stops the driver.

    The cancel is issued from a callback queued while the simulator answers,
    so it runs in the next loop iteration just before the driver's socket is
    read: the answer and the cancel reach the driver's task together. This is
    what a test teardown (or a gateway shutdown) meets when it stops the
    driver while a poll is in flight; Python 3.11's ``asyncio.wait_for``
    (used by pymodbus for every request) then returns the answer and drops the
    cancellation, and a driver that does not check for it polls on forever.
    """
    sim = ConveyorSimulator(count=1, tote_rate=1.0, control_port=None)
    conv = sim[1]
    answer = conv._action
    armed: list[asyncio.Task[None]] = []

    async def action(*args: Any) -> Any:
        if armed:  # cancel the driver right behind this answer
            asyncio.get_running_loop().call_soon(armed.pop().cancel)
        return await answer(*args)

    conv._action = action
    async with sim:
        h = Harness(tmp_path, conv.port)
        try:
            await h.start()
            await wait_until(lambda: h.driver.polls >= 2, 10, "first polls")
            task = h.tasks[-1]
            armed.append(task)
            with pytest.raises(asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await asyncio.shield(task)
            assert not armed, "the driver sent no request after being armed"
            assert task.cancelled()
        finally:
            await h.stop()
