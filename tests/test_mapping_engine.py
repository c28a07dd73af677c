"""The mapping engine, table-tested: value specs, rules, every trigger, telemetry, health.

Pure: signals in, events and dead letters out; no clock (times travel on the signals).
"""

from __future__ import annotations

import json
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import ConfigError, parse_config
from gateway.core.events import Event, Signal, make_event_id
from gateway.core.records import IngestDeadLetter, Record
from gateway.mapping.config import MappingConfig
from gateway.mapping.engine import MappingRecognizer

SITE, DEV = "S", "dev-1"
T0 = 1_795_428_900.0


def mapping(text: str) -> MappingConfig:
    return MappingConfig.model_validate(tomllib.loads(textwrap.dedent(text)))


def engine(text: str, **params: Any) -> MappingRecognizer:
    return MappingRecognizer(SITE, DEV, mapping(text), params=params)


def msg(doc: Any, t: float = 0.0, point: str = "message") -> Signal:
    return Signal(DEV, point, doc, T0 + t, attrs={"digest": "d"})


def events(records: list[Record]) -> list[dict[str, Any]]:
    assert all(isinstance(r, Event) for r in records), records
    return [r.to_dict() for r in records if isinstance(r, Event)]


def dead(records: list[Record]) -> IngestDeadLetter:
    (rec,) = records
    assert isinstance(rec, IngestDeadLetter), rec
    return rec


# -- value specs -----------------------------------------------------------------------

RULE = """
ids = ["id"]
[[events]]
on = "message"
type = "pick"
key = "p:{id}"
[events.data]
v = %s
"""

VALUES: list[tuple[str, str, Any, Any]] = [
    # name, spec, input document, expected data.v (or "!kind" for a dead letter)
    ("pass-through", '"a.b"', {"a": {"b": [1, 2]}}, [1, 2]),
    ("slash path", '"a/b"', {"a": {"b": 3}}, 3),
    ("exact key before path", '"a.b"', {"a.b": 1, "a": {"b": 2}}, 1),
    ("list index", '"a.1"', {"a": [5, 6]}, 6),
    ("missing is null", '"nope"', {}, None),
    ("first present", '{ field = ["x", "y"] }', {"y": 2}, 2),
    ("const", '{ const = "K" }', {}, "K"),
    ("param", '"$param.where"', {}, "DOCK-1"),
    ("exact int map", '{ field = "r", map = { 0 = "ok", 1 = "bad" } }', {"r": 1}, "bad"),
    ("map text key", '{ field = "r", map = { "E1" = "jam" } }', {"r": "E1"}, "jam"),
    ("map integral float", '{ field = "r", map = { 2 = "two" } }', {"r": 2.0}, "two"),
    ("map bool", '{ field = "r", map = { true = "on" } }', {"r": True}, "on"),
    ("range", '{ field = "w", ranges = [{ max = 10, value = "light" }, '
              '{ min = 10, value = "heavy" }] }', {"w": 12.5}, "heavy"),
    ("range lower edge", '{ field = "w", ranges = [{ min = 0, max = 10, value = "light" }] }',
     {"w": 0}, "light"),
    ("unmapped with default", '{ field = "r", map = { 0 = "ok" }, default = "other" }',
     {"r": 9}, "other"),
    ("unmapped is a dead letter", '{ field = "r", map = { 0 = "ok" } }', {"r": 9},
     "!unmapped_value"),
    ("range miss is a dead letter", '{ field = "w", ranges = [{ max = 10, value = "x" }] }',
     {"w": 11}, "!unmapped_value"),
    ("missing with default", '{ field = "q", default = 1 }', {}, 1),
    ("required missing", '{ field = "q", required = true }', {}, "!missing_field"),
    ("required null", '{ field = "q", required = true }', {"q": None}, "!missing_field"),
    ("empty kept", '{ field = "q" }', {"q": ""}, ""),
    ("empty is missing", '{ field = "q", empty_is_missing = true, required = true }',
     {"q": ""}, "!missing_field"),
    ("string from int", '{ field = "q", type = "string" }', {"q": 12}, "12"),
    ("string refuses bool", '{ field = "q", type = "string" }', {"q": True}, "!bad_field"),
    ("string refuses object", '{ field = "q", type = "string" }', {"q": {}}, "!bad_field"),
    ("text refuses int", '{ field = "q", type = "text" }', {"q": 1}, "!bad_field"),
    ("int from text", '{ field = "q", type = "int" }', {"q": " 42 "}, 42),
    ("int from integral float", '{ field = "q", type = "int" }', {"q": 3.0}, 3),
    ("int refuses 2.5", '{ field = "q", type = "int" }', {"q": 2.5}, "!bad_field"),
    ("int refuses bool", '{ field = "q", type = "int" }', {"q": False}, "!bad_field"),
    ("int refuses words", '{ field = "q", type = "int" }', {"q": "two"}, "!bad_field"),
    ("float from text", '{ field = "q", type = "float" }', {"q": "1.25"}, 1.25),
    ("float from int", '{ field = "q", type = "float" }', {"q": 2}, 2.0),
    ("float refuses nan text", '{ field = "q", type = "float" }', {"q": "nan"}, "!bad_field"),
    ("bool from 1", '{ field = "q", type = "bool" }', {"q": 1}, True),
    ("bool from text", '{ field = "q", type = "bool" }', {"q": "false"}, False),
    ("bool refuses 2", '{ field = "q", type = "bool" }', {"q": 2}, "!bad_field"),
    ("time from epoch ms", '{ field = "q", type = "time" }', {"q": 1795428902350},
     "2026-11-23T10:15:02.350Z"),
    ("time refuses words", '{ field = "q", type = "time" }', {"q": "later"}, "!bad_timestamp"),
    ("lenient type error is null", '{ field = "q", type = "int", lenient = true }',
     {"q": "x"}, None),
    ("map then type", '{ field = "q", map = { 1 = "7" }, type = "int" }', {"q": 1}, 7),
]


