"""The pick station recognizer as tables: tasks and confirms in, picks and shorts out."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.core.events import Event, Signal, format_time, make_event_id
from gateway.core.records import IngestDeadLetter, Record
from gateway.mapping.stations import resolve_station
from gateway.recognizers.pick_station import PickStationRecognizer

SITE, DEV = "DC-EAST-1", "putwall-01"
T0 = 1_800_000_000.0
TOPIC = f"site/{SITE}/stations/{DEV}"


def _rec(**station: Any) -> PickStationRecognizer:
    return PickStationRecognizer(site=SITE, device=DEV, config=resolve_station(
        "pick_station", {"preset": "put-wall-json", **station}))


def _msg(what: str, doc: dict[str, Any], t: float = T0, topic: str | None = None) -> Signal:
    return Signal(device=DEV, point="message", value=doc, receive_time=t + 0.01,
                  attrs={"topic": topic or f"{TOPIC}/{what}"})


def _task(task_id: str = "T-1", qty: int = 3, **over: Any) -> Signal:
    return _msg("task", {"task_id": task_id, "order": "ORD-1", "line": 2, "sku": "SKU-0042",
                         "qty": qty, "location": "PUT-01", "container": "TOTE-1", **over})


def _confirm(task_id: str = "T-1", t: float = T0 + 5, **fields: Any) -> Signal:
    return _msg("confirm", {"task_id": task_id, "timestamp": format_time(t), **fields}, t)


def _docs(records: list[Record]) -> list[dict[str, Any]]:
    assert all(isinstance(r, Event) for r in records), records
    return [r.to_dict() for r in records if isinstance(r, Event)]


@pytest.mark.parametrize(("confirm", "picked", "short"), [
    ({"qty": 3, "short": False}, 3, False),
    ({"qty": 2, "short": True}, 2, True),
    ({"qty": 2}, 2, True),                     # less than asked for is short without a flag
    ({"qty": 3, "short": True}, 3, True),      # the operator's flag counts on its own
    ({}, 3, False),                            # a bare button press confirms the task's qty
    ({"qty_adjust": -1}, 2, True),             # an adjustment from the requested qty
    ({"qty": "1"}, 1, True),                   # numeric text
    ({"qty": 0, "short": True}, 0, True),
])
def test_confirm_makes_a_pick_and_a_short_pick(confirm: dict[str, Any], picked: int,
                                               short: bool) -> None:
    rec = _rec()
    assert rec.feed(_task()) == []
    out = _docs(rec.feed(_confirm(**confirm)))
    pick = out[0]
    assert pick["type"] == "pick" and pick["occurred_at"] == format_time(T0 + 5)
    assert pick["data"] == {"location": "PUT-01", "sku": "SKU-0042", "qty": picked,
                            "qty_requested": 3, "container": "TOTE-1", "order": "ORD-1",
                            "line": 2, "station": DEV, "task_id": "T-1"}
    assert pick["event_id"] == make_event_id(SITE, DEV, "task:T-1:confirm")
    if short:
        assert len(out) == 2
        exc = out[1]
        assert exc["type"] == "exception" and exc["priority"] == "exception"
        assert exc["data"] == {"reason": "short_pick", **pick["data"]}
        assert exc["event_id"] == make_event_id(SITE, DEV, "task:T-1:short")
    else:
        assert len(out) == 1


def test_a_repeated_confirm_has_the_same_ids() -> None:
    rec = _rec()
    rec.feed(_task())
    first = _docs(rec.feed(_confirm(qty=1)))
    again = _docs(rec.feed(_confirm(qty=1)))
    assert [e["event_id"] for e in first] == [e["event_id"] for e in again]
    assert len(first) == 2 and first == again


def test_a_confirm_without_a_task_is_a_dead_letter_naming_it() -> None:
    rec = _rec()
    rec.feed(_task("T-1"))
    out = rec.feed(_confirm("T-9", qty=1))
    assert len(out) == 1 and isinstance(out[0], IngestDeadLetter)
    assert out[0].reason.startswith("unknown_task:") and "'T-9'" in out[0].reason
    assert out[0].context["topic"] == f"{TOPIC}/confirm"
    assert b'"T-9"' in out[0].payload
    assert rec.figures()["station"]["unknown_confirms"] == 1


def test_out_of_order_confirm_before_its_task_is_booked_when_the_task_comes() -> None:
    """After a restart the session's queued confirm comes before the retained task."""
    rec = _rec()
    assert isinstance(rec.feed(_confirm("T-2", qty=1))[0], IngestDeadLetter)
    late = _docs(rec.feed(_task("T-2")))
    assert [e["type"] for e in late] == ["pick", "exception"]
    assert late[0]["event_id"] == make_event_id(SITE, DEV, "task:T-2:confirm")
    assert late[0]["occurred_at"] == format_time(T0 + 5) and late[0]["data"]["qty"] == 1
    assert rec.figures()["station"]["booked_late"] == 1
    # Once booked, the task shown again books nothing more; a repeat confirm has the ids.
    assert rec.feed(_task("T-2")) == []
    assert [e["event_id"] for e in _docs(rec.feed(_confirm("T-2", qty=1)))] == [
        e["event_id"] for e in late]


