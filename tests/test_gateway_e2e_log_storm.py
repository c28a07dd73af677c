"""No log storms from bad input: a hostile peer costs a few log lines, not one per message.

The process test feeds a real gateway (real Mosquitto, WMS simulator)
thousands of hostile scanner and VDA 5050 payloads, among them the ones that
used to make a recognizer raise (lone surrogates, integers beyond any float or
past Python's digit limit, JSON nested past the recursion limit).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from e2e import connect_fleet, publish, site, start, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from test_gateway_e2e_scanners import expected_ids
from test_gateway_e2e_vda5050 import FLEET, M, fleet_device

from drivers.mqtt.driver import decode_scanner_read
from gateway.config import ScannerFields
from gateway.core.errors import IngestError
from gateway.ingest import IngestErrorLog
from gateway.recognizers.scanner import ScannerRecognizer
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.wms import WmsSimulator


class _Capture:
    """A logger that keeps what it was asked to write."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append(("error", event, fields))


def test_ingest_rejected_first_at_once_then_aggregated_counts() -> None:
    now = [0.0]
    cap = _Capture()
    errors = IngestErrorLog(interval_s=60.0, clock=lambda: now[0], logger=cap)
    for _ in range(2000):
        errors.record("scan-01", IngestError("not_json", "Expecting value"), topic="t")
        now[0] += 0.01
    errors.record("scan-02", IngestError("not_json", "Expecting value"), topic="t")
    assert [(e, f["device"], f["kind"]) for _, e, f in cap.lines] == [
        ("ingest_rejected", "scan-01", "not_json"), ("ingest_rejected", "scan-02", "not_json")]
    assert cap.lines[0][2]["detail"] == "Expecting value" and "repeated" not in cap.lines[0][2]
    assert errors.for_device("scan-01") == {"not_json": 2000}
    assert errors.flush() == 0  # interval not over yet
    now[0] = 61.0
    assert errors.flush() == 1
    agg = cap.lines[-1][2]
    assert agg["device"] == "scan-01" and agg["repeated"] == 1999 and agg["total"] == 2000
    assert errors.flush() == 0  # reported once


async def test_held_back_counts_are_written_without_further_input() -> None:
    now = [0.0]
    cap = _Capture()
    errors = IngestErrorLog(interval_s=0.2, clock=lambda: now[0], logger=cap)
    for _ in range(3):
        errors.record("scan-01", IngestError("bad_field", "x"))
    task = asyncio.create_task(errors.flush_every())
    try:
        now[0] = 1.0  # the interval is over; no more bad input arrives
        await wait_until(lambda: len(cap.lines) == 2, 5, "the periodic count line",
                         interval=0.01)
    finally:
        task.cancel()
    assert cap.lines[1][2]["repeated"] == 2 and cap.lines[1][2]["total"] == 3


def test_recognizer_failed_throttled_with_one_traceback_per_device_and_type() -> None:
    now = [0.0]
    cap = _Capture()
    errors = IngestErrorLog(interval_s=60.0, clock=lambda: now[0], logger=cap)
    for i in range(2300):
        err = errors.failed("amr-fleet", ValueError(f"bad {i}"), topic="t")
        assert err.kind == "recognizer_error" and f"bad {i}" in err.detail
    errors.failed("amr-fleet", KeyError("x"))
    now[0] = 100.0
    errors.failed("amr-fleet", ValueError("again"))
    lines = [f for _, e, f in cap.lines if e == "recognizer_failed"]
    assert [(f["error_type"], f.get("repeated")) for f in lines] == [
        ("ValueError", None), ("KeyError", None), ("ValueError", 2299)]
    assert isinstance(lines[0]["exc_info"], ValueError)
    assert isinstance(lines[1]["exc_info"], KeyError)
    assert "exc_info" not in lines[2]  # the traceback was already shown for this pair


SURROGATE = b'"\\ud800"'


def hostile_scanner_payloads(n: int) -> list[bytes]:
    """``n`` hostile scanner payloads: each kind of trouble, each read id unique."""
    templates = [
        b'{"code": %s, "read_id": %%d}' % SURROGATE,
        b'{"code": "TOTE-1", "read_id": %s}' % SURROGATE.replace(b"d800", b"dfff"),
        b'{"code": "TOTE-1", "read_id": %%d, "symbology": %s}' % SURROGATE,
        b'{"code": "TOTE-1", "read_id": %%d, "timestamp": %s}' % (b"9" * 400),
        b'{"code": %s, "read_id": %%d}' % (b"9" * 5000),
        b"[" * 30000 + b"%d",
        b'{"code": "TOTE-1", "read_id": %d, "timestamp": NaN}',
        b'{"code": {"nested": [1, {"x": null}]}, "read_id": %d}',
        b'{"code": 1e400, "read_id": %d}',
        b'{"code": "TOTE-1", "read_id": 1.5, "n": %d}',
        b'[%d]',
        b'{"read_id": %d}',
    ]
    return [templates[i % len(templates)].replace(b"%%d", b"%d") % i
            if b"%" in templates[i % len(templates)] else templates[i % len(templates)]
            for i in range(n)]


