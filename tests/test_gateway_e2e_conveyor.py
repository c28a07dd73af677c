"""Conveyor PLCs (Modbus TCP simulator) → gateway process → WMS simulator, end to end.

The events the WMS accepted are compared with what each simulated PLC
recorded (its tracking log, its faults, its counters), across PLC warm and
cold restarts and a SIGKILL of the gateway.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from e2e import alert_messages, start, wait_until

from gateway.core.events import make_event_id
from simulators.broker import free_port
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_plc import ConveyorPlc, gateway_device
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.wms import WmsSimulator

SITE = "DC-EAST-1"
COUNTER_START = 2**32 - 3  # the good counter wraps after three totes


def gateway(tmp_path: Path, wms: WmsSimulator, sim: ConveyorSimulator,
            **extra: Any) -> GatewayProcess:
    keys = {"backoff_initial": "100ms", "backoff_max": "500ms", "timeout": "1s",
            "zones": {"1": "INDUCT-1"}} | extra
    devices = [gateway_device(c.id, c.port, poll_interval="100ms", extra=keys)
               for c in sim.conveyors]
    cfg = GatewaySetup(workdir=tmp_path / "gw", broker_port=free_port(), wms_url=wms.url,
                       scanners=0, synchronous="NORMAL", devices=devices)
    return GatewayProcess(cfg)


def control(sim: ConveyorSimulator, path: str, body: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    req = urllib.request.Request(sim.control_url + path, method="POST" if body is not None
                                 else "GET", data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


async def post(sim: ConveyorSimulator, path: str, body: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    return await asyncio.to_thread(control, sim, path, body if body is not None else {})


def events_of(wms: WmsSimulator, device: str, type_: str) -> list[dict[str, Any]]:
    return [r["event"] for r in wms.events
            if r["event"]["device"] == device and r["event"]["type"] == type_]


def move_ids(plc: ConveyorPlc, device: str) -> list[str]:
    return [make_event_id(SITE, device, f"trk:{m.boot}:{m.seq}") for m in plc.moves]


async def caught_up(gw: GatewayProcess, wms: WmsSimulator, sim: ConveyorSimulator) -> None:
    """Freeze the lines and wait until the WMS holds every move each PLC recorded."""
    sim.freeze()
    for conv in sim.conveyors:
        want = set(move_ids(conv.plc, conv.id))
        await wait_until(lambda w=want: w <= wms.accepted_ids(), 20,  # type: ignore[misc]
                         f"every move of {conv.id} at the WMS")


@pytest.fixture
async def sim() -> AsyncIterator[ConveyorSimulator]:
    async with ConveyorSimulator(count=2, tote_rate=4.0, counter_start=COUNTER_START,
                                 noread_rate=0.0) as s:
        yield s


async def test_moves_jams_counters_across_plc_restarts(
        tmp_path: Path, wms: WmsSimulator, sim: ConveyorSimulator) -> None:
    with gateway(tmp_path, wms, sim) as gw:
        await start(gw)
        c1, c2 = sim[1], sim[2]
        await wait_until(lambda: len(events_of(wms, c1.id, "move")) >= 10, 20, "first moves")
        assert (await post(sim, "/devices/1/jam", {"zone": 3}))["raised"] is True
        await wait_until(lambda: bool(events_of(wms, c1.id, "exception")), 10, "the jam event")
        await wait_until(lambda: any("conveyor-01" in d and v.get("open_fault")
                                     for d, v in gw.status()["devices"].items()), 5,
                         "the open fault on the status page")
        await post(sim, "/devices/1/clear")
        await post(sim, "/devices/1/restart", {"mode": "warm", "down_s": 1.0})
        await wait_until(lambda: gw.status()["devices"][c1.id]["connects"] >= 2, 20,
                         "reconnect after the warm restart")
        await wait_until(lambda: c1.plc.good_count < COUNTER_START, 20, "the counter wrap")
        await caught_up(gw, wms, sim)
        await c2.restart("cold", down_s=0.3)
        sim.freeze(False)
        await wait_until(lambda: c2.plc.tracking_seq >= 10, 20, "moves of the new boot")
        await caught_up(gw, wms, sim)
        status = gw.status()
        log_down = gw.log_events("device_unavailable")
        log_back = gw.log_events("device_available")

    for conv in sim.conveyors:
        got = [e["event_id"] for e in events_of(wms, conv.id, "move")]
        want = move_ids(conv.plc, conv.id)
        assert sorted(got) == sorted(want), f"{conv.id}: lost or foreign moves"
        assert len(set(want)) == len(want) == len(conv.plc.moves)
        assert status["devices"][conv.id]["lost_moves"] == 0
    assert {m.boot for m in c2.plc.moves} == {1, 2}
    assert wms.stats()["duplicates"] == 0

    first = events_of(wms, c1.id, "move")[0]["data"]
    assert first["from"] is None and first["to"] == "INDUCT-1"
    assert first["container"].startswith("TOTE-")

    faults = events_of(wms, c1.id, "exception")
    assert [(e["data"]["reason"], e["data"]["zone"], e["data"]["fault_code"]) for e in faults] \
        == [("jam", "Z03", 101), ("jam_cleared", "Z03", 101)]
    assert [e["event_id"] for e in faults] == [
        make_event_id(SITE, c1.id, "fault:1:1"), make_event_id(SITE, c1.id, "fault_cleared:1:1")]

    good = [e["data"] for e in events_of(wms, c1.id, "telemetry")
            if e["data"]["counter"] == "good_count"]
    assert good[0]["value"] == COUNTER_START and good[0]["delta"] is None
    assert sum(g["delta"] for g in good[1:]) == (c1.plc.good_count - COUNTER_START) % 2**32
    assert good[-1]["value"] == c1.plc.good_count < COUNTER_START
    assert not any(g["reset"] for g in good), "a wrap is not a reset"
    cold = [e["data"] for e in events_of(wms, c2.id, "telemetry")
            if e["data"]["counter"] == "good_count" and e["data"]["boot"] == 2]
    assert cold[0]["value"] == 0 and cold[-1]["value"] == c2.plc.good_count
    states = [e["data"]["state"] for e in events_of(wms, c1.id, "device_status")]
    assert states == ["EXECUTE", "HELD", "EXECUTE"]

    # One warning per outage (the warm restart of 01, the cold one of 02), one info on return.
    assert sorted(e["device"] for e in log_down) == ["conveyor-01", "conveyor-02"]
    assert sorted(e["device"] for e in log_back) == ["conveyor-01", "conveyor-02"]


async def test_gateway_sigkill_loses_and_duplicates_nothing(
        tmp_path: Path, wms: WmsSimulator) -> None:
    async with ConveyorSimulator(count=1, tote_rate=0.4) as sim:
        conv = sim[1]
        with gateway(tmp_path, wms, sim) as gw:
            await start(gw)
            await wait_until(lambda: len(events_of(wms, conv.id, "move")) >= 3, 20,
                             "first moves")
            conv.plc.jam(2)
            await wait_until(lambda: bool(events_of(wms, conv.id, "exception")), 10, "the jam")
            await asyncio.to_thread(gw.kill)
            conv.plc.clear()  # cleared while the gateway is down
            scans = conv.plc.heartbeat + 5
            await wait_until(lambda: conv.plc.heartbeat >= scans, 10, "PLC scans after the clear")
            await start(gw)
            await caught_up(gw, wms, sim)
            await wait_until(lambda: len(events_of(wms, conv.id, "exception")) >= 2, 10,
                             "the clear, read after the restart")
    got = Counter(e["event_id"] for e in events_of(wms, conv.id, "move"))
    assert set(got) == set(move_ids(conv.plc, conv.id)), "lost or foreign moves"
    assert max(got.values()) == 1
    faults = events_of(wms, conv.id, "exception")
    # The clear was first seen by the restarted gateway, when the PLC no longer showed the
    # code: it pairs with the jam by correlation id, its reason is the generic one.
    assert [(e["data"]["reason"], e["correlation_id"]) for e in faults] == [
        ("jam", "fault:1:1"), ("fault_cleared", "fault:1:1")]
    # The restarted gateway re-read the ring and the latest fault under the same ids.
    assert wms.stats()["duplicates"] > 0


async def test_exception_responses_and_bad_values_seen_by_the_site_engineer(
        tmp_path: Path, wms: WmsSimulator) -> None:
    async with ConveyorSimulator(count=1, tote_rate=1.0) as sim:
        with gateway(tmp_path, wms, sim) as gw:
            await start(gw)
            dev = sim[1].id
            await wait_until(lambda: gw.status()["devices"][dev]["polls"] > 2, 10, "polls")
            await post(sim, "/devices/1/exception", {"code": 4, "function": 1})
            await wait_until(lambda: any("0x04 SERVER DEVICE FAILURE" in a
                                         for a in alert_messages(gw.status())), 10, "the alert")
            await wait_until(lambda: gw.status()["devices"][dev]["failures"] > 3, 10,
                             "more failed polls")
            await post(sim, "/devices/1/exception", {"code": 0})
            await post(sim, "/devices/1/override", {"table": "input", "address": 16,
                                                     "values": [0x80FF, 0x0000]})  # -inf BADC
            await wait_until(lambda: gw.status()["store"]["dead_letters"]["ingest"] == 1, 10,
                             "the ingest dead letter")
            status = gw.status()
            # The device answers again: only the unreadable value waits for an operator.
            assert [(a["kind"], a["severity"]) for a in status["alerts"]] == [
                ("dead_letters_waiting", "info")], status["alerts"]
            assert status["devices"][dev]["ingest_errors"] == {"not_finite": 1}
            assert status["devices"][dev]["exceptions"]["0x04 SERVER DEVICE FAILURE"] > 3
            down = gw.log_events("device_unavailable")
            assert [d["error"] for d in down] == [
                "0x04 SERVER DEVICE FAILURE reading coil 0..5"]
            assert len(gw.log_events("device_available")) == 1
            rejected = gw.log_events("ingest_rejected")
            assert [(r["device"], r["kind"], r["point"]) for r in rejected] == [
                (dev, "not_finite", "motor_current")]
