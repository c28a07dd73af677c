"""The truth check against hand-made ledgers and WMS event lists (no processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.core.events import format_time
from simulators.site import Ledger, read_ledger, verify

SITE = "DC-EAST-1"
T0 = 1_800_000_000.0


def _ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path / "ledger.jsonl", SITE)
    led.record("induct_scan", "scan", "sorter-1", "scan:R:1@1800000000000", T0,
               container="TOTE-1", fields={"code": "TOTE-1", "read_id": "1"})
    led.record("divert", "move", "sorter-1", "divert:T1:1", T0 + 1, container="TOTE-1",
               fields={"container": "TOTE-1", "to": "CHUTE-01"})
    led.record("conveyor_move", "move", "conveyor-01", "trk:1:7", T0 + 2, container="TOTE-2",
               fields={"container": "TOTE-2", "seq": 7, "boot": 1})
    # A kind left out of the check below (an AMR's emergency stop).
    led.record("amr_estop", "exception", "amr-fleet", "estop:AMR-1:1", T0 + 3, container=None,
               fields={"reason": "emergency_stop"})
    return led


def _event(entry: dict[str, Any], **over: Any) -> dict[str, Any]:
    ev = {"event_id": entry["event_id"], "type": entry["type"], "schema": "wh.event.v1",
          "site": SITE, "device": entry["device"], "occurred_at": entry["at"],
          "observed_at": entry["at"], "correlation_id": None, "priority": "business",
          "data": dict(entry["fields"])}
    ev.update(over)
    return ev


def _events(led: Ledger, *, but: str | None = "amr_estop") -> list[dict[str, Any]]:
    return [_event(e.to_json()) for e in led.entries if e.kind != but]


def test_exact_delivery_is_clean_and_the_file_reads_back(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    led.close()
    site, entries = read_ledger(tmp_path / "ledger.jsonl")
    assert site == SITE and [e.kind for e in entries] == [e.kind for e in led.entries]
    report = verify(entries, _events(led), kinds=["induct_scan", "divert", "conveyor_move"])
    assert report["ok"] and report["expected"] == 3 and report["delivered"] == 3
    # A kind outside the check is written, not counted as missing.
    assert report["unchecked_kinds"] == {"amr_estop": 1}
    # By default every kind the gateway produces is checked: the e-stop is now missing.
    report = verify(entries, _events(led))
    assert report["missing"] == 1 and report["by_type"]["exception"]["missing"] == 1
    # Redelivered duplicates are the WMS's business; a line printed is one JSON line.
    assert "\n" not in json.dumps(report)


def test_each_problem_is_counted_per_type(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    scan, divert, move = (e.to_json() for e in led.entries[:3])
    phantom = _event(move, event_id="00000000-0000-5000-8000-000000000000")
    events = [
        _event(divert, occurred_at=format_time(T0 - 5)),  # before its scan: out of order
        _event(scan),
        phantom,
    ]
    report = verify(led.entries, events)
    assert not report["ok"]
    # The disorder counts on the later happening's type: the divert came before its scan.
    assert report["by_type"]["move"] == {"missing": 1, "phantom": 1, "wrong_fields": 1,
                                         "out_of_order": 1}
    assert report["by_type"]["scan"]["out_of_order"] == 0
    wrong = [x for x in report["examples"] if x["problem"] == "wrong_fields"]
    assert wrong[0]["fields"] == ["occurred_at"]
    bad = _event(scan, data={**scan["fields"], "code": "TOTE-9"})
    report = verify(led.entries[:1], [bad])
    assert report["wrong_fields"] == 1
    assert report["examples"][0]["fields"] == ["data.code"]


def test_a_move_the_device_lost_must_be_reported_as_an_exception(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    led.mark_lost(led.entries[2], "ring_overrun")
    events = _events(led, but="conveyor_move")
    report = verify(led.entries, events)
    assert report["missing"] == 1 and report["by_type"]["exception"]["missing"] == 1
    lost = {"event_id": "11111111-1111-5111-8111-111111111111", "type": "exception",
            "device": "conveyor-01", "occurred_at": format_time(T0 + 3),
            "data": {"reason": "tracking_lost", "first_seq": 6, "last_seq": 8, "boot": 1}}
    report = verify(led.entries, [*events, lost])
    assert report["ok"] and report["lost_by_device"] == report["lost_reported"] == 1
    other_boot = {**lost, "data": {**lost["data"], "boot": 2}}
    assert verify(led.entries, [*events, other_boot])["phantom"] == 1


def test_kinds_can_be_named_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    report = verify(led.entries, _events(led), kinds=["induct_scan", "amr_estop"])
    assert report["by_type"]["exception"]["missing"] == 1
    with pytest.raises(ValueError, match="unknown ledger kinds"):
        verify(led.entries, [], kinds=["teleport"])


def test_a_torn_last_line_is_ignored_and_a_foreign_file_named(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    led.close()
    path = tmp_path / "ledger.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"seq": 99, "kind": "div')
    assert len(read_ledger(path)[1]) == 4
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"other\.jsonl:1"):
        read_ledger(other)
