"""Table tests of the sorter recognizer (pure: signals in, events out)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.events import Priority, Signal, make_event_id
from gateway.recognizers.sorter import DIVERT_RESULTS, SorterRecognizer

SITE, DEV = "DC-EAST-1", "sorter-1"
T = 1_795_000_000.25  # a source time
RX = T + 0.011  # receive time


def confirm(result: str, *, tracking: str = "T00000042", seq: int | None = 7,
            barcode: str | None = "TOTE-000123", chute: str | None = "CHUTE-03",
            induct: str | None = "INDUCT-1", time: float | None = T) -> Signal:
    return Signal(DEV, "divert_confirm", result, RX, time, f"{tracking}:{seq}",
                  attrs={"tracking_id": tracking, "confirm_seq": seq, "barcode": barcode,
                         "chute": chute, "induct": induct})


def scan(code: str, *, scan_id: str | None = "17", reader: str | None = "READER-1",
         code_type: str | None = "CODE128", time: float | None = T) -> Signal:
    return Signal(DEV, "scan", code, RX, time, scan_id,
                  attrs={"code_type": code_type, "reader": reader})


def change(point: str, value: Any, *, kind: str = "telemetry",
           stamp_us: int = 1_795_000_000_250_000, node: str = "ns=2;s=Sorter.State",
           quality: str = "good") -> Signal:
    return Signal(DEV, point, value, RX, stamp_us / 1e6, str(stamp_us), quality,
                  attrs={"node": node, "kind": kind})


CASES: list[tuple[str, Signal, str, str, dict[str, Any]]] = [
    ("diverted is a move", confirm("diverted"), "move", "divert:T00000042:7",
     {"container": "TOTE-000123", "from": "INDUCT-1", "to": "CHUTE-03",
      "tracking_id": "T00000042", "confirm_seq": 7, "sorter": DEV}),
    ("no-read", confirm("no-read", barcode="", chute=None), "exception", "divert:T00000042:7",
     {"reason": "no_read", "container": None, "from": "INDUCT-1", "chute": None,
      "tracking_id": "T00000042", "confirm_seq": 7, "sorter": DEV}),
    ("no-destination", confirm("no-destination", chute=None), "exception", "divert:T00000042:7",
     {"reason": "no_destination", "container": "TOTE-000123", "from": "INDUCT-1",
      "chute": None, "tracking_id": "T00000042", "confirm_seq": 7, "sorter": DEV}),
    ("chute-full", confirm("chute-full"), "exception", "divert:T00000042:7",
     {"reason": "chute_full", "container": "TOTE-000123", "from": "INDUCT-1",
      "chute": "CHUTE-03", "tracking_id": "T00000042", "confirm_seq": 7, "sorter": DEV}),
    ("recirculated", confirm("recirculated", seq=8), "exception", "divert:T00000042:8",
     {"reason": "recirculated", "container": "TOTE-000123", "from": "INDUCT-1",
      "chute": "CHUTE-03", "tracking_id": "T00000042", "confirm_seq": 8, "sorter": DEV}),
    ("lost", confirm("lost", chute=None), "exception", "divert:T00000042:7",
     {"reason": "lost", "container": "TOTE-000123", "from": "INDUCT-1", "chute": None,
      "tracking_id": "T00000042", "confirm_seq": 7, "sorter": DEV}),
    ("confirm without seq keys on time", confirm("diverted", seq=None), "move",
     "divert:T00000042@1795000000250",
     {"container": "TOTE-000123", "from": "INDUCT-1", "to": "CHUTE-03",
      "tracking_id": "T00000042", "confirm_seq": None, "sorter": DEV}),
    ("confirm without induct uses the configured one", confirm("diverted", induct=None), "move",
     "divert:T00000042:7",
     {"container": "TOTE-000123", "from": "INDUCT-CFG", "to": "CHUTE-03",
      "tracking_id": "T00000042", "confirm_seq": 7, "sorter": DEV}),
    ("scan", scan("TOTE-000123"), "scan", "scan:READER-1:17@1795000000250",
     {"code": "TOTE-000123", "symbology": "CODE128", "read_id": "17", "reader": "READER-1",
      "location": "INDUCT-1"}),
    ("scan without scan id", scan("TOTE-9", scan_id=None), "scan",
     "scan:READER-1@1795000000250",
     {"code": "TOTE-9", "symbology": "CODE128", "read_id": None, "reader": "READER-1",
      "location": "INDUCT-1"}),
    ("empty scan is a no-read", scan("", code_type=None), "exception",
     "scan:READER-1:17@1795000000250",
     {"reason": "no_read", "reader": "READER-1", "read_id": "17", "location": "INDUCT-1"}),
    ("NOREAD scan is a no-read", scan("NOREAD", reader=None), "exception",
     f"scan:{DEV}:17@1795000000250",
     {"reason": "no_read", "reader": DEV, "read_id": "17", "location": "INDUCT-1"}),
    ("status change", change("state", "Execute", kind="status"), "device_status",
     "dc:ns=2;s=Sorter.State@1795000000250000",
     {"point": "state", "value": "Execute", "quality": "good", "node": "ns=2;s=Sorter.State"}),
    ("telemetry", change("counter.total", 1234, node="ns=2;s=Sorter.Counters.Total"),
     "telemetry", "dc:ns=2;s=Sorter.Counters.Total@1795000000250000",
     {"point": "counter.total", "value": 1234, "quality": "good",
      "node": "ns=2;s=Sorter.Counters.Total"}),
    ("bad quality telemetry", change("belt_speed", None, quality="bad", node="ns=2;s=B"),
     "telemetry", "dc:ns=2;s=B@1795000000250000",
     {"point": "belt_speed", "value": None, "quality": "bad", "node": "ns=2;s=B"}),
]


@pytest.mark.parametrize(("name", "sig", "etype", "key", "data"), CASES,
                         ids=[c[0] for c in CASES])
def test_signal_to_event(name: str, sig: Signal, etype: str, key: str,
                         data: dict[str, Any]) -> None:
    rec = SorterRecognizer(site=SITE, device=DEV, induct="INDUCT-CFG", location="INDUCT-1")
    (event,) = rec.feed(sig)
    doc = event.to_dict()
    assert doc["type"] == etype
    assert doc["event_id"] == make_event_id(SITE, DEV, key)
    assert doc["data"] == data
    assert doc["occurred_at"] == "2026-11-18T11:06:40.250Z"
    assert doc["observed_at"] == "2026-11-18T11:06:40.261Z"
    expected_priority = {"move": Priority.BUSINESS, "scan": Priority.BUSINESS,
                         "exception": Priority.EXCEPTION}.get(etype, Priority.TELEMETRY)
    assert event.priority == expected_priority


def test_every_result_is_mapped() -> None:
    rec = SorterRecognizer(site=SITE, device=DEV)
    kinds = {r: rec.feed(confirm(r))[0].type for r in DIVERT_RESULTS}
    assert kinds == {"diverted": "move", "no-read": "exception", "no-destination": "exception",
                     "chute-full": "exception", "recirculated": "exception",
                     "lost": "exception"}
    assert (rec.moves, rec.exceptions) == (1, 5)


def test_redelivery_has_the_same_id_and_new_happenings_do_not() -> None:
    rec = SorterRecognizer(site=SITE, device=DEV)
    first = rec.feed(confirm("diverted"))[0]
    again = rec.feed(confirm("diverted"))[0]  # re-read from history after a reconnect
    assert first.event_id == again.event_id
    recirc = rec.feed(confirm("diverted", seq=8))[0]  # same item, next pass
    other = rec.feed(confirm("diverted", tracking="T00000043"))[0]
    assert len({first.event_id, recirc.event_id, other.event_id}) == 3
    value = rec.feed(change("state", "Execute"))[0]
    resent = rec.feed(change("state", "Execute"))[0]  # initial value after reconnect
    newer = rec.feed(change("state", "Execute", stamp_us=1_795_000_001_000_000))[0]
    assert value.event_id == resent.event_id != newer.event_id


def test_recognizer_reads_no_clock() -> None:
    rec = SorterRecognizer(site=SITE, device=DEV)
    untimed = confirm("diverted", time=None)
    doc = rec.feed(untimed)[0].to_dict()
    assert doc["occurred_at"] == doc["observed_at"] == "2026-11-18T11:06:40.261Z"