def hostile_vda_messages(n: int) -> list[tuple[str, bytes]]:
    """``n`` hostile VDA 5050 messages on well-formed topics."""
    base = f"uagv/v2/{M}/AMR-9"
    head = ('"headerId": %d, "timestamp": "2026-11-23T10:00:00Z", "version": "2.1.0", '
            f'"manufacturer": "{M}", "serialNumber": "AMR-9"')
    templates = [
        ("connection", '{' + head + ', "connectionState": "ONLINE", "x": "\\ud800"}'),
        ("connection", '{"headerId": ' + "9" * 5000 + '}'),
        ("state", "[" * 30000),
        ("order", '{' + head + ', "orderId": 5, "nodes": {"a": 1}}'),
        ("instantActions", '{' + head + ', "actions": [{"actionId": NaN}]}'),
        ("connection", '{' + head.replace('"2026-11-23T10:00:00Z"', "1e999")
         + ', "connectionState": "ONLINE"}'),
    ]
    out = []
    for i in range(n):
        topic, text = templates[i % len(templates)]
        out.append((f"{base}/{topic}", (text % i if "%d" in text else text).encode()))
    return out


async def test_thousands_of_hostile_payloads_cost_a_handful_of_lines(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    scanners = hostile_scanner_payloads(2000)
    vda = hostile_vda_messages(300)
    cfg = site(tmp_path, broker, wms, scanners=2, devices=[fleet_device()])
    with GatewayProcess(cfg) as gw:
        await start(gw)
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             protocol=mqtt.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            def send_all() -> None:
                pending = []
                for i, payload in enumerate(scanners):
                    topic = f"site/DC-EAST-1/scanners/scan-{i % 2 + 1:02d}/reads"
                    pending.append(client.publish(topic, payload, qos=1))
                for topic, payload in vda:
                    pending.append(client.publish(topic, payload, qos=1))
                for info in pending:
                    info.wait_for_publish(30)

            await asyncio.to_thread(send_all)
        finally:
            client.loop_stop()
            client.disconnect()
        total = len(scanners) + len(vda)
        await wait_until(
            lambda: gw.status()["store"].get("dead_letters", {}).get("ingest", 0) >= total, 60,
            f"{total} ingest dead letters")
        snap = gw.status()
        assert snap["store"]["dead_letters"]["ingest"] == total
        per_device = {d: sum(v.get("ingest_errors", {}).values())
                      for d, v in snap["devices"].items()}
        assert per_device == {"scan-01": 1000, "scan-02": 1000, FLEET: len(vda)}
        # None of them is a recognizer error: each has a reason naming what was wrong.
        kinds = {k for v in snap["devices"].values() for k in v.get("ingest_errors", {})}
        assert "recognizer_error" not in kinds
        assert kinds <= {"bad_field", "bad_timestamp", "not_json", "not_object",
                         "missing_field", "invalid_message"}

        # Valid reads sent after them still reach the WMS.
        fleet = connect_fleet(broker, count=2)
        reads = await publish(fleet, 200)
        fleet.close()
        want = expected_ids(reads)
        await wait_until(lambda: wms.accepted_ids() >= want, 30, "the valid reads at the WMS")

        failed = gw.log_events("recognizer_failed")
        rejected = gw.log_events("ingest_rejected")
        assert not failed, failed[:2]
        # One line per device and kind: a handful, not one per payload.
        pairs = [(e["device"], e["kind"]) for e in rejected]
        assert len(pairs) == len(set(pairs)) <= 12, pairs
        log_bytes = gw.log_path.stat().st_size
        assert log_bytes < 200_000, f"{log_bytes} bytes of log for {total} bad messages"
        assert "Traceback" not in gw.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize(("payload", "kind"), [
    (b'{"code": "\\ud800", "read_id": 1}', "bad_field"),
    (b'{"code": "TOTE-1", "read_id": "\\udfff"}', "bad_field"),
    (b'{"code": "TOTE-1", "read_id": 1, "symbology": "\\ud834"}', "bad_field"),
    (b'{"code": "TOTE-1", "read_id": 1, "timestamp": ' + b"9" * 400 + b"}", "bad_timestamp"),
    (b'{"code": ' + b"9" * 5000 + b"}", "not_json"),
    (b"[" * 30000, "not_json"),
    (b'{"code": 1e400, "read_id": 1}', "bad_field"),
])
def test_hostile_scanner_payloads_are_ingest_errors_not_crashes(payload: bytes,
                                                                kind: str) -> None:
    # These used to raise OverflowError, ValueError, RecursionError or
    # UnicodeEncodeError out of the decoder or the recognizer.
    rec = ScannerRecognizer(site="DC-EAST-1", device="scan-01")
    with pytest.raises(IngestError) as caught:
        rec.feed(decode_scanner_read(payload, ScannerFields(), "scan-01", 1.8e9, 1 << 20))
    assert caught.value.kind == kind
    assert len(caught.value.detail) < 300