@pytest.mark.parametrize(("name", "spec", "doc", "expected"), VALUES, ids=[v[0] for v in VALUES])
def test_value_specs(name: str, spec: str, doc: dict[str, Any], expected: Any) -> None:
    rec = engine(RULE % spec, where="DOCK-1")
    out = rec.feed(msg({"id": 1, **doc}))
    if isinstance(expected, str) and expected.startswith("!"):
        dl = dead(out)
        assert dl.reason.startswith(expected[1:] + ":")
        assert json.loads(dl.payload) == {"id": 1, **doc}  # the raw value is kept
        assert rec.health.dead_letters[expected[1:]] == 1
    else:
        assert events(out)[0]["data"] == {"v": expected}


def test_unmapped_value_names_the_field_and_the_value_and_is_counted() -> None:
    rec = engine(RULE % '{ field = "code", map = { 0 = "ok" } }')
    for code in (7, 7, 8):
        dl = dead(rec.feed(msg({"id": 1, "code": code})))
    assert dl.reason == "unmapped_value: field 'code' value 8 is not mapped"
    assert dl.context == {"point": "message", "field": "code", "value": "8"}
    health = rec.figures()["mapping"]
    assert health["dead_letters"] == {"unmapped_value": 3}
    assert health["unmapped_values"] == {"code": {"7": 2, "8": 1}}
    assert health["last_rejected"]["unmapped_value"]["sample"] == '{"id": 1, "code": 8}'
    assert health["events"] == 0


# -- rules -----------------------------------------------------------------------------

RULES = """
ids = ["seq"]
params = { bad = ["E", "F"] }
[[events]]
on = "divert"
when = { field = "res", in = [0] }
type = "move"
key = "d:{seq}"
correlation = "code:{$data.box}"
data = { box = { field = "lbl", empty_is_missing = true }, to = "dst" }
[[events]]
on = "divert"
when = [{ field = "res", in = "$param.bad" }]
type = "exception"
priority = "telemetry"
key = "d:{seq}"
data = { reason = { const = "bad" } }
[[events]]
on = "div*"
when = { field = "res", not_in = [0, "E", "F"], present = true }
type = { field = "res", map = { 9 = "pick" } }
key = ["d:{seq}@{$source_ms}", "d:{seq}"]
time = "at"
"""


