"""A Modbus PLC read with a hand-written mapping (no preset), through the real gateway.

The project's conveyor simulator (a real pymodbus server) is mapped as a
generic PLC would be: its tracking ring by a tracking trigger, its 32-bit
CDAB good counter by a counter trigger (one event per increment, across the
counter's wrap), its jam bit by an edge trigger. What the PLC itself
recorded is the reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from e2e import start, wait_until
from test_gateway_e2e_conveyor import control

from gateway.core.events import make_event_id
from simulators.broker import free_port
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_plc import gateway_device
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.wms import WmsSimulator

SITE = "DC-EAST-1"
COUNTER_START = 2**32 - 3  # wraps after three totes

MAPPING: dict[str, Any] = {
    "ids": ["boot"],
    "triggers": [
        {"kind": "tracking", "seq": "tracking[{i}].seq", "slots": 12, "type": "move",
         "key": "mtrk:{boot}:{$tracking_seq}", "correlation": "container:{$data.container}",
         "data": {"container": {"field": "tracking[{i}].tote", "type": "string",
                                "empty_is_missing": True},
                  "from": {"field": "tracking[{i}].from", "map": {"1": "INDUCT-1"},
                           "default": "OUTSIDE"},
                  "to": {"field": "tracking[{i}].to", "map": {"1": "INDUCT-1"},
                         "ranges": [{"min": 2, "value": "LINE"}], "default": "OUTSIDE"},
                  "seq": "$tracking_seq", "missed": "$missed"}},
        {"kind": "counter", "point": "good_count", "bits": 32, "type": "telemetry",
         "key": "good:{boot}:{$count}", "data": {"count": "$count", "missed": "$missed"}},
        {"kind": "edge", "point": "jam", "edge": "both", "type": "exception",
         "key": "jam:{boot}:{fault_count}:{$edge}",
         "data": {"reason": {"field": "$edge",
                             "map": {"rising": "jam", "falling": "jam_cleared"}},
                  "zone": {"field": "jam_zone", "type": "int"}}},
    ],
}


@pytest.fixture
async def sim() -> AsyncIterator[ConveyorSimulator]:
    async with ConveyorSimulator(count=1, tote_rate=4.0, counter_start=COUNTER_START,
                                 noread_rate=0.0) as s:
        yield s


def _events(wms: WmsSimulator, type_: str) -> list[dict[str, Any]]:
    return [r["event"] for r in wms.events if r["event"]["type"] == type_]


async def test_mapped_plc_tracking_counter_and_edge_match_the_plc(
        wms: WmsSimulator, sim: ConveyorSimulator, tmp_path: Any) -> None:
    conv = sim[1]
    dev = gateway_device("plc-1", conv.port, poll_interval="100ms",
                         extra={"mapping": MAPPING, "backoff_initial": "100ms"})
    cfg = GatewaySetup(workdir=tmp_path / "gw", broker_port=free_port(), wms_url=wms.url,
                       scanners=0, synchronous="NORMAL", devices=[dev])
    with GatewayProcess(cfg) as gw:
        await start(gw)
        await wait_until(lambda: len(_events(wms, "move")) >= 6, 30, "first moves")
        await wait_until(lambda: conv.plc.good_count < COUNTER_START, 20, "the counter wrap")
        assert (await asyncio.to_thread(control, sim, "/devices/1/jam", {"zone": 3}))["raised"]
        await wait_until(lambda: bool(_events(wms, "exception")), 10, "the jam")
        await asyncio.to_thread(control, sim, "/devices/1/clear", {})
        await wait_until(lambda: len(_events(wms, "exception")) >= 2, 10, "the jam cleared")
        sim.freeze()
        want = {make_event_id(SITE, "plc-1", f"mtrk:{m.boot}:{m.seq}") for m in conv.plc.moves}
        await wait_until(lambda: want <= wms.accepted_ids(), 20, "every move at the WMS")
        final = conv.plc.good_count
        await wait_until(lambda: any(e["data"]["count"] == final
                                     for e in _events(wms, "telemetry")), 10,
                         "the last count")
        health = gw.status()["devices"]["plc-1"]["mapping"]
    moves = _events(wms, "move")
    assert {e["event_id"] for e in moves} == want
    assert len(moves) == len(conv.plc.moves)
    by_seq = {m.seq: m for m in conv.plc.moves}
    for e in moves:
        assert e["data"]["container"] == by_seq[e["data"]["seq"]].tote
        assert e["correlation_id"] == f"container:{e['data']['container']}"
        assert e["data"]["missed"] == 0
    counts = [e["data"]["count"] for e in _events(wms, "telemetry")]
    # One event per increment, in order, across the wrap at 2**32.
    start_count = counts[0]
    expected = [(start_count + i) % 2**32 for i in range((final - start_count) % 2**32 + 1)]
    assert counts == expected and 0 in counts
    jams = [(e["data"]["reason"], e["data"]["zone"]) for e in _events(wms, "exception")]
    assert jams == [("jam", 3), ("jam_cleared", 0)]  # the PLC clears the zone with the jam
    assert health["dead_letters"] == {}
    assert health["by_type"]["move"] == len(moves)
    assert wms.stats()["duplicates"] == 0