def test_interleaved_tasks_keep_their_own_fields() -> None:
    rec = _rec()
    rec.feed(_task("T-1", qty=1, sku="SKU-1"))
    rec.feed(_task("T-2", qty=2, sku="SKU-2", container="TOTE-2"))
    b = _docs(rec.feed(_confirm("T-2", qty=2)))[0]
    a = _docs(rec.feed(_confirm("T-1", qty=1)))[0]
    assert (a["data"]["sku"], b["data"]["sku"]) == ("SKU-1", "SKU-2")
    assert b["data"]["container"] == "TOTE-2"


def test_a_confirm_naming_its_task_is_booked_without_the_task() -> None:
    """After a restart the station has moved on: its retained task is another's."""
    rec = _rec()
    rec.feed(_task("T-3"))
    out = _docs(rec.feed(_confirm("T-2", qty=1, qty_requested=2, sku="SKU-7", order="ORD-9",
                                  line=4, location="PUT-02", container="TOTE-9")))
    assert [e["type"] for e in out] == ["pick", "exception"]
    assert out[0]["data"] == {"location": "PUT-02", "sku": "SKU-7", "qty": 1,
                              "qty_requested": 2, "container": "TOTE-9", "order": "ORD-9",
                              "line": 4, "station": DEV, "task_id": "T-2"}
    assert rec.figures()["station"]["booked_from_confirm"] == 1


def test_the_oldest_tasks_are_forgotten_past_max_open() -> None:
    rec = _rec(max_open=2)
    for n in range(3):
        rec.feed(_task(f"T-{n}"))
    assert rec.open_tasks() == 2 and rec.figures()["station"]["forgotten_tasks"] == 1
    assert isinstance(rec.feed(_confirm("T-0"))[0], IngestDeadLetter)
    # Tasks booked from their own confirms are bounded the same way.
    for n in range(5, 9):
        rec.feed(_confirm(f"T-{n}", qty=1, qty_requested=1, sku="SKU-7", container="TOTE-9"))
    assert rec.open_tasks() == 2


@pytest.mark.parametrize(("signal", "reason"), [
    (_msg("confirm", {"qty": 1}), "missing_field: confirm message: no 'task_id'"),
    (_msg("task", {"sku": "X"}), "missing_field: task message: no 'task_id'"),
    (_msg("other", {"task_id": "T-1"}), "no_rule:"),
    (_msg("confirm", {"task_id": "T-1", "timestamp": "yesterday"}), "bad_timestamp:"),
    (_msg("confirm", {"task_id": "T-1", "qty": "many"}), "bad_field: 'qty' must be a number"),
    (_msg("confirm", {"task_id": ["T-1"]}), "bad_field: 'task_id'"),
])
def test_bad_messages_are_dead_letters_naming_the_field(signal: Signal, reason: str) -> None:
    rec = _rec()
    rec.feed(_task("T-1"))
    out = rec.feed(signal)
    assert len(out) == 1 and isinstance(out[0], IngestDeadLetter), out
    assert out[0].reason.startswith(reason), out[0].reason