def test_first_matching_rule_wins_and_the_time_and_keys_follow_the_source() -> None:
    rec = engine(RULES)
    ev = events(rec.feed(msg({"seq": 1, "res": 0, "lbl": "B1", "dst": "C2"}, point="divert")))
    assert ev[0]["type"] == "move" and ev[0]["correlation_id"] == "code:B1"
    assert ev[0]["event_id"] == make_event_id(SITE, DEV, "d:1")
    assert ev[0]["data"] == {"box": "B1", "to": "C2"}
    assert ev[0]["occurred_at"] == "2026-11-23T10:15:00.000Z"  # receive time: no source time
    ev = events(rec.feed(msg({"seq": 2, "res": 0, "lbl": ""}, point="divert")))
    assert ev[0]["correlation_id"] is None  # its placeholder is missing
    ev = events(rec.feed(msg({"seq": 3, "res": "F"}, point="divert")))
    assert (ev[0]["type"], ev[0]["priority"]) == ("exception", "telemetry")
    ev = events(rec.feed(msg({"seq": 4, "res": 9, "at": "2026-11-23T10:15:02.5Z"},
                             point="divert2")))
    assert ev[0]["type"] == "pick" and ev[0]["occurred_at"] == "2026-11-23T10:15:02.500Z"
    assert ev[0]["event_id"] == make_event_id(SITE, DEV, "d:4@1795428902500")
    ev = events(rec.feed(msg({"seq": 5, "res": 9}, point="divert2")))
    assert ev[0]["event_id"] == make_event_id(SITE, DEV, "d:5")  # no source time
    assert rec.health.by_type == {"move": 2, "exception": 1, "pick": 2}


@pytest.mark.parametrize(("doc", "kind"), [
    ({"seq": 6}, "no_rule"),                               # no res: no rule applies
    ({"seq": 7, "res": 3}, "unmapped_value"),              # the type's value map
    ({"res": 9}, "missing_field"),                         # no key alternative renders
    ({"seq": 8, "res": 9, "at": "soon"}, "bad_timestamp"),
])
def test_rule_dead_letters(doc: dict[str, Any], kind: str) -> None:
    dl = dead(engine(RULES).feed(msg(doc, point="divert")))
    assert dl.reason.startswith(f"{kind}: ")


def test_points_no_rule_names_make_nothing() -> None:
    assert engine(RULES).feed(msg({"seq": 1}, point="other")) == []


def test_debounce_drops_a_repeat_within_the_window_by_source_time() -> None:
    rec = engine("""
        ids = ["id"]
        [[events]]
        on = "message"
        type = "scan"
        time = "t"
        key = "r:{id}"
        debounce = { field = "$data.code", window = "$param.window" }
        data = { code = "code" }
    """, window=0.5)
    kept = [len(rec.feed(msg({"id": i, "code": c, "t": T0 + t}))) for i, c, t in
            [(1, "A", 0.0), (2, "A", 0.2), (1, "A", 0.0), (3, "B", 0.3), (4, "A", 0.6)]]
    assert kept == [1, 0, 1, 1, 1]  # a redelivery (same key) is no double read
    assert rec.health.debounced == 1


# -- triggers ----------------------------------------------------------------------------


def poll(rec: MappingRecognizer, t: float, **values: Any) -> list[dict[str, Any]]:
    sigs = [Signal(DEV, k, v, T0 + t) for k, v in values.items()]
    return events(rec.feed_poll(sigs, T0 + t))


COUNTER = """
ids = ["boot"]
[[triggers]]
kind = "counter"
point = "n"
bits = %d
max_step = %d
type = "move"
key = "n:{boot}:{$count}"
data = { count = "$count", missed = "$missed", previous = "$previous" }
"""

