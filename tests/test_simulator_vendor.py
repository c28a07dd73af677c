"""The vendor simulators as processes: they serve what their docs say, log it, and resume.

Each runs as ``python -m simulators vendor-...`` (the harness in
``simulators/harness/vendor.py``) and is read over the wire by a real client
(asyncua, pymodbus, paho) and compared with its own ledger.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient
from waiting import wait_until, wait_until_sync

from simulators.broker import MosquittoBroker
from simulators.harness.vendor import (
    VendorPlcProcess,
    VendorScannerProcess,
    VendorSorterProcess,
    fire_confirms,
)
from simulators.vendor.ledger import Ledger, RetentiveState, read_ledger
from simulators.vendor.sorter import EVENT_TYPE, PARCEL_COUNT, SOURCE

# -- vendor sorter -------------------------------------------------------------------


class _Events:
    """Collects the events of an asyncua subscription."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.events.append(event)


@pytest.fixture
def sorter_proc(tmp_path: Path) -> Iterator[VendorSorterProcess]:
    proc = VendorSorterProcess(tmp_path / "sorter", rate=20.0)
    yield proc
    proc.kill()


async def _subscribe(client: Client) -> _Events:
    handler = _Events()
    sub = await client.create_subscription(20, handler)
    await sub.subscribe_events(client.get_node(SOURCE), client.get_node(EVENT_TYPE))
    return handler


async def test_sorter_fires_its_own_event_type_and_logs_every_confirm(
        sorter_proc: VendorSorterProcess) -> None:
    await asyncio.to_thread(sorter_proc.start)
    async with Client(sorter_proc.endpoint, timeout=10) as client:
        handler = await _subscribe(client)
        await wait_until(lambda: len(handler.events) >= 10, 20, "10 divert confirms")
        fields = await client.get_node(EVENT_TYPE).get_properties()
        names = {(await f.read_browse_name()).Name: await f.read_data_type_as_variant_type()
                 for f in fields}
        with pytest.raises(UaStatusCodeError) as err:
            await client.get_node(SOURCE).read_event_history(None, None, 0,
                                                             [client.get_node(EVENT_TYPE)])
        count = await client.get_node(PARCEL_COUNT).read_value()
    assert names == {"ParcelId": ua.VariantType.UInt32, "Sequence": ua.VariantType.UInt32,
                     "ResultCode": ua.VariantType.Int32, "Label": ua.VariantType.String,
                     "InductPoint": ua.VariantType.String, "Destination": ua.VariantType.String}
    assert "BadHistoryOperationUnsupported" in str(err.value)
    by_seq = {e["sequence"]: e for e in sorter_proc.ledger("divert_confirm")}
    assert count >= 10
    for ev in handler.events:
        logged = by_seq[ev.Sequence]
        assert (ev.ParcelId, ev.ResultCode, ev.Destination, ev.Label, ev.InductPoint) == (
            logged["parcel_id"], logged["result_code"], logged["destination"],
            logged["label"], logged["induct_point"])
        assert ev.EventId == bytes.fromhex(logged["event_id"])
        assert ev.ResultCode in (0, 1, 2, 3, 4)
        assert (ev.Label == "") == (ev.ResultCode == 1)
        assert (ev.Destination == "") == (ev.ResultCode in (1, 3))


async def test_sorter_continues_its_ids_after_a_restart_and_with_history_keeps_them(
        tmp_path: Path) -> None:
    proc = VendorSorterProcess(tmp_path / "sorter", rate=50.0, total=15, history=True,
                               extra=["--recirculate-rate", "0"])
    try:
        await asyncio.to_thread(proc.start)
        await wait_until(lambda: len(proc.ledger()) >= 15, 20, "15 confirms logged")
        assert proc.stop(10, raise_on_kill=True) == 0
        before = proc.ledger()
        await asyncio.to_thread(proc.start)
        await wait_until(lambda: len(proc.ledger()) >= 30, 20, "15 more confirms logged")
        async with Client(proc.endpoint, timeout=10) as client:
            history = await client.get_node(SOURCE).read_event_history(
                None, None, 0, [client.get_node(EVENT_TYPE)])
    finally:
        proc.kill()
    logged = proc.ledger()
    assert [e["parcel_id"] for e in logged] == list(range(1, 31))
    assert [e["sequence"] for e in logged] == list(range(1, 31))
    assert [e["n"] for e in logged] == list(range(1, 31))
    assert {e["boot"] for e in logged[:15]} == {1} and {e["boot"] for e in logged[15:]} == {2}
    assert logged[:15] == before
    # The history after the restart holds what the first boot fired, with its event ids.
    assert sorted((ev.Sequence, ev.EventId) for ev in history) == [
        (e["sequence"], bytes.fromhex(e["event_id"])) for e in logged]


