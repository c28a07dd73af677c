"""AMR recognizer: VDA 5050 messages (decoded as the driver does) → events, as tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from drivers.vda5050.ingest import decode
from gateway.core.events import Event, format_time, make_event_id, parse_time
from gateway.core.records import RecognizerNote
from gateway.recognizers.amr import MAX_PLANNED_ACTIONS, AmrRecognizer, PlannedAction

SITE, DEVICE, M, S = "DC-EAST-1", "amr-fleet", "Acme", "AMR-7"
T0 = parse_time("2026-11-23T10:00:00Z")


def header(n: int, t: float = 0.0, serial: str = S) -> dict[str, Any]:
    return {"headerId": n, "timestamp": format_time(T0 + t), "version": "2.1.0",
            "manufacturer": M, "serialNumber": serial}


def action(aid: str, kind: str, **params: str) -> dict[str, Any]:
    return {"actionId": aid, "actionType": kind, "blockingType": "HARD",
            "actionParameters": [{"key": k, "value": v} for k, v in params.items()]}


def order(order_id: str, nodes: list[tuple[str, list[dict[str, Any]]]],
          edge_actions: list[dict[str, Any]] | None = None, n: int = 0) -> dict[str, Any]:
    edges = [{"edgeId": f"{a}>{b}", "sequenceId": 2 * i + 1, "released": True,
              "startNodeId": a, "endNodeId": b,
              "actions": (edge_actions or []) if i == 0 else []}
             for i, (a, b) in enumerate(zip([x for x, _ in nodes], [x for x, _ in nodes][1:],
                                            strict=False))]
    return {**header(n), "orderId": order_id, "orderUpdateId": 0,
            "nodes": [{"nodeId": node, "sequenceId": 2 * i, "released": True, "actions": acts}
                      for i, (node, acts) in enumerate(nodes)],
            "edges": edges}


def state(n: int, order_id: str, node: str, statuses: dict[str, str], *,
          loads: list[str] | None = None, errors: list[dict[str, Any]] | None = None,
          types: dict[str, str] | None = None, result: dict[str, str] | None = None,
          serial: str = S, battery: float = 80.0, estop: str = "NONE",
          field_violation: bool = False) -> dict[str, Any]:
    types = types or {}
    result = result or {}
    acts = []
    for aid, st in statuses.items():
        a: dict[str, Any] = {"actionId": aid, "actionStatus": st}
        if aid in types:
            a["actionType"] = types[aid]
        if aid in result:
            a["resultDescription"] = result[aid]
        acts.append(a)
    doc = {**header(n, n * 1.0, serial), "orderId": order_id, "orderUpdateId": 0,
           "lastNodeId": node, "lastNodeSequenceId": 0, "nodeStates": [], "edgeStates": [],
           "driving": False, "actionStates": acts,
           "batteryState": {"batteryCharge": battery, "charging": False},
           "operatingMode": "AUTOMATIC", "errors": errors or [],
           "safetyState": {"eStop": estop, "fieldViolation": field_violation}}
    if loads is not None:
        doc["loads"] = [{"loadId": x} for x in loads]
    return doc


def connection(n: int, st: str, t: float = 0.0) -> dict[str, Any]:
    return {**header(n, t), "connectionState": st}


class Amr:
    """A recognizer fed through the driver's decoder, collecting events as dicts.

    ``notes`` holds the recognizer notes as the store would (the last one of a
    key wins, ``None`` deletes); ``restart`` is the gateway killed and started
    again: a fresh recognizer given those notes back.
    """

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.rec = AmrRecognizer(site=SITE, device=DEVICE, **kw)
        self.events: list[Event] = []
        self.notes: dict[str, bytes] = {}

    def feed(self, topic: str, doc: dict[str, Any],
             receive: float = 1000.0) -> list[dict[str, Any]]:
        sig = decode(topic, json.dumps(doc).encode(), doc["manufacturer"], doc["serialNumber"],
                     DEVICE, T0 + receive, 1 << 20)
        assert sig is not None
        out: list[dict[str, Any]] = []
        for r in self.rec.feed(sig):
            if isinstance(r, RecognizerNote):
                assert r.device == DEVICE
                if r.value is None:
                    self.notes.pop(r.key, None)
                else:
                    self.notes[r.key] = r.value
            else:
                assert isinstance(r, Event)
                self.events.append(r)
                out.append(r.to_dict())
        return out

    def restart(self, *, keep_notes: bool = True) -> None:
        self.rec = AmrRecognizer(site=SITE, device=DEVICE, **self.kw)
        if keep_notes:
            self.rec.restore(dict(self.notes))
        else:
            self.notes = {}


def action_id(order_id: str, aid: str, failed: bool = False, serial: str = S) -> str:
    return make_event_id(SITE, DEVICE, f"action:{M}/{serial}/{order_id}/{aid}"
                         + (":failed" if failed else ""))


def brief(evs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in evs:
        d = e["data"]
        assert e["type"] != "pick", "an AMR loading a carton is not an inventory pick"
        if e["type"] == "move":
            out.append(("move", d["container"], d["from"], d["to"], d["mapping"]))
        elif e["type"] == "exception":
            out.append(("exception", d["reason"], d.get("action_id")))
        else:
            out.append((e["type"], d["status"]))
    return out


PICK_DROP = [("ST-01", []), ("ST-02", [action("a1", "pick", loadId="TOTE-1")]),
             ("ST-03", [action("a2", "drop", loadId="TOTE-1")])]


def test_pickup_then_drop_is_one_move_with_all_fields() -> None:
    amr = Amr()
    assert amr.feed("order", order("o1", PICK_DROP)) == []
    assert amr.feed("state", state(1, "o1", "ST-01", {"a1": "WAITING", "a2": "WAITING"})) == []
    assert amr.feed("state", state(2, "o1", "ST-02", {"a1": "RUNNING", "a2": "WAITING"})) == []
    # The pickup is the start of the move: nothing upstream, the carry noted.
    assert amr.feed("state", state(3, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"})) == []
    assert list(amr.notes) == [f"vehicle:{M}/{S}"]
    assert amr.feed("state", state(4, "o1", "ST-02", {"a1": "FINISHED", "a2": "RUNNING"})) == []
    moves = amr.feed("state", state(5, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"}))
    assert brief(moves) == [("move", "TOTE-1", "ST-02", "ST-03", "order")]
    move = moves[0]
    assert move["event_id"] == action_id("o1", "a2")
    assert move["occurred_at"] == format_time(T0 + 5)  # the drop state's own timestamp
    assert move["correlation_id"] == "container:TOTE-1"
    assert move["priority"] == "business"
    assert move["data"] == {
        "container": "TOTE-1", "from": "ST-02", "to": "ST-03",
        "picked_at": format_time(T0 + 3), "pick_action_id": "a1", "vehicle": S,
        "manufacturer": M, "order_id": "o1", "action_id": "a2", "action_type": "drop",
        "mapping": "order"}
    assert amr.rec.state_gaps == 0
    # Periodic states keep listing both actions: nothing more.
    assert amr.feed("state", state(6, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"})) == []


@pytest.mark.parametrize(("params", "nodes_or_edge", "want"), [
    ({"stationName": "RACK-A3", "loadId": "T1"}, "node", "RACK-A3"),  # parameter wins
    ({"loadId": "T1"}, "node", "ST-02"),                               # else the node's id
    ({"loadId": "T1"}, "edge", "ST-01>ST-02"),                         # edge action: edge id
])
def test_station_of_a_pickup(params: dict[str, str], nodes_or_edge: str, want: str) -> None:
    amr = Amr()
    pick = action("a1", "pick", **params)
    drop = action("a2", "drop", loadId="T1")
    if nodes_or_edge == "node":
        amr.feed("order", order("o1", [("ST-01", []), ("ST-02", [pick]), ("ST-04", [drop])]))
    else:
        amr.feed("order", order("o1", [("ST-01", []), ("ST-02", []), ("ST-04", [drop])],
                                edge_actions=[pick]))
    assert amr.feed("state", state(1, "o1", "ST-09", {"a1": "FINISHED"})) == []
    evs = amr.feed("state", state(2, "o1", "ST-04", {"a1": "FINISHED", "a2": "FINISHED"}))
    assert brief(evs) == [("move", "T1", want, "ST-04", "order")]


def test_configured_action_types_and_parameters() -> None:
    amr = Amr(pick_actions={"load"}, drop_actions={"unload"}, station_parameter="dock",
              load_parameter="tote")
    amr.feed("order", order("o1", [("N1", [action("x", "load", tote="B-9", dock="D4")]),
                                   ("N2", [action("y", "unload", tote="B-9")]),
                                   ("N3", [action("z", "pick")])]))
    evs = amr.feed("state", state(1, "o1", "N2", {"x": "FINISHED", "y": "FINISHED",
                                                  "z": "FINISHED"}))
    assert brief(evs) == [("move", "B-9", "D4", "N2", "order")]
    assert amr.rec.unclassified == 1  # "pick" is not a pick action here


def test_failed_action_is_an_exception_with_its_errors() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    errors = [
        {"errorType": "pickFailed", "errorLevel": "WARNING", "errorDescription": "no load",
         "errorReferences": [{"referenceKey": "actionId", "referenceValue": "a1"}]},
        {"errorType": "batteryLow", "errorLevel": "WARNING"},
    ]
    evs = amr.feed("state", state(1, "o1", "ST-02", {"a1": "FAILED", "a2": "WAITING"},
                                  errors=errors, result={"a1": "pick failed: no load"}))
    assert brief(evs) == [("exception", "amr_action_failed", "a1")]
    d = evs[0]["data"]
    assert evs[0]["event_id"] == action_id("o1", "a1", failed=True)
    assert evs[0]["priority"] == "exception"
    assert evs[0]["correlation_id"] == "container:TOTE-1"
    assert d["result_description"] == "pick failed: no load"
    assert d["errors"] == [{"type": "pickFailed", "level": "WARNING", "description": "no load"}]
    assert d["container"] == "TOTE-1" and d["station"] == "ST-02" and "load" not in d
    assert d["vehicle"] == d["amr"] == S
    # Without an error naming the action, all active errors are attached.
    evs = amr.feed("state", state(2, "o1", "ST-02", {"a1": "FAILED", "a2": "FAILED"},
                                  errors=errors[1:]))
    assert brief(evs) == [("exception", "amr_action_failed", "a2")]
    assert evs[0]["data"]["errors"] == [{"type": "batteryLow", "level": "WARNING",
                                         "description": None}]


def test_gap_in_header_ids_still_reports_what_finished_between() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    amr.feed("state", state(1, "o1", "ST-01", {"a1": "WAITING", "a2": "WAITING"}))
    # States 2..6 lost (QoS 0): the pickup and the drop both finished meanwhile.
    evs = amr.feed("state", state(7, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"}))
    assert brief(evs) == [("move", "TOTE-1", "ST-02", "ST-03", "order")]
    # The first state showing the pickup finished dates it.
    assert evs[0]["data"]["picked_at"] == format_time(T0 + 7)
    assert amr.rec.state_gaps == 5


def test_repeated_finished_state_emits_nothing_more() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    first = amr.feed("state", state(1, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"}))
    assert len(first) == 1
    assert amr.feed("state", state(1, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"})) == []
    for n in range(2, 6):  # periodic states keep listing it
        assert amr.feed("state", state(n, "o1", "ST-03", {"a1": "FINISHED",
                                                          "a2": "FINISHED"})) == []
    # A vehicle that restarted its counter is noted, nothing re-emitted.
    assert amr.feed("state", state(0, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"})) == []
    assert amr.rec.header_resets == 1


def test_gateway_restart_mid_carry_keeps_the_pickup() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    amr.feed("state", state(1, "o1", "ST-02", {"a1": "RUNNING", "a2": "WAITING"},
                            loads=[]))
    amr.feed("state", state(2, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"},
                            loads=["TOTE-1"]))
    amr.restart()  # killed while carrying: every state before is gone
    # The vehicle drove on; the first states after the restart show the pickup done
    # (and, like many vehicles, no action types).
    assert amr.feed("state", state(9, "o1", "ST-01", {"a1": "FINISHED", "a2": "RUNNING"},
                                   loads=["TOTE-1"])) == []
    evs = amr.feed("state", state(10, "o1", "ST-09", {"a1": "FINISHED", "a2": "FINISHED"},
                                  loads=[]))
    # The order's pickup and drop came back with the note: to is the order's ST-03.
    assert brief(evs) == [("move", "TOTE-1", "ST-02", "ST-03", "order")]
    assert evs[0]["data"]["picked_at"] == format_time(T0 + 2)  # the pickup's, not a later one
    assert evs[0]["event_id"] == action_id("o1", "a2")
    # Killed again after the drop: the move is not reported again (nor a worse one).
    amr.restart()
    assert amr.feed("state", state(11, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"},
                                   loads=[])) == []
    # The next order starts afresh; its carry is noted again.
    amr.feed("state", state(12, "o2", "ST-03", {"b1": "FINISHED"}, types={"b1": "pick"},
                            loads=["TOTE-2"]))
    amr.restart()
    evs = amr.feed("state", state(15, "o2", "ST-05", {"b1": "FINISHED", "b2": "FINISHED"},
                                  types={"b1": "pick", "b2": "drop"}))
    assert brief(evs) == [("move", "TOTE-2", "ST-03", "ST-05", "state")]
    assert evs[0]["data"]["picked_at"] == format_time(T0 + 12)


def test_drop_without_a_seen_pickup_after_a_restart() -> None:
    # The gateway had no note (a new store, or the pickup happened while it was down).
    amr = Amr()
    evs = amr.feed("state", state(40, "o9", "ST-08", {"p": "FINISHED", "d": "FINISHED"},
                                  types={"p": "pick", "d": "drop"}, loads=[]))
    # Nothing tells which load or from where: the move says so (null), once.
    assert brief(evs) == [("move", None, "ST-08", "ST-08", "state")]
    assert evs[0]["data"]["picked_at"] == format_time(T0 + 40)
    assert evs[0]["correlation_id"] is None
    # With the order known, its pickup station and load are used.
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    evs = amr.feed("state", state(5, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"}))
    assert brief(evs) == [("move", "TOTE-1", "ST-02", "ST-03", "order")]


def test_fresh_recognizer_rederives_the_same_ids() -> None:
    evs = []
    for _ in range(2):  # a fresh recognizer without notes = a gateway on a new store
        amr = Amr()
        evs += amr.feed("state", state(9, "o1", "ST-02", {"a1": "FINISHED", "a2": "FINISHED"},
                                       types={"a1": "pick", "a2": "drop"}))
    assert len(evs) == 2 and evs[0]["event_id"] == evs[1]["event_id"] == action_id("o1", "a2")


def test_vda5050_3_spellings() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    # PAUSED and RETRIABLE are not terminal: nothing yet.
    assert amr.feed("state", state(1, "o1", "ST-02", {"a1": "PAUSED", "a2": "WAITING"})) == []
    assert amr.feed("state", state(2, "o1", "ST-02", {"a1": "RETRIABLE", "a2": "WAITING"})) == []
    assert amr.rec.vehicles()[f"{M}/{S}"]["carrying"] == []
    assert amr.feed("state", state(3, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"})) == []
    assert amr.rec.vehicles()[f"{M}/{S}"]["carrying"] == ["TOTE-1"]
    evs = amr.feed("connection", connection(4, "CONNECTION_BROKEN"))
    assert brief(evs) == [("device_status", "connection_broken"),
                          ("exception", "amr_connection_broken", None)]
    assert amr.rec.broken() == [f"{M}/{S}"]


def test_order_seen_after_the_state_falls_back_to_the_state() -> None:
    amr = Amr()
    amr.feed("state", state(1, "o1", "ST-01", {"a1": "WAITING"}, types={"a1": "pick"}, loads=[]))
    assert amr.feed("state", state(2, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"},
                                   types={"a1": "pick", "a2": "drop"}, loads=["TOTE-1"])) == []
    # The order arrives late: the pickup is not taken again; the drop uses the order.
    amr.feed("order", order("o1", PICK_DROP))
    assert amr.feed("state", state(3, "o1", "ST-02", {"a1": "FINISHED", "a2": "RUNNING"},
                                   loads=["TOTE-1"])) == []
    evs = amr.feed("state", state(4, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"},
                                  loads=[]))
    assert brief(evs) == [("move", "TOTE-1", "ST-02", "ST-03", "order")]
    assert evs[0]["data"]["picked_at"] == format_time(T0 + 2)


def test_order_never_seen() -> None:
    amr = Amr()
    # The gateway starts mid-order: the pickup already finished; then the drop.
    assert amr.feed("state", state(40, "o9", "ST-05", {"p": "FINISHED", "d": "RUNNING"},
                                   types={"p": "pick", "d": "drop"}, loads=["TOTE-5"])) == []
    evs = amr.feed("state", state(41, "o9", "ST-08", {"p": "FINISHED", "d": "FINISHED"},
                                  types={"p": "pick", "d": "drop"}, loads=[]))
    assert brief(evs) == [("move", "TOTE-5", "ST-05", "ST-08", "state")]
    # A vehicle that reports neither loads nor action types: the stations, no load.
    assert amr.feed("state", state(1, "o2", "ST-01", {"q": "FINISHED"}, types={"q": "pick"},
                                   serial="AMR-8")) == []
    evs = amr.feed("state", state(2, "o2", "ST-04", {"q": "FINISHED", "r": "FINISHED"},
                                  types={"q": "pick", "r": "drop"}, serial="AMR-8"))
    assert brief(evs) == [("move", None, "ST-01", "ST-04", "state")]
    # Unknown type: nothing to report but counted.
    assert amr.feed("state", state(3, "o2", "ST-04", {"q": "FINISHED", "r": "FINISHED",
                                                      "s": "FINISHED"}, serial="AMR-8")) == []
    assert amr.rec.unclassified == 1


def test_instant_actions_are_mapped() -> None:
    amr = Amr()
    amr.feed("instantActions", {**header(1), "actions": [
        action("i1", "pick", loadId="TOTE-3", stationName="BUF-1")]})
    assert amr.feed("state", state(1, "o1", "ST-04", {"i1": "FINISHED"})) == []
    amr.feed("instantActions", {**header(2), "actions": [action("i2", "drop", loadId="TOTE-3")]})
    evs = amr.feed("state", state(2, "o1", "ST-06", {"i1": "FINISHED", "i2": "FINISHED"}))
    assert brief(evs) == [("move", "TOTE-3", "BUF-1", "ST-06", "instant")]


def cond_id(name: str, t: float, cleared: bool = False) -> str:
    key = f"amr:{M}/{S}/{name}@{round((T0 + t) * 1000)}"
    return make_event_id(SITE, DEVICE, key + (":cleared" if cleared else ""))


def reasons(evs: list[dict[str, Any]]) -> list[str]:
    assert all(e["type"] == "exception" and e["priority"] == "exception" for e in evs)
    return [e["data"]["reason"] for e in evs]


def test_estop_raised_and_cleared_two_estops_distinct() -> None:
    amr = Amr()
    assert amr.feed("state", state(1, "o", "ST-01", {})) == []
    up = amr.feed("state", state(2, "o", "ST-01", {}, estop="MANUAL"))
    assert reasons(up) == ["amr_estop"]
    assert up[0]["event_id"] == cond_id("estop", 2)
    assert up[0]["occurred_at"] == format_time(T0 + 2)
    d = up[0]["data"]
    assert (d["estop"], d["vehicle"], d["amr"], d["manufacturer"], d["header_id"],
            d["station"], d["order_id"]) == ("MANUAL", S, S, M, 2, "ST-01", "o")
    # Still pressed (another kind of stop too): no new event.
    assert amr.feed("state", state(3, "o", "ST-01", {}, estop="MANUAL")) == []
    assert amr.feed("state", state(4, "o", "ST-01", {}, estop="REMOTE")) == []
    assert amr.rec.open_conditions() == {f"{M}/{S}": ["amr_estop"]}
    down = amr.feed("state", state(5, "o", "ST-01", {}))
    assert reasons(down) == ["amr_estop_cleared"]
    assert down[0]["event_id"] == cond_id("estop", 2, cleared=True)
    assert down[0]["data"]["raised_event_id"] == up[0]["event_id"]
    assert down[0]["data"]["estop"] == "MANUAL" and down[0]["occurred_at"] == format_time(T0 + 5)
    assert amr.rec.open_conditions() == {}
    again = amr.feed("state", state(8, "o", "ST-01", {}, estop="AUTOACK"))
    assert reasons(again) == ["amr_estop"] and again[0]["event_id"] == cond_id("estop", 8)
    assert again[0]["event_id"] != up[0]["event_id"]


def test_estop_open_across_a_gateway_restart() -> None:
    amr = Amr()
    assert reasons(amr.feed("state", state(2, "o", "ST-01", {}, estop="MANUAL"))) == ["amr_estop"]
    amr.restart()
    assert amr.feed("state", state(3, "o", "ST-01", {}, estop="MANUAL")) == []  # not again
    down = amr.feed("state", state(4, "o", "ST-01", {}))
    assert reasons(down) == ["amr_estop_cleared"]
    assert down[0]["event_id"] == cond_id("estop", 2, cleared=True)  # the raise's own key
    amr.restart()
    assert amr.feed("state", state(5, "o", "ST-01", {})) == []
    assert amr.notes == {}  # nothing open, nothing carried, nothing reported: no note


def test_lost_raising_state_raises_with_the_next_state_showing_it() -> None:
    amr = Amr()
    amr.feed("state", state(1, "o", "ST-01", {}))
    # States 2 (pressed) and 3 lost: state 4 still shows it and raises it.
    up = amr.feed("state", state(4, "o", "ST-01", {}, estop="MANUAL"))
    assert reasons(up) == ["amr_estop"] and up[0]["event_id"] == cond_id("estop", 4)
    assert up[0]["data"]["header_id"] == 4
    # Pressed and released between two received states: never seen, nothing raised.
    amr.feed("state", state(5, "o", "ST-01", {}))
    assert amr.feed("state", state(7, "o", "ST-01", {})) == []
    # A state without safetyState says nothing about it: an open e-stop stays open.
    amr.feed("state", state(8, "o", "ST-01", {}, estop="MANUAL"))
    doc = state(9, "o", "ST-01", {})
    del doc["safetyState"]
    assert amr.feed("state", doc) == []
    assert reasons(amr.feed("state", state(10, "o", "ST-01", {}))) == ["amr_estop_cleared"]


def test_field_violation_raised_and_cleared() -> None:
    amr = Amr()
    up = amr.feed("state", state(1, "o", "ST-02", {}, field_violation=True))
    assert reasons(up) == ["amr_field_violation"]
    assert up[0]["event_id"] == cond_id("field_violation", 1)
    assert amr.feed("state", state(2, "o", "ST-02", {}, field_violation=True)) == []
    both = amr.feed("state", state(3, "o", "ST-02", {}, estop="MANUAL"))
    assert reasons(both) == ["amr_estop", "amr_field_violation_cleared"]


def test_fatal_error_raised_and_cleared_not_for_a_failed_action() -> None:
    amr = Amr()
    fatal = {"errorType": "motorFault", "errorLevel": "FATAL",
             "errorDescription": "drive motor overcurrent",
             "errorReferences": [{"referenceKey": "nodeId", "referenceValue": "ST-02"}]}
    warning = {"errorType": "lowSpeed", "errorLevel": "WARNING"}
    up = amr.feed("state", state(1, "o", "ST-02", {}, errors=[fatal, warning]))
    assert reasons(up) == ["amr_fatal_error"]
    d = up[0]["data"]
    assert (d["error_type"], d["description"], d["references"]) == (
        "motorFault", "drive motor overcurrent", {"nodeId": "ST-02"})
    assert up[0]["event_id"] == cond_id("fatal:motorFault[nodeId=ST-02]", 1)
    assert amr.feed("state", state(2, "o", "ST-02", {}, errors=[warning, fatal])) == []
    down = amr.feed("state", state(3, "o", "ST-02", {}, errors=[warning]))
    assert reasons(down) == ["amr_fatal_error_cleared"]
    assert down[0]["data"]["error_type"] == "motorFault"
    # A FATAL error of a failed action is that action's amr_action_failed, not another.
    tied = {"errorType": "pickFailed", "errorLevel": "FATAL",
            "errorReferences": [{"referenceKey": "actionId", "referenceValue": "a1"}]}
    evs = amr.feed("state", state(4, "o", "ST-02", {"a1": "FAILED"}, types={"a1": "pick"},
                                  errors=[tied]))
    assert brief(evs) == [("exception", "amr_action_failed", "a1")]


def test_battery_low_once_per_crossing_with_hysteresis() -> None:
    amr = Amr(battery_low=20.0, battery_clear=30.0)
    assert amr.feed("state", state(1, "o", "ST-01", {}, battery=21.0)) == []
    low = amr.feed("state", state(2, "o", "ST-01", {}, battery=19.5))
    assert reasons(low) == ["amr_battery_low"]
    d = low[0]["data"]
    assert (d["battery_charge"], d["battery_low"], d["battery_clear"]) == (19.5, 20.0, 30.0)
    assert low[0]["event_id"] == cond_id("battery_low", 2)
    # Still low, or back over the alarm level but under the clear level: nothing.
    for n, charge in [(3, 18.0), (4, 12.0), (5, 22.0), (6, 19.0), (7, 29.9)]:
        assert amr.feed("state", state(n, "o", "ST-01", {}, battery=charge)) == []
    amr.restart()  # not raised again by a restarted gateway
    assert amr.feed("state", state(8, "o", "ST-01", {}, battery=15.0)) == []
    up = amr.feed("state", state(9, "o", "ST-01", {}, battery=30.0))
    assert reasons(up) == ["amr_battery_low_cleared"]
    assert up[0]["event_id"] == cond_id("battery_low", 2, cleared=True)
    assert up[0]["data"]["battery_charge"] == 30.0
    assert amr.feed("state", state(10, "o", "ST-01", {}, battery=25.0)) == []
    again = amr.feed("state", state(11, "o", "ST-01", {}, battery=19.9))
    assert reasons(again) == ["amr_battery_low"]
    assert again[0]["event_id"] == cond_id("battery_low", 11)
    # Without battery_low configured the battery is not watched.
    assert Amr().feed("state", state(1, "o", "ST-01", {}, battery=3.0)) == []


def test_connection_states_and_ids() -> None:
    amr = Amr()
    online = amr.feed("connection", connection(1, "ONLINE", 1.0))
    assert brief(online) == [("device_status", "online")]
    assert online[0]["event_id"] == make_event_id(
        SITE, DEVICE, f"connection:{M}/{S}/1@{round((T0 + 1.0) * 1000)}")
    assert online[0]["priority"] == "telemetry"
    assert online[0]["occurred_at"] == format_time(T0 + 1.0)
    # The same retained message again (a resubscribe): nothing.
    assert amr.feed("connection", connection(1, "ONLINE", 1.0)) == []
    # The last will: composed at connect (headerId 0), sent by the broker later.
    broken = amr.feed("connection", connection(0, "CONNECTIONBROKEN", 0.5), receive=2000.0)
    assert brief(broken) == [("device_status", "connection_broken"),
                             ("exception", "amr_connection_broken", None)]
    assert broken[1]["occurred_at"] == format_time(T0 + 2000.0)  # when it broke, not connect
    assert broken[0]["event_id"] != broken[1]["event_id"]
    assert amr.rec.connection_counts() == {"connection_broken": 1}
    assert brief(amr.feed("connection", connection(2, "ONLINE", 3.0))) == [
        ("device_status", "online")]
    assert brief(amr.feed("connection", connection(3, "OFFLINE", 4.0))) == [
        ("device_status", "offline")]
    assert amr.rec.broken() == []


def test_memory_is_bounded() -> None:
    amr = Amr(max_vehicles=3)
    for i in range(5):
        amr.feed("state", state(1, "o", "N", {}, serial=f"V{i}"))
    assert list(amr.rec.vehicles()) == [f"{M}/V2", f"{M}/V3", f"{M}/V4"]
    assert amr.rec.evicted_vehicles == 2
    many = [action(f"a{i}", "pick") for i in range(MAX_PLANNED_ACTIONS + 10)]
    amr.feed("instantActions", {**header(1, serial="V4"), "actions": many})
    planned = amr.rec._vehicles[(M, "V4")].planned
    assert len(planned) == MAX_PLANNED_ACTIONS
    assert "a0" not in planned and isinstance(planned["a10"][1], PlannedAction)


def test_not_a_report_is_a_type_error() -> None:
    from gateway.core.events import Signal

    with pytest.raises(TypeError, match="not a VDA 5050 report"):
        AmrRecognizer(site=SITE, device=DEVICE).feed(Signal(DEVICE, "state", {}, 0.0))


def test_every_amr_event_validates_against_the_schema() -> None:
    from importlib import resources

    import jsonschema

    schema = json.loads(resources.files("gateway").joinpath("schema/wh.event.v1.json")
                        .read_text("utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    amr = Amr(battery_low=20.0)
    amr.feed("order", order("o1", PICK_DROP))
    fatal = {"errorType": "driveFault", "errorLevel": "FATAL"}
    for n, kw in enumerate([
        {"statuses": {"a1": "FINISHED", "a2": "WAITING"}},
        {"statuses": {"a1": "FINISHED", "a2": "FINISHED"}, "estop": "MANUAL", "battery": 10.0,
         "field_violation": True, "errors": [fatal]},
        {"statuses": {"a1": "FINISHED", "a2": "FINISHED"}, "battery": 90.0},
        {"statuses": {"b1": "FAILED"}, "types": {"b1": "drop"}},
    ], start=1):
        statuses = kw.pop("statuses")
        amr.feed("state", state(n, "o1", "ST-03", statuses, **kw))
    amr.feed("connection", connection(9, "CONNECTIONBROKEN"))
    types = sorted({(e.type, e.to_dict()["data"].get("reason")) for e in amr.events},
                   key=str)
    assert len(types) == 12, types  # move, 4 x raised and cleared, failed, broken, status
    for ev in amr.events:
        errors = [e.message for e in validator.iter_errors(ev.to_dict())]
        assert errors == [], (ev.to_dict(), errors)
    # A move without the AMR's vehicle would not validate: the schema checks it.
    bad = next(e.to_dict() for e in amr.events if e.type == "move")
    bad["data"]["picked_at"] = "yesterday"
    assert list(validator.iter_errors(bad))


def test_unreadable_notes_are_skipped_and_named() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    amr.feed("state", state(1, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"}))
    good = dict(amr.notes)
    rec = AmrRecognizer(site=SITE, device=DEVICE)
    # JSON that is not a note's shape (a list where a table belongs) is as unreadable.
    wrong_shape = json.dumps({"order_id": "o", "reported": [], "plans": [], "carried": [],
                              "open": []}).encode()
    problems = rec.restore({**good, f"vehicle:{M}/AMR-9": b"{not json",
                            f"vehicle:{M}/AMR-8": wrong_shape, "something-else": b"{}"})
    assert len(problems) == 3
    assert any("AMR-9" in p for p in problems) and any("AMR-8" in p for p in problems)
    assert any("not a vehicle note" in p for p in problems)
    assert rec.carrying() == 1 and list(rec.vehicles()) == [f"{M}/{S}"]