COUNTER_CASES: list[tuple[str, int, int, list[int | None], list[list[tuple[int, int]]]]] = [
    # name, bits, max_step, readings, per reading [(count, missed)]
    ("first sight makes nothing", 32, 10, [5], [[]]),
    ("one per increment", 32, 10, [5, 6, 8], [[], [(6, 0)], [(7, 0), (8, 0)]]),
    ("unchanged makes nothing", 32, 10, [5, 5], [[], []]),
    ("16-bit wrap", 16, 10, [65534, 1], [[], [(65535, 0), (0, 0), (1, 0)]]),
    ("32-bit wrap", 32, 10, [2**32 - 1, 0], [[], [(0, 0)]]),
    ("jump over max_step", 32, 3, [10, 20], [[], [(18, 7), (19, 0), (20, 0)]]),
    ("reset is no event", 32, 10, [500, 3, 4], [[], [], [(4, 0)]]),
    ("a bad reading is skipped", 32, 10, [5, None, 6], [[], [], [(6, 0)]]),
]


@pytest.mark.parametrize(("name", "bits", "step", "readings", "expected"), COUNTER_CASES,
                         ids=[c[0] for c in COUNTER_CASES])
def test_counter_trigger(name: str, bits: int, step: int, readings: list[int | None],
                         expected: list[list[tuple[int, int]]]) -> None:
    rec = engine(COUNTER % (bits, step))
    got = []
    for i, v in enumerate(readings):
        evs = poll(rec, i, boot=1, n=v) if i == 0 else poll(rec, i, n=v)
        got.append([(e["data"]["count"], e["data"]["missed"]) for e in evs])
        for e in evs:
            assert e["event_id"] == make_event_id(SITE, DEV, f"n:1:{e['data']['count']}")
    assert got == expected


def test_counter_trigger_ids_are_stable_across_a_gateway_restart() -> None:
    first, second = engine(COUNTER % (32, 10)), engine(COUNTER % (32, 10))
    poll(first, 0, boot=1, n=1)
    a = poll(first, 1, n=3)
    poll(second, 2, boot=1, n=2)  # the new process sees 2 first, then 3
    b = poll(second, 3, n=3)
    assert a[-1]["event_id"] == b[-1]["event_id"]


EDGE = """
ids = ["boot"]
[[triggers]]
kind = "edge"
point = "f"
edge = "%s"
type = "exception"
key = "f:{$edge}@{$time_ms}"
data = { reason = { field = "$edge", map = { rising = "jam", falling = "jam_cleared" } } }
"""


@pytest.mark.parametrize(("edge", "expected"), [
    ("rising", [[], ["jam"], [], [], ["jam"]]),
    ("falling", [[], [], ["jam_cleared"], [], []]),
    ("both", [[], ["jam"], ["jam_cleared"], [], ["jam"]]),
])
def test_edge_trigger(edge: str, expected: list[list[str]]) -> None:
    rec = engine(EDGE % edge)
    got = [[e["data"]["reason"] for e in poll(rec, i, f=v)]
           for i, v in enumerate([False, True, False, 0, 1])]
    assert got == expected


TRACKING = """
ids = ["boot"]
[[triggers]]
kind = "tracking"
seq = "%s"
slots = %d
type = "move"
key = "trk:{boot}:{$tracking_seq}"
correlation = "tote:{$data.container}"
[triggers.data]
container = { field = "%s", type = "string", empty_is_missing = true }
to = { field = "%s", map = { 5 = "PACK-1" }, default = "UNKNOWN" }
seq = "$tracking_seq"
missed = "$missed"
"""


def test_tracking_group() -> None:
    rec = engine(TRACKING % ("trk_seq", 1, "trk_tote", "trk_to"))
    first = poll(rec, 0, boot=1, trk_seq=7, trk_tote="T7", trk_to=5)
    assert [(e["data"]["seq"], e["data"]["container"], e["data"]["to"]) for e in first] == [
        (7, "T7", "PACK-1")]  # at first sight: its id says whether upstream has it
    assert poll(rec, 1, trk_tote="T7b") == []  # the sequence did not move
    nxt = poll(rec, 2, trk_seq=8, trk_tote="T8", trk_to=6)
    assert [(e["data"]["seq"], e["data"]["to"], e["data"]["missed"]) for e in nxt] == [
        (8, "UNKNOWN", 0)]
    jump = poll(rec, 3, trk_seq=11, trk_tote="T11")
    assert [(e["data"]["seq"], e["data"]["missed"]) for e in jump] == [(11, 2)]
    assert jump[0]["event_id"] == make_event_id(SITE, DEV, "trk:1:11")
    assert jump[0]["correlation_id"] == "tote:T11"
    assert poll(rec, 4, trk_seq=0) == []  # an empty group


