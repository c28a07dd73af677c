"""A generic PLC (Modbus, a vendor's map) mapped → WMS: triggers make what the PLC logged.

The gateway runs the device table of docs/examples/mapping-conveyor-plc.toml
as written (only host and port are the test's) against the vendor PLC
simulator in its own process: a CDAB item counter near 2^32, a tracking
group, a fault coil and a temperature, with holes between them that refuse
reads. The test drives the PLC through its control API and compares the
events at the WMS with the PLC's ledger: one move per increment (across the
wrap), one move per tracking update, one exception per fault edge and per
threshold crossing, and telemetry of the temperature.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from e2e import delivered, start, wait_until
from mapped import event_id, example_device, mapped_gateway, wms_events

from simulators.harness.gateway import GatewayProcess
from simulators.harness.vendor import VendorPlcProcess
from simulators.wms import WmsSimulator

DEVICE = "plc-7"
FROM = {1: "INDUCT-1", 2: "MERGE-1"}
TO = {5: "PACK-1", 6: "PACK-2"}


def plc_device(port: int) -> dict[str, Any]:
    dev = example_device("mapping-conveyor-plc", host="127.0.0.1", port=port,
                         poll_interval="100ms")
    assert dev["id"] == DEVICE
    return dev


def boots(ledger: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Each ledger entry with the PLC's boot count when it happened."""
    boot, out = 0, []
    for e in ledger:
        if e["kind"] == "boot":
            boot = e["boot"]
        else:
            out.append((boot, e))
    return out


def expected_moves(ledger: list[dict[str, Any]], seen_from: int) -> dict[str, dict[str, Any]]:
    """Event id → ledger entry of every increment and tracking update after entry ``seen_from``."""
    out = {}
    for boot, e in boots(ledger):
        if e["n"] <= seen_from:
            continue
        if e["kind"] == "increment":
            out[event_id(DEVICE, f"items:{boot}:{e['value']}")] = e
        elif e["kind"] == "tracking":
            out[event_id(DEVICE, f"trk:{boot}:{e['seq']}")] = e
    return out


async def connected(gw: GatewayProcess, up: bool = True) -> None:
    await wait_until(lambda: gw.status()["devices"][DEVICE]["connected"] is up, 20,
                     f"the PLC {'connected' if up else 'gone'}")


def exceptions(wms: WmsSimulator) -> list[dict[str, Any]]:
    return wms_events(wms, DEVICE, "exception")


