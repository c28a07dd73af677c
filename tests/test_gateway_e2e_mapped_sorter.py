"""A vendor sorter (OPC UA, its own event type, integer result codes) mapped → WMS, end to end.

The gateway runs the device table of docs/examples/mapping-vendor-sorter.toml
as written (only the endpoint is the test's) against the vendor sorter
simulator in its own process; the WMS simulator runs in the test's loop. The
sorter's ledger is the reference: every confirm it fired while the gateway
was subscribed (and, with history, every confirm at all) reaches the WMS
exactly once, with the id its source key gives, typed as the mapping says.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from e2e import delivered, start, wait_until
from mapped import event_id, example_device, mapped_gateway, wms_events

from simulators.harness.gateway import GatewayProcess
from simulators.harness.vendor import VendorSorterProcess, fire_confirms
from simulators.wms import WmsSimulator

DEVICE = "vendor-sorter"
REASONS = {1: "no_read", 2: "chute_full", 3: "no_destination", 4: "recirculated"}
#: A code the vendor's manual (and so the mapping) does not know.
UNKNOWN = 9


def sorter_device(endpoint: str, *, history: bool = False) -> dict[str, Any]:
    """The example's device table, pointed at this test's sorter."""
    dev = example_device("mapping-vendor-sorter", endpoint=endpoint, backoff_initial="100ms",
                         backoff_max="1s")
    assert dev["id"] == DEVICE
    dev["events"][0]["history"] = history
    return dev


def expected(ledger: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Event id → ledger entry of every confirm the mapping turns into an event."""
    return {event_id(DEVICE, f"vdivert:{e['parcel_id']}:{e['sequence']}"): e
            for e in ledger if e["result_code"] != UNKNOWN}


def check_event(event: dict[str, Any], entry: dict[str, Any]) -> None:
    """The event says what the device's confirm said, typed as the mapping says."""
    code, data = entry["result_code"], event["data"]
    assert data["tracking_id"] == str(entry["parcel_id"])
    assert data["confirm_seq"] == entry["sequence"]
    assert data["from"] == entry["induct_point"]
    assert data.get("container") == (entry["label"] or None)
    occurred = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
    assert abs(occurred.timestamp() * 1e6 - entry["time_us"]) < 2000, (event, entry)
    if code == 0:
        assert event["type"] == "move"
        assert data["to"] == entry["destination"]
        assert event["correlation_id"] == f"container:{entry['label']}"
    else:
        assert event["type"] == "exception"
        assert data["reason"] == REASONS[code]


async def connected(gw: GatewayProcess, up: bool = True, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    await wait_until(lambda: gw.status()["devices"][DEVICE]["connected"] is up, timeout,
                     f"the sorter {'connected' if up else 'gone'}")


async def test_without_history_every_confirm_while_subscribed_arrives_with_its_own_id(
        tmp_path: Path, wms: WmsSimulator) -> None:
    sorter = VendorSorterProcess(tmp_path / "sorter", rate=0)
    with sorter, mapped_gateway(tmp_path, wms, [sorter_device(sorter.endpoint)]) as gw:
        await asyncio.to_thread(sorter.start)
        await start(gw)
        await connected(gw)
        for count, code in ((5, 0), (2, 1), (2, 2), (1, 3), (1, 4), (1, 0), (1, UNKNOWN)):
            await fire_confirms(sorter.endpoint, count, code)
        want = expected(sorter.ledger("divert_confirm"))
        assert len(want) == 12
        await wait_until(lambda: {e["event_id"] for e in wms_events(wms, DEVICE)} >= set(want),
                         20, "every mapped confirm at the WMS")
        await wait_until(lambda: gw.status()["store"]["dead_letters"]["ingest"] == 1, 10,
                         "the unknown result code as one ingest dead letter")
        # The server goes away and comes back: ids continue from its retentive state.
        await asyncio.to_thread(sorter.stop, 10)
        await connected(gw, False)
        await asyncio.to_thread(sorter.start)
        await connected(gw)
        await fire_confirms(sorter.endpoint, 3, 0)
        await fire_confirms(sorter.endpoint, 1, 2)
        ledger = sorter.ledger("divert_confirm")
        want = expected(ledger)
        assert len(want) == 16 and {e["boot"] for e in ledger} == {1, 2}
        await wait_until(lambda: {e["event_id"] for e in wms_events(wms, DEVICE)} >= set(want),
                         20, "the confirms after the restart")
        await delivered(gw)
        events = wms_events(wms, DEVICE)
        assert {e["event_id"] for e in events} == set(want)
        assert wms.stats()["duplicates"] == 0
        for event in events:
            check_event(event, want[event["event_id"]])
        # The recirculated parcel's second pass is its own happening (same ParcelId).
        recirculated = next(e for e in ledger if e["result_code"] == 4)
        passes = [e for e in events if e["data"]["tracking_id"] == str(recirculated["parcel_id"])]
        assert sorted(e["type"] for e in passes) == ["exception", "move"]
        assert gw.status()["devices"][DEVICE]["connected"] is True


async def test_with_history_nothing_is_lost_across_a_server_kill(
        tmp_path: Path, wms: WmsSimulator) -> None:
    # 150 confirms per run (6 s at 25/s): the kill lands mid-stream even when the gateway
    # is slow to start on a loaded machine.
    runs = 150
    sorter = VendorSorterProcess(tmp_path / "sorter", rate=25, total=runs, history=True, seed=4)
    dev = sorter_device(sorter.endpoint, history=True)
    with sorter, mapped_gateway(tmp_path, wms, [dev]) as gw:
        await asyncio.to_thread(sorter.start)
        await start(gw)
        await wait_until(lambda: len(wms_events(wms, DEVICE)) >= 15, 20, "first events")
        await asyncio.to_thread(sorter.kill)  # a power cut mid-stream
        first_run = len(sorter.ledger("divert_confirm"))
        assert first_run < runs, "the sorter finished before the kill: not mid-stream"
        await connected(gw, False)
        # The restarted sorter fires as many more, some before the gateway is back.
        await asyncio.to_thread(sorter.start)
        await wait_until(lambda: len(sorter.ledger("divert_confirm")) == first_run + runs, 30,
                         "the second run's confirms")
        want = expected(sorter.ledger("divert_confirm"))
        await wait_until(lambda: {e["event_id"] for e in wms_events(wms, DEVICE)} >= set(want),
                         30, "every confirm the device logged, live or from history")
        await delivered(gw)
        events = wms_events(wms, DEVICE)
        assert {e["event_id"] for e in events} == set(want), "lost or foreign events"
        assert wms.stats()["duplicates"] == 0
        for event in events:
            check_event(event, want[event["event_id"]])
        assert gw.status()["devices"][DEVICE]["history_events"] > 0