def test_one_move_a_mapping_rejects_does_not_stop_the_others() -> None:
    rec = engine(TRACKING.replace(', default = "UNKNOWN"', '') % (
        "r{i}.seq", 2, "r{i}.tote", "r{i}.to"))
    out = rec.feed_poll([Signal(DEV, "boot", 1, T0), Signal(DEV, "r0.seq", 1, T0),
                         Signal(DEV, "r0.to", 9, T0), Signal(DEV, "r1.seq", 2, T0),
                         Signal(DEV, "r1.to", 5, T0), Signal(DEV, "r1.tote", "B", T0)], T0)
    assert [type(r).__name__ for r in out] == ["IngestDeadLetter", "Event"]
    dl = out[0]
    assert isinstance(dl, IngestDeadLetter)
    assert json.loads(dl.payload) == {"r0.seq": 1, "boot": 1, "r0.tote": None, "r0.to": 9,
                                      "$tracking_seq": 1}


def test_tracking_ring() -> None:
    rec = engine(TRACKING % ("r{i}.seq", 3, "r{i}.tote", "r{i}.to"))
    vals = {"boot": 1, "r0.seq": 4, "r0.tote": "A", "r1.seq": 5, "r1.tote": "B",
            "r2.seq": 3, "r2.tote": "C"}
    assert [e["data"]["container"] for e in poll(rec, 0, **vals)] == ["C", "A", "B"]
    nxt = poll(rec, 1, **{"r2.seq": 6, "r2.tote": "D"})
    assert [(e["data"]["seq"], e["data"]["container"]) for e in nxt] == [(6, "D")]
    # 7 and 8 overwritten before a poll saw them: 9 says so
    lost = poll(rec, 2, **{"r0.seq": 9, "r0.tote": "E", "r1.seq": 10, "r1.tote": "F",
                           "r2.seq": 11, "r2.tote": "G"})
    assert [(e["data"]["seq"], e["data"]["missed"]) for e in lost] == [(9, 2), (10, 0), (11, 0)]


THRESHOLD = """
ids = ["boot"]
[[triggers]]
kind = "threshold"
point = "temp"
%s
hysteresis = 5
type = "exception"
key = "hot:{$state}@{$time_ms}"
data = { state = "$state", temp = "temp" }
"""


@pytest.mark.parametrize(("side", "readings", "expected"), [
    ("above = 80", [70, 81, 79, 76, 75, 90, 90], [[], ["raised"], [], [], ["cleared"],
                                                   ["raised"], []]),
    ("above = 80", [85, 60], [["raised"], ["cleared"]]),  # beyond at first sight
    ("below = 10", [20, 9, 14, 15], [[], ["raised"], [], ["cleared"]]),
])
def test_threshold_trigger_with_hysteresis(side: str, readings: list[float],
                                           expected: list[list[str]]) -> None:
    rec = engine(THRESHOLD % side)
    got = [[e["data"]["state"] for e in poll(rec, i, temp=v)] for i, v in enumerate(readings)]
    assert got == expected


def test_change_trigger() -> None:
    rec = engine("""
        ids = ["count"]
        [[triggers]]
        kind = "change"
        point = "count"
        initial = true
        type = "device_status"
        key = "st:{count}"
        [triggers.data]
        state = { field = "state", map = { 6 = "EXECUTE" }, default = "OTHER" }
        previous = "$previous"
    """)
    assert [e["data"] for e in poll(rec, 0, count=4, state=6)] == [
        {"state": "EXECUTE", "previous": None}]
    assert poll(rec, 1, state=2) == []
    assert [e["data"] for e in poll(rec, 2, count=5)] == [{"state": "OTHER", "previous": 4}]


