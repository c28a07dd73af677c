"""ModbusDriver against a PLC that refuses reads over unmapped addresses, over loopback.

The PLC is a pymodbus server written here whose datastore holds only the
mapped ranges: a read touching any other address is answered with exception
0x02 (illegal data address), as many PLCs do. The default ``max_gap`` plans
one request bridging the gap between two mapped holding ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from e2e import wait_until
from modbus_server import SimPlc
from pymodbus.simulator import DataType, SimData, SimDevice

from buffer.service import Committer, StoreService
from buffer.store import Store
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.registers import PointSpec, ReadBlock, Span, plan_reads, split_at_gaps
from gateway.build import driver_context

SITE = "S"
DEVICE = "plc-1"
POINTS: list[dict[str, Any]] = [
    {"name": "setpoint", "table": "holding", "address": 0},
    {"name": "mode", "table": "holding", "address": 1},
    # holding 2..9 do not exist on the PLC (8 registers: bridged by the default max_gap)
    {"name": "total", "table": "holding", "address": 10, "type": "u32"},
    {"name": "heartbeat", "table": "input", "address": 0, "role": "heartbeat"},
    {"name": "temperature", "table": "input", "address": 1, "type": "i16"},
]


class SparsePlc(SimPlc):
    """A Modbus TCP server whose tables hold only the mapped addresses."""

    def __init__(self) -> None:
        super().__init__(SimDevice(id=1, simdata=(
            [SimData(0, count=1, values=False, datatype=DataType.BITS)],
            [SimData(0, count=1, values=False, datatype=DataType.BITS, readonly=True)],
            [SimData(0, count=2, values=[1500, 3], datatype=DataType.REGISTERS),
             SimData(10, count=2, values=[1, 2], datatype=DataType.REGISTERS)],
            [SimData(0, count=2, values=[42, 0xFFF6], datatype=DataType.REGISTERS)],
        )))


@pytest.fixture
async def plc() -> AsyncIterator[SparsePlc]:
    server = SparsePlc()
    await server.start()
    yield server
    await server.stop()


def logged(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def test_reads_bridging_unmapped_addresses_are_split_once_and_the_plan_kept(
        tmp_path: Path, plc: SparsePlc) -> None:
    service = StoreService(lambda: Store(tmp_path / "buffer.db", synchronous="NORMAL"))
    device = ModbusDevice.model_validate({
        "id": DEVICE, "driver": "modbus", "host": "127.0.0.1", "port": plc.port,
        "poll_interval": "50ms", "timeout": "500ms", "backoff_initial": "50ms",
        "backoff_max": "200ms", "heartbeat_timeout": "0s", "points": POINTS})
    committer = Committer(service)
    drv = ModbusDriver(driver_context(SITE, [device], committer))
    assert [(b.table, b.address, b.count) for b in drv.blocks] == [
        ("holding", 0, 12), ("input", 0, 2)], "the default plan bridges holding 2..9"
    store = await service.open()
    await service.call(store.register_sinks, ["t"])
    tasks = [asyncio.create_task(committer.run()), asyncio.create_task(drv.run())]
    try:
        with structlog.testing.capture_logs() as logs:
            await wait_until(lambda: drv.polls >= 1, 10, "a first complete poll")
            polls = drv.polls
            await wait_until(lambda: drv.polls >= polls + 5, 10, "more polls")
        snap = drv.snapshot()[DEVICE]
        assert snap["points"] == {"setpoint": 1500, "mode": 3, "total": 0x00010002,
                                  "heartbeat": 42, "temperature": -10}
        assert snap["connected"] is True
        assert [a.message for a in drv.alerts()] == []
        assert logged(logs, "device_unavailable") == []
        split = logged(logs, "modbus_read_split")
        assert [(e["device"], e["table"], e["refused"], e["reads"]) for e in split] == [
            (DEVICE, "holding", "0..11", ["0..1", "10..11"])]
        # The split plan stays: the device refused one read in all these polls.
        assert [(b.table, b.address, b.count) for b in drv.blocks] == [
            ("holding", 0, 2), ("holding", 10, 2), ("input", 0, 2)]
        assert snap["requests_per_poll"] == 3
        assert drv.exceptions == {"0x02 ILLEGAL DATA ADDRESS": 1}
        assert drv.connects == 1
    finally:
        for t in reversed(tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await service.close()


def _spec(name: str, address: int, type_: str = "u16") -> PointSpec:
    return PointSpec(name, "holding", address, type_)  # type: ignore[arg-type]


def test_split_at_gaps_keeps_adjacent_points_and_whole_spans_together() -> None:
    ring = tuple(_spec(f"ring{i}", 20 + i * 3) for i in range(3))  # a ring with holes inside
    spans = [Span("holding", 0, 1, (_spec("a", 0),)), Span("holding", 1, 2, (_spec("b", 1,
                                                                                   "u32"),)),
             Span("holding", 5, 1, (_spec("c", 5),)), Span("holding", 20, 9, ring),
             Span("input", 0, 1, (PointSpec("i", "input", 0, "u16"),))]
    (block,) = [b for b in plan_reads(spans, max_gap=16) if b.table == "holding"]
    assert (block.address, block.count) == (0, 29)
    pieces = split_at_gaps(block, spans)
    assert [(p.address, p.count, p.names) for p in pieces] == [
        (0, 3, ("a", "b")), (5, 1, ("c",)), (20, 9, ("ring0", "ring1", "ring2"))]
    for piece in pieces:  # a piece has no gap left: it comes back as it is
        assert split_at_gaps(piece, spans) == [piece]
    solid = ReadBlock("holding", 0, 3, (_spec("a", 0), _spec("b", 1, "u32")))
    assert split_at_gaps(solid, spans) == [solid]
