"""``try --browse`` against an asyncua server and ``try --scan`` against Modbus servers with holes.

The OPC UA server is written here like a vendor's: its own namespace, a
divert event type whose fields are not the project's (a UInt32 parcel id, an
Int32 result code) with a subtype, and variables in nested objects. The
Modbus servers refuse unmapped addresses with exception 0x02 (a pymodbus
server whose tables hold only the mapped ranges), or stay silent for them
(a minimal Modbus TCP server written here, as some devices behave).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.server.server import Server
from commission import run_try, write_config
from modbus_server import SimPlc
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.broker import free_port

NS = "urn:vendor:sorter"


class VendorServer:
    """An OPC UA server with a vendor's event types and variables."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/"
        self.server = Server()

    async def start(self) -> None:
        srv = self.server
        await srv.init()
        srv.set_endpoint(self.endpoint)
        idx = await srv.register_namespace(NS)

        def nid(name: str) -> ua.NodeId:
            return ua.NodeId.from_string(f"ns={idx};s={name}")

        divert = await srv.nodes.base_event_type.add_object_type(nid("ParcelDivertedType"),
                                                                 "ParcelDivertedType")
        for name, vtype in (("ParcelId", ua.VariantType.UInt32),
                            ("ResultCode", ua.VariantType.Int32),
                            ("Destination", ua.VariantType.String)):
            await divert.add_property(nid(f"ParcelDivertedType.{name}"), name,
                                      ua.get_default_value(vtype), varianttype=vtype)
        retry = await divert.add_object_type(nid("ParcelRetriedType"), "ParcelRetriedType")
        await retry.add_property(nid("ParcelRetriedType.Attempt"), "Attempt", 0,
                                 varianttype=ua.VariantType.UInt16)
        line = await srv.nodes.objects.add_object(nid("Line1"), "Line1")
        await line.add_variable(nid("Line1.Speed"), "Speed", 1.5)
        counters = await line.add_object(nid("Line1.Counters"), "Counters")
        await counters.add_variable(nid("Line1.Counters.Total"), "Total",
                                    ua.Variant(7, ua.VariantType.UInt32))
        await srv.start()

    async def stop(self) -> None:
        await self.server.stop()


@pytest.fixture
async def vendor() -> AsyncIterator[VendorServer]:
    server = VendorServer()
    await server.start()
    yield server
    await server.stop()


def opcua_config(tmp_path: Path, endpoint: str) -> Path:
    return write_config(tmp_path, [{
        "id": "sorter-9", "driver": "opcua", "endpoint": endpoint, "role": "sorter",
        "request_timeout": "2s", "connect_timeout": "3s",
        "nodes": [{"node": f"nsu={NS};s=Line1.Speed", "point": "speed"}]}])


async def test_browse_lists_the_vendors_event_types_with_fields_and_its_variables(
        tmp_path: Path, vendor: VendorServer) -> None:
    config = opcua_config(tmp_path, vendor.endpoint)
    run = await run_try(config, "--device", "sorter-9", "--browse", "--json")
    assert run.code == 0, run.stderr
    types = {t["name"]: t for t in run.of("event_type")}
    assert sorted(types) == ["ParcelDivertedType", "ParcelRetriedType"], "namespace 0 left out"
    divert, retry = types["ParcelDivertedType"], types["ParcelRetriedType"]
    assert divert["node"] == f"nsu={NS};s=ParcelDivertedType"
    assert divert["supertype"] == "BaseEventType" and retry["supertype"] == "ParcelDivertedType"
    fields = {f["path"]: (f["data_type"], f["declared_in"]) for f in retry["fields"]}
    assert fields["ParcelId"] == ("UInt32", "ParcelDivertedType")
    assert fields["ResultCode"] == ("Int32", "ParcelDivertedType")
    assert fields["Attempt"] == ("UInt16", "ParcelRetriedType")
    assert fields["Time"] == ("UtcTime", "BaseEventType"), "inherited fields are listed too"
    assert "Attempt" not in {f["path"] for f in divert["fields"]}
    variables = {v["path"]: v for v in run.of("variable")}
    total = variables["Line1/Counters/Total"]
    assert total == {"kind": "variable", "node": f"nsu={NS};s=Line1.Counters.Total",
                     "path": "Line1/Counters/Total", "data_type": "UInt32", "value": 7,
                     "status": "Good"}
    assert variables["Line1/Speed"]["value"] == 1.5
    assert not any(p.startswith("Server") for p in variables), "the Server object is skipped"
    assert not (tmp_path / "store").exists()


async def test_browse_under_a_node_and_a_node_that_is_not_there(
        tmp_path: Path, vendor: VendorServer) -> None:
    config = opcua_config(tmp_path, vendor.endpoint)
    run = await run_try(config, "--device", "sorter-9", "--browse",
                        "--node", f"nsu={NS};s=ParcelRetriedType")
    assert run.code == 0, run.stderr
    assert run.lines[0] == (f"event type ParcelRetriedType  nsu={NS};s=ParcelRetriedType"
                            "  (subtype of ParcelDivertedType)")
    assert any(t.split()[:3] == ["Attempt", "UInt16", "ParcelRetriedType"] for t in run.lines)
    assert run.lines[-1] == "sorter-9: 1 event type(s), 0 variable(s)"
    run = await run_try(config, "--device", "sorter-9", "--browse", "--json",
                        "--node", f"nsu={NS};s=Line1.Counters")
    assert run.code == 0, run.stderr
    assert [(v["path"], v["value"]) for v in run.of("variable")] == [("Total", 7)]
    assert run.of("event_type") == []
    run = await run_try(config, "--device", "sorter-9", "--browse", "--node",
                        f"nsu={NS};s=NoSuchNode")
    assert run.code == 2 and "is not on the server" in run.lines[-1]
    run = await run_try(config, "--device", "sorter-9", "--browse", "--node",
                        "nsu=urn:other;s=X")
    assert run.code == 2 and "namespace 'urn:other'" in run.lines[-1]