async def test_counter_tracking_fault_and_threshold_make_what_the_plc_logged(
        tmp_path: Path, wms: WmsSimulator) -> None:
    plc = VendorPlcProcess(tmp_path / "plc", counter_start=2**32 - 3)
    with plc, mapped_gateway(tmp_path, wms, [plc_device(plc.port)]) as gw:
        await asyncio.to_thread(plc.start)
        # One tracking update before the gateway looks: first sight makes its move.
        plc.control("track", {"container": "TOTE-00001", "from": 1, "to": 5})
        await start(gw)
        await connected(gw)
        await wait_until(lambda: gw.status()["devices"][DEVICE]["polls"] >= 2, 10, "two polls")
        seen_from = plc.ledger()[-1]["n"] - 1  # the tracking update, seen at first sight

        def moves() -> set[str]:
            return {e["event_id"] for e in wms_events(wms, DEVICE, "move")}

        async def step(what: str, body: dict[str, Any]) -> None:
            plc.control(what, body)
            want = set(expected_moves(plc.ledger(), seen_from))
            await wait_until(lambda: moves() >= want, 10, f"the moves after {what} {body}")

        # Increments: one at a time, then a jump of 4 across the 32-bit wrap.
        await step("items", {"count": 1})
        await step("items", {"count": 1})
        await step("items", {"count": 4})
        for container, src, dst in (("TOTE-00002", 2, 6), ("TOTE-00003", 1, 6)):
            await step("track", {"container": container, "from": src, "to": dst})
        # A fault raised and cleared, each edge seen by a poll.
        plc.control("fault", {"active": True, "code": 42})
        await wait_until(lambda: len(exceptions(wms)) == 1, 10, "the jam")
        plc.control("fault", {"active": False})
        await wait_until(lambda: len(exceptions(wms)) == 2, 10, "the jam cleared")
        # Above 80 °C raises; back to 79 is within the hysteresis; below 75 clears.
        for value, n in ((85.0, 3), (79.0, 3), (74.0, 4)):
            plc.control("temperature", {"value": value})
            await wait_until(lambda n=n: len(exceptions(wms)) == n, 10,
                             f"{n} exceptions after {value} °C")
            await wait_until(lambda v=value: any(
                e["data"]["point"] == "motor_temp" and e["data"]["value"] == v
                for e in wms_events(wms, DEVICE, "telemetry")), 10, f"telemetry {value} °C")
        await delivered(gw)
        ledger = plc.ledger()
        want = expected_moves(ledger, seen_from)
        got = wms_events(wms, DEVICE, "move")
        assert {e["event_id"] for e in got} == set(want)
        assert wms.stats()["duplicates"] == 0
        increments = [e for e in want.values() if e["kind"] == "increment"]
        assert [e["value"] for e in increments] == [2**32 - 2, 2**32 - 1, 0, 1, 2, 3]
        for event in got:
            entry = want[event["event_id"]]
            if entry["kind"] == "increment":
                assert event["data"]["count"] == entry["value"]
                assert (event["data"]["from"], event["data"]["to"]) == ("INFEED", "ZONE-2")
            else:
                assert event["data"]["container"] == entry["container"]
                assert event["data"]["from"] == FROM[entry["from_station"]]
                assert event["data"]["to"] == TO[entry["to_station"]]
                assert event["data"]["seq"] == entry["seq"]
                assert event["correlation_id"] == f"container:{entry['container']}"
        assert [e["data"]["reason"] for e in exceptions(wms)] == [
            "jam", "jam_cleared", "overheat", "overheat_cleared"]
        kinds = [e["kind"] for e in ledger if e["kind"].startswith("fault_")]
        assert kinds == ["fault_raised", "fault_cleared"]
        temps = [e["data"]["temperature"] for e in exceptions(wms)[2:]]
        assert temps == [85.0, 74.0]
        status = gw.status()["devices"][DEVICE]
        assert status["connected"] is True
        # The holes between the groups answer 0x02: the reads were split, nothing is lost.
        assert status["requests_per_poll"] > 3


async def test_a_plc_restart_continues_the_ids_and_repeats_no_move(
        tmp_path: Path, wms: WmsSimulator) -> None:
    plc = VendorPlcProcess(tmp_path / "plc")
    with plc, mapped_gateway(tmp_path, wms, [plc_device(plc.port)]) as gw:
        await asyncio.to_thread(plc.start)
        await start(gw)
        await connected(gw)
        await wait_until(lambda: gw.status()["devices"][DEVICE]["polls"] >= 2, 10, "two polls")
        seen_from = plc.ledger()[-1]["n"]

        async def settle() -> None:
            want = set(expected_moves(plc.ledger(), seen_from))
            await wait_until(lambda: {e["event_id"] for e in wms_events(wms, DEVICE, "move")}
                             >= want, 10, "the moves the PLC logged")

        plc.control("items", {"count": 2})
        plc.control("track", {"container": "TOTE-00010", "from": 1, "to": 5})
        await settle()
        await asyncio.to_thread(plc.stop, 10)
        await connected(gw, False)
        await asyncio.to_thread(plc.start)  # boot 2: counter and tracking group retained
        await connected(gw)
        await wait_until(lambda: gw.status()["devices"][DEVICE]["polls"] >= 2, 10, "polls")
        plc.control("items", {"count": 3})
        await settle()
        plc.control("track", {"container": "TOTE-00011", "from": 2, "to": 6})
        await settle()
        await delivered(gw)
        want = expected_moves(plc.ledger(), seen_from)
        got = wms_events(wms, DEVICE, "move")
        assert {e["event_id"] for e in got} == set(want), "a move repeated or lost"
        assert len(got) == 2 + 1 + 3 + 1
        assert [e["data"]["count"] for e in got if "count" in e["data"]] == [1, 2, 3, 4, 5]