def test_a_vendor_put_wall_by_field_map() -> None:
    """One topic, a message type field, nested fields: all from configuration."""
    station = {"station": "PW-7", "messages": {
        "task": {"topic": "vendor/pw7", "match": {"msgType": "SHOW"},
                 "fields": {"task_id": "job.id", "sku": "job.article", "qty": "job.amount",
                            "container": "job.tote", "order": "job.order",
                            "location": "job.slot"}},
        "confirm": {"topic": "vendor/pw7", "match": {"msgType": "DONE"},
                    "fields": {"task_id": "job.id", "qty": "job.done",
                               "timestamp": "ts"}}}}
    rec = PickStationRecognizer(site=SITE, device="pw-7",
                                config=resolve_station("pick_station", station))
    show = {"msgType": "SHOW", "job": {"id": 77, "article": "A-1", "amount": 4, "tote": "T-5",
                                       "order": "SO-1", "slot": "B3"}}
    done = {"msgType": "DONE", "job": {"id": 77, "done": 4}, "ts": T0 * 1000}
    assert rec.feed(_msg("", show, topic="vendor/pw7")) == []
    pick = _docs(rec.feed(_msg("", done, topic="vendor/pw7")))
    assert len(pick) == 1 and pick[0]["occurred_at"] == format_time(T0)
    assert pick[0]["data"] | {} == {"location": "B3", "sku": "A-1", "qty": 4,
                                    "qty_requested": 4, "container": "T-5", "order": "SO-1",
                                    "line": None, "station": "PW-7", "task_id": "77"}


@pytest.mark.parametrize(("station", "problem"), [
    ({}, "station.messages.task: required for a pick_station"),
    ({"preset": "pack-bench-json"}, "is a pack_station preset"),
    ({"preset": "nope"}, "unknown station preset 'nope'"),
    ({"preset": "put-wall-json", "messages": {"confirm": {"fields": {"qtty": "q"}}}},
     "station.messages.confirm.fields.qtty: unknown field"),
    ({"preset": "put-wall-json", "messages": {"scale": {"topic": "x"}}},
     "station.messages.scale: unknown message kind"),
    ({"messages": {"task": {"topic": "t", "fields": {"sku": "s"}},
                   "confirm": {"topic": "c", "fields": {"task_id": "id"}}}},
     "station.messages.task.fields.task_id: required field is not mapped"),
])
def test_bad_station_config_names_the_key(station: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError) as err:
        resolve_station("pick_station", station)
    assert problem in str(err.value)


@pytest.mark.parametrize(("station", "problem"), [
    ({"preset": "put-wall-json", "messages": {"confirm": {"fields": {"qtty": "q"}}}},
     "devices[0].station.messages.confirm.fields.qtty: unknown field"),
    ({"preset": "put-wall-json", "tolerance_pct": 150},
     "devices[0].station.tolerance_pct: Input should be less than or equal to 100"),
    ({"preset": "put-wall-json", "colour": "red"},
     "devices[0].station.colour: unknown key"),
])
def test_check_names_the_station_key(tmp_path: Any, station: dict[str, Any],
                                     problem: str) -> None:
    doc = {"site": {"id": SITE}, "store": {"path": "b.db"},
           "brokers": [{"id": "site", "port": 1883}],
           "devices": [{"id": DEV, "driver": "mqtt", "role": "pick_station", "broker": "site",
                        "topic": f"{TOPIC}/+", "station": station}]}
    with pytest.raises(ConfigError) as err:
        parse_config(doc, tmp_path / "site.toml")
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_a_station_table_on_a_scanner_is_refused(tmp_path: Any) -> None:
    doc = {"site": {"id": SITE}, "store": {"path": "b.db"},
           "brokers": [{"id": "site", "port": 1883}],
           "devices": [{"id": "scan-1", "driver": "mqtt", "broker": "site", "topic": "t",
                        "station": {"preset": "put-wall-json"}}]}
    with pytest.raises(ConfigError) as err:
        parse_config(doc, tmp_path / "site.toml")
    assert "devices[0].station: only for role 'pick_station' or 'pack_station'" in str(err.value)