def test_a_trigger_that_cannot_make_its_event_is_a_dead_letter_with_its_inputs() -> None:
    rec = engine("""
        ids = ["boot"]
        [[triggers]]
        kind = "edge"
        point = "f"
        type = "exception"
        key = "f:{$time_ms}"
        data = { code = { field = "code", map = { 1 = "jam" } } }
    """)
    poll(rec, 0, f=0, code=2)
    out = rec.feed_poll([Signal(DEV, "f", 1, T0 + 1)], T0 + 1)
    dl = dead(out)
    assert dl.reason == "unmapped_value: field 'code' value 2 is not mapped"
    assert json.loads(dl.payload) == {"f": 1, "code": 2, "$edge": "rising"}


# -- telemetry ---------------------------------------------------------------------------


def test_telemetry_on_change_with_deadband_and_on_interval() -> None:
    rec = engine("""
        [[telemetry]]
        point = "speed"
        on = "both"
        deadband = 0.5
        interval = "10s"
        [[telemetry]]
        point = "mode"
    """)
    seen = []
    for t, vals in [(0, {"speed": 1.0, "mode": "A"}), (1, {"speed": 1.2}), (2, {"speed": 1.6}),
                    (3, {"mode": "B"}), (5, {}), (12, {}), (13, {})]:
        seen.append([(e["data"]["point"], e["data"]["value"]) for e in poll(rec, t, **vals)])
    assert seen == [[("speed", 1.0), ("mode", "A")], [], [("speed", 1.6)], [("mode", "B")], [],
                    [("speed", 1.6)], []]
    ev = poll(rec, 30)[0]
    assert ev["type"] == "telemetry" and ev["priority"] == "telemetry"
    assert ev["event_id"] == make_event_id(SITE, DEV, f"tm:speed@{round((T0 + 30) * 1000)}")


# -- config checks -------------------------------------------------------------------------

CONFIG_ERRORS: list[tuple[str, str, str]] = [
    ("counter key without $count", """
        [[triggers]]
        kind = "counter"
        point = "n"
        type = "move"
        key = "n:{$time_ms}"
     """, "triggers[0].key: 'n:{$time_ms}' must hold {$count}"),
    ("tracking key without its seq", """
        [[triggers]]
        kind = "tracking"
        seq = "s"
        type = "move"
        key = "t:{s}"
     """, "triggers[0].key: 't:{s}' must hold {$tracking_seq}"),
    ("key that cannot tell happenings apart", """
        [[events]]
        on = "m"
        type = "move"
        key = ["m:{seq}", "m:{chute}"]
        data = { a = "x" }
     """, "events[0].key: 'm:{seq}' cannot tell two happenings apart"),
    ("unknown special", """
        [[events]]
        on = "m"
        type = "move"
        key = "m:{$seq}:{$count}"
     """, "events[0]: unknown special '$count'"),
    ("$data ref to no field", """
        [[events]]
        on = "m"
        type = "move"
        key = "m:{$seq}:{$data.box}"
     """, "events[0]: '$data.box' names no field of its 'data'"),
    ("unknown event type", """
        [[events]]
        on = "m"
        type = "teleport"
        key = "m:{$seq}"
     """, "unknown event type(s) ['teleport']"),
    ("unknown type in a type map", """
        [[events]]
        on = "m"
        type = { field = "r", map = { 0 = "move", 1 = "boom" } }
        key = "m:{$seq}"
     """, "unknown event type(s) ['boom']"),
    ("field and const", """
        [[events]]
        on = "m"
        type = "move"
        key = "m:{$seq}"
        data = { a = { field = "x", const = 1 } }
     """, "'field' and 'const' exclude each other"),
    ("threshold with both sides", """
        [[triggers]]
        kind = "threshold"
        point = "t"
        above = 1
        below = 0
        type = "exception"
        key = "t:{$time_ms}"
     """, "exactly one of 'above' and 'below'"),
    ("ring without {i}", """
        [[triggers]]
        kind = "tracking"
        seq = "s"
        slots = 4
        type = "move"
        key = "t:{$tracking_seq}"
     """, "'seq' must hold '{i}'"),
    ("interval telemetry without interval", """
        [[telemetry]]
        point = "p"
        on = "interval"
     """, "needs an 'interval' above 0"),
    ("unmatched brace", """
        [[events]]
        on = "m"
        type = "move"
        key = "m:{$seq"
     """, "unmatched brace"),
]


