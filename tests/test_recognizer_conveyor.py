"""Conveyor recognizer: polls of PLC points in, events with physical ids out (table tests)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.events import Event, Signal, make_event_id
from gateway.recognizers.conveyor import ConveyorMap, ConveyorRecognizer, counter_delta

SITE, DEV = "S", "conv-1"
POINTS = ConveyorMap(
    heartbeat="hb", state="state", state_count="state_n", boot_count="boot",
    fault_active="jam", fault_code="code", fault_zone="zone", fault_count="faults",
    counters={"good": 2**32, "small": 2**16}, tracking_slots=4,
)
IDLE = {"boot": 1, "jam": False, "code": 0, "zone": 0, "faults": 0}


def recognizer(**kw: Any) -> ConveyorRecognizer:
    return ConveyorRecognizer(site=SITE, device=DEV, points=POINTS,
                              zones={1: "INDUCT-1"}, **kw)


def poll(rec: ConveyorRecognizer, t: float, **values: Any) -> list[Event]:
    sigs = [Signal(DEV, k.replace("__", "."), v, t) for k, v in values.items()]
    return rec.feed_poll(sigs, t)


def ring(*moves: tuple[int, str, int, int], slots: int = 4) -> dict[str, Any]:
    """Tracking ring values: each move goes to slot (seq - 1) % slots, as a PLC writes it."""
    out: dict[str, Any] = {}
    for seq, tote, frm, to in moves:
        i = (seq - 1) % slots
        out |= {f"tracking[{i}]__seq": seq, f"tracking[{i}]__tote": tote,
                f"tracking[{i}]__from": frm, f"tracking[{i}]__to": to}
    return out


def summary(events: list[Event]) -> list[tuple[str, str, Any]]:
    out = []
    for e in events:
        d = e.to_dict()["data"]
        key = d.get("reason") or d.get("counter") or d.get("state") or d.get("container")
        out.append((e.type, key, d.get("seq") or d.get("fault_count") or d.get("delta")))
    return out


def eid(key: str) -> str:
    return make_event_id(SITE, DEV, key)


@pytest.mark.parametrize(("old", "new", "mod", "want"), [
    (10, 15, 2**32, (5, False)),
    (10, 10, 2**32, (0, False)),
    (2**32 - 3, 2, 2**32, (5, False)),          # wrapped
    (2**32 - 1, 0, 2**32, (1, False)),
    (65530, 4, 2**16, (10, False)),
    (1000, 5, 2**32, (5, True)),                # reset: counted from zero
    (2**31, 5, 2**32, (5, True)),               # not near the top: a reset, not a wrap
    (2**32 - 3, 2**30, 2**32, (2**30, True)),   # lands past the bottom quarter: a reset
])
def test_counter_delta(old: int, new: int, mod: int, want: tuple[int, bool]) -> None:
    assert counter_delta(old, new, mod) == want


def test_jam_raise_and_clear_carry_zone_code_and_fault_count_ids() -> None:
    rec = recognizer()
    assert poll(rec, 1.0, **IDLE) == []
    raised = poll(rec, 2.0, jam=True, code=101, zone=1, faults=1)
    cleared = poll(rec, 3.0, jam=False, code=0, zone=0)
    assert [e.event_id for e in raised + cleared] == [eid("fault:1:1"), eid("fault_cleared:1:1")]
    r, c = raised[0].to_dict(), cleared[0].to_dict()
    assert r["type"] == c["type"] == "exception"
    assert r["data"] | {} == {"reason": "jam", "zone": "INDUCT-1", "zone_number": 1,
                              "fault_code": 101, "fault_count": 1, "boot": 1, "location": None}
    assert c["data"]["reason"] == "jam_cleared" and c["data"]["zone"] == "INDUCT-1"
    assert c["data"]["fault_code"] == 101  # remembered from the raise
    assert r["correlation_id"] == c["correlation_id"] == "fault:1:1"
    assert r["occurred_at"].endswith(":02.000Z") and c["occurred_at"].endswith(":03.000Z")
    assert poll(rec, 4.0) == []


@pytest.mark.parametrize(("polls", "want"), [
    # a non-jam code is a "fault"
    ([IDLE, {"jam": True, "code": 7, "zone": 3, "faults": 1}],
     [("exception", "fault", 1)]),
    # raised and cleared between two polls: both events, under the PLC's count
    ([IDLE, {"faults": 1}], [("exception", "fault", 1), ("exception", "fault_cleared", 1)]),
    # three faults between polls, the last still active (the first two had no zone read)
    ([IDLE, {"jam": True, "code": 101, "zone": 2, "faults": 3}],
     [("exception", "fault", 1), ("exception", "fault_cleared", 1),
      ("exception", "fault", 2), ("exception", "fault_cleared", 2),
      ("exception", "jam", 3)]),
    # cleared and a new jam raised between polls
    ([IDLE, {"jam": True, "code": 101, "zone": 2, "faults": 1},
      {"code": 101, "zone": 4, "faults": 2}],
     [("exception", "jam", 1), ("exception", "jam_cleared", 1), ("exception", "jam", 2)]),
    # first look at a PLC with an active jam (gateway restart): reported under its id
    ([{"boot": 1, "jam": True, "code": 101, "zone": 2, "faults": 5}],
     [("exception", "jam", 5)]),
    # first look at a PLC whose last fault is over: raise + clear (repeats keep their ids)
    ([{**IDLE, "faults": 5}], [("exception", "fault", 5), ("exception", "fault_cleared", 5)]),
])
def test_fault_table(polls: list[dict[str, Any]], want: list[tuple[str, str, Any]]) -> None:
    rec = recognizer()
    events: list[Event] = []
    for i, values in enumerate(polls):
        events += poll(rec, float(i), **values)
    assert summary(events) == want


def test_tracking_moves_have_sequence_ids_and_zone_names() -> None:
    rec = recognizer()
    poll(rec, 1.0, **IDLE)
    events = poll(rec, 2.0, **ring((1, "TOTE-1", 0, 1), (2, "TOTE-1", 1, 2)))
    assert [e.event_id for e in events] == [eid("trk:1:1"), eid("trk:1:2")]
    first = events[0].to_dict()
    assert first["type"] == "move" and first["correlation_id"] == "container:TOTE-1"
    assert first["data"] == {"container": "TOTE-1", "from": None, "to": "INDUCT-1", "seq": 1,
                             "boot": 1, "conveyor": DEV, "location": None}
    assert events[1].to_dict()["data"]["to"] == "Z02"
    # only new entries count; a ring slot overwritten by a newer move is a new move
    events = poll(rec, 3.0, **ring((3, "TOTE-2", 0, 1), (4, "TOTE-1", 2, 0), (5, "TOTE-2", 1, 2)))
    assert summary(events) == [("move", "TOTE-2", 3), ("move", "TOTE-1", 4),
                               ("move", "TOTE-2", 5)]
    assert poll(rec, 4.0) == []


def test_tracking_overrun_is_an_exception_naming_the_lost_sequences() -> None:
    rec = recognizer()
    poll(rec, 1.0, **IDLE, **ring((1, "A", 0, 1)))
    events = poll(rec, 2.0, **ring(*((s, f"T{s}", 0, 1) for s in range(2, 10))))
    assert summary(events) == [("exception", "tracking_lost", None), ("move", "T6", 6),
                               ("move", "T7", 7), ("move", "T8", 8), ("move", "T9", 9)]
    lost = events[0].to_dict()
    assert lost["data"]["first_seq"] == 2 and lost["data"]["last_seq"] == 5
    assert lost["event_id"] == eid("trk_lost:1:2-5")
    assert rec.lost_moves == 4


def test_gateway_restart_re_emits_what_the_plc_holds_under_the_same_ids() -> None:
    values = {**IDLE, "faults": 2, "jam": True, "code": 101, "zone": 1, "good": 500,
              **ring((7, "A", 0, 1), (8, "A", 1, 2), (9, "B", 0, 1))}
    before = recognizer()
    first = poll(before, 1.0, **values)
    after = recognizer()  # a restarted gateway: no memory
    again = poll(after, 5.0, **values)
    assert [e.event_id for e in again] == [e.event_id for e in first]
    assert {e.event_id for e in again} >= {eid("trk:1:7"), eid("trk:1:9"), eid("fault:1:2"),
                                           eid("counter:good:1:500")}


def test_new_boot_starts_sequences_and_counts_afresh_with_new_ids() -> None:
    rec = recognizer()
    poll(rec, 1.0, **(IDLE | {"faults": 1}), good=900, **ring((1, "A", 0, 1), (2, "A", 1, 2)))
    # cold restart: boot 2, every count back to zero, the ring empty then refilled
    events = poll(rec, 2.0, boot=2, faults=0, good=0, **{
        f"tracking[{i}]__seq": 0 for i in range(4)})
    assert summary(events) == [("telemetry", "good", None)]
    assert events[0].event_id == eid("counter:good:2:0")
    events = poll(rec, 3.0, good=3, **ring((1, "B", 0, 1)))
    assert [e.event_id for e in events] == [eid("trk:2:1"), eid("counter:good:2:3")]
    assert events[1].to_dict()["data"]["delta"] == 3


@pytest.mark.parametrize(("readings", "interval", "want"), [
    # every change reported, with deltas; the first reading is a baseline
    ([100, 105, 105, 109], 0.0, [("good", None), ("good", 5), ("good", 4)]),
    # a 32-bit wrap
    ([2**32 - 2, 3], 0.0, [("good", None), ("good", 5)]),
    # a reset within the same boot: counted from zero and flagged
    ([5000, 10], 0.0, [("good", None), ("good", 10)]),
    # at most one report per interval; counts in between are summed, none lost
    ([0, 1, 2, 3, 4, 5, 6], 2.5, [("good", None), ("good", 3), ("good", 3)]),
])
def test_counter_table(readings: list[int], interval: float,
                       want: list[tuple[str, int | None]]) -> None:
    rec = recognizer(counter_report_interval=interval)
    got = []
    for t, v in enumerate(readings):
        for e in poll(rec, float(t), boot=1, good=v):
            d = e.to_dict()["data"]
            assert e.type == "telemetry" and d["value"] == v
            assert e.event_id == eid(f"counter:good:1:{v}")
            got.append((d["counter"], d["delta"]))
    assert got == want


def test_counter_reset_is_flagged() -> None:
    rec = recognizer()
    poll(rec, 0.0, boot=1, small=30000)
    e = poll(rec, 1.0, small=20)[0].to_dict()["data"]
    assert (e["delta"], e["reset"]) == (20, True)
    e = poll(rec, 2.0, small=65535)[0].to_dict()["data"]
    assert (e["delta"], e["reset"]) == (65515, False)
    e = poll(rec, 3.0, small=1)[0].to_dict()["data"]
    assert (e["delta"], e["reset"]) == (2, False)  # 16-bit wrap


def test_state_changes_are_device_status_keyed_by_the_plc_transition_count() -> None:
    rec = recognizer()
    events = poll(rec, 0.0, boot=1, state=6, state_n=1)
    events += poll(rec, 1.0, state=11, state_n=2)
    events += poll(rec, 2.0, state=6, state_n=5)  # two transitions missed in between
    events += poll(rec, 3.0, state=6)  # the state word alone (no count change): nothing
    assert [(e.type, e.to_dict()["data"]["state"], e.to_dict()["data"]["transitions"])
            for e in events] == [("device_status", "EXECUTE", None),
                                 ("device_status", "HELD", 1), ("device_status", "EXECUTE", 3)]
    assert events[2].event_id == eid("state:1:5")


def test_map_without_fault_code_calls_faults_jams_and_single_feed_works() -> None:
    points = ConveyorMap(boot_count="boot", fault_active="jam", fault_count="faults")
    rec = ConveyorRecognizer(site=SITE, device=DEV, points=points, location="aisle 3")
    assert points.watched() == {"boot", "jam", "faults"}
    for name, value in (("boot", 1), ("jam", False), ("faults", 0)):
        assert rec.feed(Signal(DEV, name, value, 0.0)) == []
    raised = rec.feed_poll([Signal(DEV, "faults", 1, 1.0), Signal(DEV, "jam", True, 1.0)], 1.0)
    assert summary(raised) == [("exception", "jam", 1)]
    assert raised[0].to_dict()["data"]["location"] == "aisle 3"
    assert summary(rec.feed(Signal(DEV, "jam", False, 2.0))) == [
        ("exception", "jam_cleared", 1)]


def test_an_unreadable_tote_id_is_no_container_not_a_stale_one() -> None:
    rec = recognizer()
    poll(rec, 1.0, **IDLE, **ring((1, "A", 0, 1)))
    values = ring((5, "B", 0, 1)) | {"tracking[0]__tote": None}  # slot 0 again, text bad
    *_, event = poll(rec, 2.0, **values)  # (the moves 2..4 are reported lost first)
    assert event.to_dict()["data"]["container"] is None
    assert event.to_dict()["correlation_id"] is None
