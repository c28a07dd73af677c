"""A JSON scanner with nested and business fields (MQTT) mapped → WMS: ``data`` carries them typed.

The gateway runs the device table of docs/examples/mapping-json-scanner.toml
as written against the vendor scanner simulator (its own process) on a real
Mosquitto. Every read in the scanner's ledger becomes one ``pack`` event
whose id comes from its own sequence and time, with the order, line, sku,
quantity, unit, weight and lpn typed as the mapping says (``qty`` arrives as
text and leaves as an integer); a read without a barcode is an ingest dead
letter, and a field no mapping names (``meta.fw``) stays out.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from e2e import delivered, start, wait_until
from mapped import event_id, example_device, mapped_gateway, wms_events

from simulators.broker import MosquittoBroker
from simulators.harness.vendor import VendorScannerProcess
from simulators.wms import WmsSimulator

DEVICE = "pack-scan-3"


def epoch_ms(iso: str) -> int:
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (int(when.timestamp()) * 1000) + when.microsecond // 1000


def expected(ledger: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Event id → payload of every read with a barcode."""
    return {event_id(DEVICE, f"read:{p['meta']['seq']}@{epoch_ms(p['meta']['ts'])}"): p
            for p in (e["payload"] for e in ledger) if p["barcode"] is not None}


async def test_nested_business_fields_arrive_typed_and_reads_resume_after_a_restart(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    dev = example_device("mapping-json-scanner")
    assert dev["id"] == DEVICE
    scanner = VendorScannerProcess(tmp_path / "scanner", broker.port, topic=dev["topic"],
                                   rate=20, total=12, seed=3, extra=["--noread-rate", "0.25"])
    with scanner, mapped_gateway(tmp_path, wms, [dev], broker_port=broker.port) as gw:
        await start(gw)
        await wait_until(lambda: gw.status()["devices"][DEVICE]["connected"], 10, "subscribed")
        scanner.start()
        assert await asyncio.to_thread(scanner.wait_exit, 30) == 0
        scanner.total = 5
        scanner.start()  # a restarted scanner continues its sequence
        assert await asyncio.to_thread(scanner.wait_exit, 30) == 0
        ledger = scanner.ledger("published")
        assert [e["seq"] for e in ledger] == list(range(1, 18))
        want = expected(ledger)
        no_reads = len(ledger) - len(want)
        assert 0 < no_reads < len(ledger)
        await wait_until(lambda: {e["event_id"] for e in wms_events(wms, DEVICE)} >= set(want),
                         20, "every read at the WMS")
        await wait_until(lambda: gw.status()["store"]["dead_letters"]["ingest"] == no_reads, 10,
                         "one ingest dead letter per read without a barcode")
        await delivered(gw)
        events = wms_events(wms, DEVICE)
        assert {e["event_id"] for e in events} == set(want)
        assert wms.stats()["duplicates"] == 0
        for event in events:
            p = want[event["event_id"]]
            assert event["type"] == "pack"
            assert event["data"] == {
                "code": p["barcode"]["value"], "symbology": "CODE128",
                "order": p["order"]["id"], "line": p["order"]["line"],
                "sku": p["item"]["sku"], "quantity": int(p["item"]["qty"]),
                "unit": p["item"]["uom"], "weight": p["item"]["weight_kg"],
                "lpn": p["barcode"]["value"], "location": "PACK-3"}
            assert isinstance(event["data"]["quantity"], int)
            assert isinstance(event["data"]["weight"], float)
            assert event["correlation_id"] == f"order:{p['order']['id']}"
            assert epoch_ms(event["occurred_at"]) == epoch_ms(p["meta"]["ts"])
        mapping = gw.status()["devices"][DEVICE]["mapping"]
        assert "missing_field" in str(mapping)