@pytest.mark.parametrize(("name", "text", "expected"), CONFIG_ERRORS,
                         ids=[c[0] for c in CONFIG_ERRORS])
def test_mapping_config_errors(name: str, text: str, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        mapping(text)
    assert expected in str(info.value)


def _site(device: str) -> dict[str, Any]:
    return tomllib.loads(textwrap.dedent("""
        [site]
        id = "S"
        [store]
        path = "b.db"
        [[brokers]]
        id = "site"
    """) + textwrap.dedent(device))


@pytest.mark.parametrize(("device", "expected"), [
    ("""
     [[devices]]
     id = "plc"
     driver = "modbus"
     points = [{ name = "n", table = "holding", address = 0 }]
     [devices.mapping]
     [[devices.mapping.triggers]]
     kind = "counter"
     point = "n"
     type = "move"
     key = "n:{boot}"
     """, "devices[0].mapping.triggers[0].key: 'n:{boot}' must hold {$count}"),
    ("""
     [[devices]]
     id = "plc"
     driver = "modbus"
     points = [{ name = "n", table = "holding", address = 0 }]
     [devices.mapping]
     [[devices.mapping.events]]
     on = "n"
     type = "move"
     key = "n:{$seq}"
     data = { q = { field = "n", type = "integer" } }
     """, "devices[0].mapping.events[0].data.q.type: Input should be"),
    ("""
     [[devices]]
     id = "s"
     driver = "mqtt"
     broker = "site"
     topic = "a/b"
     preset = "sorter"
     """, "devices[0].preset: preset 'sorter' is for opcua devices, not mqtt"),
    ("""
     [[devices]]
     id = "s"
     driver = "mqtt"
     broker = "site"
     topic = "a/b"
     preset = "scanner"
     """, "devices[0].preset: unknown preset 'scanner'; expected one of"),
    ("""
     [[devices]]
     id = "s"
     driver = "modbus"
     preset = "conveyor"
     points = [{ name = "n", table = "holding", address = 0 }]
     [devices.mapping]
     params = { a = 1 }
     """, "devices[0].preset: preset 'conveyor' is the built-in conveyor recognizer"),
    ("""
     [[devices]]
     id = "s"
     driver = "opcua"
     endpoint = "opc.tcp://h:4840"
     events = [{ kind = "event", source = "i=2253", type = "i=2041" }]
     """, "kind 'event' needs a preset or a [devices.mapping]"),
])
def test_check_names_the_key_of_a_mapping_problem(tmp_path: Path, device: str,
                                                  expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_site(device), tmp_path / "site.toml")
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_the_documented_examples_are_working_configs_and_in_the_docs() -> None:
    docs = Path(__file__).parent.parent / "docs"
    text = (docs / "mapping.md").read_text()
    examples = sorted((docs / "examples").glob("mapping-*.toml"))
    assert len(examples) == 3
    for path in examples:
        assert path.read_text().rstrip("\n") in text, f"{path.name} differs from mapping.md"
        cfg = parse_config(tomllib.loads(path.read_text()), path)
        assert cfg.devices[0].generic_signals
    from gateway.mapping.config import PRESETS, preset_text

    for name in PRESETS:
        assert preset_text(name).rstrip("\n") in text, f"preset {name} differs from mapping.md"


def test_a_rule_on_one_point_reads_the_current_value_of_another() -> None:
    m = mapping("""
        [[events]]
        on = "door"
        type = "exception"
        key = "door:{$time_ms}"
        data = { state = "door", zone = "zone" }
    """)
    assert {"door", "zone"} <= m.watched()  # a poller delivers both
    rec = MappingRecognizer(SITE, DEV, m)
    rec.feed_poll([Signal(DEV, "zone", 4, T0)], T0)
    ev = events(rec.feed_poll([Signal(DEV, "door", True, T0 + 1)], T0 + 1))
    assert ev[0]["data"] == {"state": True, "zone": 4}
