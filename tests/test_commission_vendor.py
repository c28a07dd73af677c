"""``warehouse-gateway try`` against the vendor devices: what the integrator sees on site.

The real command runs as a child process against the three vendor simulators
(``python -m simulators vendor-sorter|vendor-plc|vendor-scanner``, each its own
process) with the mapping examples of docs/examples as written (only where the
device listens is the test's). What ``try`` prints — signals, events, dead
letters — must match what each device's own JSON-lines ledger says happened,
with the ids the gateway would give; an unmapped value shows as its dead letter
with the raw value; and nothing is kept: no store file, the gateway's broker
session and what it holds untouched, the WMS simulator received nothing.
``--browse`` lists the vendor sorter's own event type and fields, ``--scan``
reports the vendor PLC's holes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from commission import TryProcess, run_try, write_config
from mapped import example_device
from test_commission_try import GATEWAY_CLIENT, _session, assert_nothing_kept
from test_gateway_e2e_mapped_plc import expected_moves, plc_device
from test_gateway_e2e_mapped_scanner import DEVICE as SCANNER
from test_gateway_e2e_mapped_scanner import expected as expected_reads
from test_gateway_e2e_mapped_sorter import DEVICE as SORTER
from test_gateway_e2e_mapped_sorter import UNKNOWN, check_event, sorter_device
from test_gateway_e2e_mapped_sorter import expected as expected_confirms

from simulators.broker import MosquittoBroker
from simulators.harness.vendor import (
    VendorPlcProcess,
    VendorScannerProcess,
    VendorSorterProcess,
    fire_confirms,
)
from simulators.wms import WmsSimulator


def _by_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {e["event"]["event_id"]: e["event"] for e in events}
    assert len(out) == len(events), "try showed one event twice"
    return out


async def test_try_vendor_sorter_shows_each_confirm_and_the_unknown_code(
        tmp_path: Path, wms: WmsSimulator) -> None:
    with VendorSorterProcess(tmp_path / "sorter", rate=0) as sorter:
        await asyncio.to_thread(sorter.start)
        config = write_config(tmp_path, [sorter_device(sorter.endpoint)], wms_url=wms.url)
        proc = TryProcess(config, "--device", SORTER, "--duration", "6", "--json")
        await proc.start()
        try:
            await proc.until("connected")
            await asyncio.sleep(1.0)  # the event subscription is in place
            for count, code in ((3, 0), (1, 1), (1, 2), (1, UNKNOWN), (1, 0)):
                await fire_confirms(sorter.endpoint, count, code)
            run = await proc.finish()
        finally:
            await proc.kill()
        ledger = sorter.ledger("divert_confirm")
    assert run.code == 0, run.stderr
    assert len(ledger) == 7
    # One signal per confirm the sorter fired, with its raw fields.
    signals = [s for s in run.of("signal") if s["point"] == "divert"]
    assert len(signals) == len(ledger)
    want = expected_confirms(ledger)
    events = _by_id(run.of("event"))
    assert set(events) == set(want) and len(want) == 6
    for event_id, event in events.items():
        check_event(event, want[event_id])
    # The code the mapping does not know: its dead letter names it, with the raw value.
    (dead,) = run.of("dead_letter")
    (unknown,) = [e for e in ledger if e["result_code"] == UNKNOWN]
    assert dead["device"] == SORTER
    assert dead["reason"] == f"unmapped_value: field 'ResultCode' value {UNKNOWN} is not mapped"
    assert dead["context"] == {"point": "divert", "field": "ResultCode", "value": str(UNKNOWN)}
    assert f'"ParcelId": {unknown["parcel_id"]}, "Sequence": {unknown["sequence"]}, ' \
        f'"ResultCode": {UNKNOWN}' in dead["payload"], dead
    (summary,) = run.of("summary")
    assert summary["signals"] >= len(ledger)
    assert_nothing_kept(tmp_path, wms)


async def test_try_vendor_plc_shows_the_moves_and_the_fault_the_plc_logged(
        tmp_path: Path, wms: WmsSimulator) -> None:
    plc = VendorPlcProcess(tmp_path / "plc", counter_start=2**32 - 2)
    with plc:
        await asyncio.to_thread(plc.start)
        config = write_config(tmp_path, [plc_device(plc.port)], wms_url=wms.url)
        proc = TryProcess(config, "--device", "plc-7", "--duration", "6", "--json")
        await proc.start()
        try:
            await proc.until("connected")
            await asyncio.sleep(1.0)  # a few polls: the first sight of every value
            seen_from = plc.ledger()[-1]["n"]
            await asyncio.to_thread(plc.control, "items", {"count": 3})  # across the wrap
            await asyncio.sleep(0.5)
            await asyncio.to_thread(plc.control, "track",
                                    {"container": "TOTE-00007", "from": 2, "to": 5})
            await asyncio.sleep(0.5)
            await asyncio.to_thread(plc.control, "fault", {"active": True, "code": 42})
            run = await proc.finish()
        finally:
            await proc.kill()
        ledger = plc.ledger()
    assert run.code == 0, run.stderr
    want = expected_moves(ledger, seen_from)
    events = _by_id(run.of("event"))
    moves = {i: e for i, e in events.items() if e["type"] == "move"}
    assert set(moves) == set(want) and len(want) == 4
    counts = sorted(e["data"]["count"] for e in moves.values() if "count" in e["data"])
    assert counts == sorted(e["value"] for e in want.values() if e["kind"] == "increment")
    assert counts == [0, 1, 2**32 - 1]
    (track,) = [e for e in moves.values() if "container" in e["data"]]
    assert (track["data"]["container"], track["data"]["from"], track["data"]["to"]) == (
        "TOTE-00007", "MERGE-1", "PACK-1")
    assert [e["data"]["reason"] for e in events.values() if e["type"] == "exception"] == ["jam"]
    assert [e["kind"] for e in ledger if e["kind"].startswith("fault_")] == ["fault_raised"]
    # The signals shown are the PLC's values: the counter as it ended.
    counter = [s["value"] for s in run.of("signal") if s["point"] == "items"]
    assert counter and counter[-1] == 1
    assert run.of("dead_letter") == []
    assert_nothing_kept(tmp_path, wms)


async def test_try_vendor_scanner_shows_each_read_and_leaves_the_gateways_session(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    dev = example_device("mapping-json-scanner")
    assert dev["id"] == SCANNER
    # The gateway's persistent session exists (it ran before and is stopped now).
    await asyncio.to_thread(_session, broker.port, GATEWAY_CLIENT, subscribe=dev["topic"])
    config = write_config(tmp_path, [dev], wms_url=wms.url, broker_port=broker.port)
    scanner = VendorScannerProcess(tmp_path / "scanner", broker.port, topic=dev["topic"],
                                   rate=20, total=10, seed=3, extra=["--noread-rate", "0.3"])
    proc = TryProcess(config, "--device", SCANNER, "--count", "10", "--json")
    await proc.start()
    try:
        await proc.until("connected")
        await asyncio.sleep(0.5)  # its subscription is in place
        with scanner:
            scanner.start()
            assert await asyncio.to_thread(scanner.wait_exit, 30) == 0
        run = await proc.finish()
    finally:
        await proc.kill()
    assert run.code == 0, run.stderr
    ledger = scanner.ledger("published")
    assert len(ledger) == 10
    want = expected_reads(ledger)
    assert 0 < len(want) < 10
    assert len(run.of("signal")) == 10
    events = _by_id(run.of("event"))
    assert set(events) == set(want)
    for event_id, event in events.items():
        p = want[event_id]
        assert event["type"] == "pack"
        assert event["data"]["code"] == p["barcode"]["value"]
        assert event["data"]["quantity"] == int(p["item"]["qty"])
        assert event["data"]["weight"] == p["item"]["weight_kg"]
    # A read without a barcode: a dead letter with the message as it came.
    dead = run.of("dead_letter")
    assert len(dead) == 10 - len(want)
    no_reads = [e["payload"] for e in ledger if e["payload"]["barcode"] is None]
    for d, p in zip(dead, no_reads, strict=True):
        assert f'"seq": {p["meta"]["seq"]}' in d["payload"] or \
            f'"seq":{p["meta"]["seq"]}' in d["payload"], d
    assert_nothing_kept(tmp_path, wms)
    # The gateway's session is untouched: still there, holding every read meanwhile.
    present, queued = await asyncio.to_thread(_session, broker.port, GATEWAY_CLIENT,
                                              subscribe=None)
    assert present, "try replaced the gateway's persistent session"
    assert len(queued) == 10


async def test_browse_the_vendor_sorter_lists_its_own_event_type_and_fields(
        tmp_path: Path) -> None:
    with VendorSorterProcess(tmp_path / "sorter", rate=0) as sorter:
        await asyncio.to_thread(sorter.start)
        config = write_config(tmp_path, [sorter_device(sorter.endpoint)])
        run = await run_try(config, "--device", SORTER, "--browse", "--json")
    assert run.code == 0, run.stderr
    types = {t["name"]: t for t in run.of("event_type")}
    assert "DivertConfirmEventType" in types, sorted(types)
    confirm = types["DivertConfirmEventType"]
    assert confirm["node"].endswith("s=DivertConfirmEventType")
    fields = {f["path"]: f["data_type"] for f in confirm["fields"]}
    assert fields["ParcelId"] == "UInt32" and fields["ResultCode"] == "Int32"
    assert {"Sequence", "Label", "InductPoint", "Destination"} <= set(fields)
    assert not (tmp_path / "store").exists()


async def test_scan_the_vendor_plc_reports_its_holes(tmp_path: Path) -> None:
    plc = VendorPlcProcess(tmp_path / "plc", counter_start=7)
    with plc:
        await asyncio.to_thread(plc.start)
        config = write_config(tmp_path, [plc_device(plc.port)])
        run = await run_try(config, "--device", "plc-7", "--scan", "--json", "--start", "0",
                            "--end", "45")
    assert run.code == 0, run.stderr
    ranges = [(r["start"], r["end"], r["status"]) for r in run.of("range")]
    assert ranges == [
        (0, 0, "illegal_address"), (1, 1, "answers"), (2, 10, "illegal_address"),
        (11, 12, "answers"), (13, 20, "illegal_address"), (21, 27, "answers"),
        (28, 28, "illegal_address"), (29, 29, "answers"), (30, 30, "illegal_address"),
        (31, 31, "answers"), (32, 40, "illegal_address"), (41, 41, "answers"),
        (42, 45, "illegal_address")]
    counter = next(r for r in run.of("range") if r["start"] == 11)
    assert counter["values"] == [7, 0], "CDAB: the low word first"
    (summary,) = run.of("summary")
    assert summary["answering"] == 1 + 2 + 7 + 1 + 1 + 1 and summary["addresses"] == 46
    assert not (tmp_path / "store").exists()