async def test_browse_of_a_server_that_is_not_there_fails(tmp_path: Path) -> None:
    config = opcua_config(tmp_path, f"opc.tcp://127.0.0.1:{free_port()}/")
    run = await run_try(config, "--device", "sorter-9", "--browse")
    assert run.code == 1
    assert "sorter-9: cannot open a session with opc.tcp://127.0.0.1:" in run.stderr


def holes_plc() -> SimPlc:
    """A PLC whose tables hold only some ranges: 0x02 for the rest.

    (A ``SimData`` with a list of values holds one register per value; bits
    come 16 coils to a register.)
    """
    return SimPlc(SimDevice(id=1, simdata=(
        [SimData(0, values=[True, False, True, True], datatype=DataType.BITS)],
        [SimData(0, count=1, values=False, datatype=DataType.BITS, readonly=True)],
        [SimData(0, values=list(range(100, 110)), datatype=DataType.REGISTERS),
         SimData(20, values=[7, 0xFFFF, 9], datatype=DataType.REGISTERS),
         SimData(40, values=[42], datatype=DataType.REGISTERS)],
        [SimData(0, values=[1, 2], datatype=DataType.REGISTERS)],
    )))


def modbus_config(tmp_path: Path, port: int, **extra: Any) -> Path:
    return write_config(tmp_path, [{
        "id": "plc-1", "driver": "modbus", "port": port, "role": "conveyor",
        "timeout": "300ms", **extra,
        "points": [{"name": "heartbeat", "table": "input", "address": 0,
                    "role": "heartbeat"}]}])


async def test_scan_reports_the_ranges_that_answer_with_their_values_and_the_holes(
        tmp_path: Path) -> None:
    plc = holes_plc()
    await plc.start()
    try:
        config = modbus_config(tmp_path, plc.port)
        run = await run_try(config, "--device", "plc-1", "--scan", "--json",
                            "--start", "0", "--end", "45")
        coils = await run_try(config, "--device", "plc-1", "--scan", "--table", "coil",
                              "--start", "0", "--end", "70")
    finally:
        await plc.stop()
    assert run.code == 0, run.stderr
    ranges = [(r["start"], r["end"], r["status"], r["values"]) for r in run.of("range")]
    assert ranges == [
        (0, 9, "answers", list(range(100, 110))),
        (10, 19, "illegal_address", []),
        (20, 22, "answers", [7, 0xFFFF, 9]),
        (23, 39, "illegal_address", []),
        (40, 40, "answers", [42]),
        (41, 45, "illegal_address", []),
    ]
    assert run.of("range")[1]["detail"] == "0x02 ILLEGAL DATA ADDRESS"
    (summary,) = run.of("summary")
    assert summary["answering"] == 14 and summary["addresses"] == 46
    assert coils.code == 0, coils.stderr
    # The simulator serves bits a register (16 coils) at a time: 0..15 exist, the rest not.
    assert coils.lines == [
        "coil 0..15 (16): answers",
        "        0: true  false  true  true  false  false  false  false  false  false",
        "       10: false  false  false  false  false  false",
        "coil 16..70 (55): illegal address - 0x02 ILLEGAL DATA ADDRESS",
        "plc-1: 16 of 71 coil address(es) 0..70 answer",
    ]
    assert not (tmp_path / "store").exists()


class SilentAbovePlc:
    """A Modbus TCP server answering holding reads below ``limit``; silent for any other."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.requests = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                fc, address, count = struct.unpack(">BHH", pdu[:5])
                self.requests += 1
                if fc != 3 or address + count > self.limit:
                    continue  # no answer at all
                body = struct.pack(">BB", fc, 2 * count) + b"".join(
                    struct.pack(">H", address + i) for i in range(count))
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        writer.close()


async def test_scan_of_a_device_that_stays_silent_for_unmapped_addresses(
        tmp_path: Path) -> None:
    plc = SilentAbovePlc(limit=12)
    await plc.start()
    try:
        config = modbus_config(tmp_path, plc.port, timeout="200ms")
        run = await run_try(config, "--device", "plc-1", "--scan", "--json",
                            "--start", "0", "--end", "15")
    finally:
        await plc.stop()
    assert run.code == 0, run.stderr
    ranges = [(r["start"], r["end"], r["status"]) for r in run.of("range")]
    assert ranges == [(0, 11, "answers"), (12, 15, "no_answer")]
    assert run.of("range")[0]["values"] == list(range(12)), "each register holds its address"
    assert run.of("range")[1]["detail"] == "no answer within 0.2s"


async def test_scan_of_a_device_that_is_not_there_fails(tmp_path: Path) -> None:
    config = modbus_config(tmp_path, free_port())
    run = await run_try(config, "--device", "plc-1", "--scan")
    assert run.code == 1 and "plc-1: cannot connect to 127.0.0.1:" in run.stderr