async def test_sorter_fires_confirms_with_a_forced_code_on_request(tmp_path: Path) -> None:
    proc = VendorSorterProcess(tmp_path / "sorter", rate=0)
    try:
        await asyncio.to_thread(proc.start)
        assert await fire_confirms(proc.endpoint, 3, 2) == 4
        assert await fire_confirms(proc.endpoint, 2, 1) == 6
        assert await fire_confirms(proc.endpoint, 1, 9) == 7
        assert await fire_confirms(proc.endpoint, 1, 4) == 8  # recirculated ...
        assert await fire_confirms(proc.endpoint, 1, 0) == 9  # ... and confirmed again
    finally:
        proc.stop(10)
    logged = proc.ledger("divert_confirm")
    assert [e["result_code"] for e in logged] == [2, 2, 2, 1, 1, 9, 4, 0]
    assert [e["parcel_id"] for e in logged] == [1, 2, 3, 4, 5, 6, 7, 7]
    assert logged[6]["label"] == logged[7]["label"]
    assert all(e["label"] and e["destination"] for e in logged if e["result_code"] != 1)
    assert all(not e["label"] and not e["destination"] for e in logged
               if e["result_code"] == 1)


# -- vendor PLC ----------------------------------------------------------------------


async def _modbus(port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


def _text(registers: list[int]) -> str:
    return struct.pack(f">{len(registers)}H", *registers).rstrip(b"\x00").decode()


async def test_plc_serves_its_map_refuses_holes_and_logs_every_change(tmp_path: Path) -> None:
    proc = VendorPlcProcess(tmp_path / "plc", counter_start=2**32 - 2)
    try:
        await asyncio.to_thread(proc.start)
        client = await _modbus(proc.port)
        assert len(proc.control("items", {"count": 3})["increments"]) == 3
        proc.control("track", {"container": "BOX-0042", "from": 2, "to": 6})
        proc.control("fault", {"active": True, "code": 42})
        proc.control("temperature", {"value": -1.5})
        boot = await client.read_holding_registers(1, count=1, device_id=1)
        counter = await client.read_holding_registers(11, count=2, device_id=1)
        group = await client.read_holding_registers(21, count=7, device_id=1)
        ends = [await client.read_holding_registers(a, count=1, device_id=1) for a in (29, 31)]
        code = await client.read_holding_registers(41, count=1, device_id=1)
        fault = await client.read_coils(5, count=1, device_id=1)
        running = await client.read_discrete_inputs(0, count=1, device_id=1)
        temp = await client.read_input_registers(3, count=1, device_id=1)
        holes = [await client.read_holding_registers(a, count=n, device_id=1)
                 for a, n in ((0, 1), (2, 1), (11, 3), (21, 11), (28, 2), (30, 1), (13, 1))]
        hole_di = await client.read_discrete_inputs(16, count=1, device_id=1)
        write = await client.write_register(11, 5, device_id=1)
        assert not (await client.write_coil(8, True, device_id=1)).isError()  # fault reset
        cleared = await client.read_coils(0, count=16, device_id=1)
        client.close()
    finally:
        proc.stop(10)
    assert boot.registers == [1]
    assert counter.registers == [1, 0]  # 2^32 - 2 + 3 wrapped to 1, low word first (CDAB)
    assert group.registers[:2] == [0, 1]  # sequence 1 (u32, high word first)
    assert _text(group.registers[2:]) == "BOX-0042"
    assert [r.registers[0] for r in ends] == [2, 6]
    assert code.registers == [42]
    assert fault.bits[0] is True and running.bits[0] is True
    assert struct.unpack(">h", struct.pack(">H", temp.registers[0]))[0] == -15  # tenths
    assert all(r.isError() and r.exception_code == 2 for r in [*holes, hole_di, write])
    assert cleared.bits == [False] * 16
    ledger = proc.ledger()
    assert [e["kind"] for e in ledger] == ["boot", "increment", "increment", "increment",
                                           "tracking", "fault_raised", "temperature",
                                           "fault_cleared"]
    assert [(e["value"], e["previous"], e["wrapped"]) for e in ledger[1:4]] == [
        (2**32 - 1, 2**32 - 2, False), (0, 2**32 - 1, True), (1, 0, False)]
    assert ledger[4] | {"n": 0, "at": ""} == {
        "n": 0, "at": "", "kind": "tracking", "seq": 1, "container": "BOX-0042",
        "from_station": 2, "to_station": 6}
    assert ledger[5]["code"] == 42 and ledger[7]["code"] == 42


async def test_plc_runs_by_itself_and_keeps_counter_and_tracking_across_a_restart(
        tmp_path: Path) -> None:
    proc = VendorPlcProcess(tmp_path / "plc", item_rate=20.0, track_rate=10.0, fault_every=0.3)
    try:
        await asyncio.to_thread(proc.start)
        await wait_until(lambda: len(proc.ledger("tracking")) >= 5
                         and proc.ledger("fault_cleared"), 20, "tracking updates and a fault")
        assert proc.stop(10, raise_on_kill=True) == 0
        ledger = proc.ledger()
        proc.item_rate = proc.track_rate = proc.fault_every = 0.0
        await asyncio.to_thread(proc.start)
        client = await _modbus(proc.port)
        boot = await client.read_holding_registers(1, count=1, device_id=1)
        counter = await client.read_holding_registers(11, count=2, device_id=1)
        group = await client.read_holding_registers(21, count=7, device_id=1)
        client.close()
        state = proc.control("state")
        proc.control("items", {"count": 1})
    finally:
        proc.stop(10)
    increments = [e for e in ledger if e["kind"] == "increment"]
    tracking = [e for e in ledger if e["kind"] == "tracking"]
    assert [e["value"] for e in increments] == list(range(1, len(increments) + 1))
    assert [e["seq"] for e in tracking] == list(range(1, len(tracking) + 1))
    assert {(e["from_station"], e["to_station"]) for e in tracking} <= {(1, 5), (2, 5), (1, 6),
                                                                        (2, 6)}
    assert boot.registers == [2] and state["boot"] == 2 and state["fault_active"] is False
    assert counter.registers[0] | counter.registers[1] << 16 == increments[-1]["value"]
    assert group.registers[0] << 16 | group.registers[1] == tracking[-1]["seq"]
    assert _text(group.registers[2:]) == tracking[-1]["container"]
    after = proc.ledger()
    assert after[: len(ledger)] == ledger
    assert [e["kind"] for e in after[len(ledger):]] == ["boot", "increment"]
    assert after[-1]["value"] == increments[-1]["value"] + 1
    assert after[-1]["n"] == len(ledger) + 2


# -- vendor JSON scanner ---------------------------------------------------------------


def _subscriber(broker: MosquittoBroker, topic: str) -> tuple[mqtt.Client, list[bytes]]:
    got: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"vendor-test-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, msg: got.append(bytes(msg.payload))
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(5), "no SUBACK"
    return client, got


def test_scanner_publishes_nested_json_logs_it_and_continues_its_seq(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    topic = "vendor/pack3/reads"
    sub, got = _subscriber(broker, topic)
    proc = VendorScannerProcess(tmp_path / "scanner", broker.port, rate=50.0, total=5,
                                extra=["--noread-rate", "0.3"])
    try:
        proc.start()
        assert proc.wait_exit(30) == 0
        proc.total = 3
        proc.start()
        assert proc.wait_exit(30) == 0
        wait_until_sync(lambda: len(got) >= 8, 10, "8 messages at the subscriber")
    finally:
        proc.kill()
        sub.disconnect()
        sub.loop_stop()
    ledger = proc.ledger("published")
    assert [e["seq"] for e in ledger] == list(range(1, 9))
    assert [json.loads(m) for m in got] == [e["payload"] for e in ledger]
    assert {e["topic"] for e in ledger} == {topic}
    for e in ledger:
        doc = e["payload"]
        assert set(doc) == {"meta", "barcode", "order", "item"}
        assert doc["meta"]["seq"] == e["seq"] and doc["meta"]["fw"] == "4.2.1"
        item = doc["item"]
        assert isinstance(item["qty"], str) and item["qty"].isdigit()
        assert isinstance(item["weight_kg"], float) and isinstance(doc["order"]["line"], int)
        assert doc["barcode"] is None or doc["barcode"]["value"].startswith("LPN-")
    assert any(e["payload"]["barcode"] is None for e in ledger)


# -- ledger and retentive state ------------------------------------------------------


def test_ledger_skips_a_line_cut_by_a_kill_and_numbers_on(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    first = Ledger(path, sync=False)
    first.write("a", x=1)
    first.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"n": 2, "kind": "a", "x"')  # a kill in the middle of a write
    again = Ledger(path, sync=False)
    again.write("b", x=3)
    again.close()
    assert [(e["n"], e["kind"]) for e in read_ledger(path)] == [(1, "a"), (2, "b")]
    assert read_ledger(path, "b")[0]["x"] == 3
    assert read_ledger(tmp_path / "missing.jsonl") == []


def test_retentive_state_keeps_known_keys_of_the_right_type(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = RetentiveState(path, {"next": 1, "name": ""})
    state["next"], state["name"] = 7, "C1"
    state.save()
    path.write_text(json.dumps({"next": 8, "name": 5, "other": 1}))
    again = RetentiveState(path, {"next": 1, "name": ""})
    assert again.values == {"next": 8, "name": ""}
