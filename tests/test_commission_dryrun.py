"""The dry run's stand-ins on the gateway's own pipeline and scanner recognizer (no I/O)."""

from __future__ import annotations

import json

from drivers.mqtt.config import MqttDevice
from gateway.commission.dryrun import DryRunHandoff, Observation, ObservingPipeline
from gateway.commission.render import Printer
from gateway.core.errors import IngestError
from gateway.core.events import Event, Signal
from gateway.core.records import IngestDeadLetter
from gateway.ingest import DriverIngest

T0 = 1_795_428_902.0


def _read(read_id: str, code: str, at: float) -> Signal:
    return Signal("scan-01", "read", code, at, at, read_id, attrs={"symbology": "CODE128"})


def _pipeline() -> tuple[ObservingPipeline, list[Observation], list[str]]:
    seen: list[Observation] = []
    lines: list[str] = []
    printer = Printer(lines.append, as_json=True)

    def report(obs: Observation) -> None:
        seen.append(obs)
        printer.observation(obs)

    dev = MqttDevice.model_validate({"id": "scan-01", "driver": "mqtt", "broker": "site",
                                     "topic": "t/scan-01"})
    ingest = DriverIngest("S", [dev], DryRunHandoff(report), "mqtt", pipeline=ObservingPipeline)
    pipe = ingest.device("scan-01")
    assert isinstance(pipe, ObservingPipeline)
    return pipe, seen, lines


def test_each_signal_is_reported_with_its_records_once_and_acknowledged_at_once() -> None:
    pipe, seen, lines = _pipeline()
    acks: list[int] = []
    pipe.accept(_read("1", "TOTE-1", T0), None, lambda: acks.append(1))
    pipe.accept(_read("1", "TOTE-1", T0), None, lambda: acks.append(2))  # a redelivery
    records = pipe.recognize(_read("2", "NOREAD", T0 + 1), None)
    assert pipe.hand_off(records, lambda: acks.append(3))
    assert acks == [1, 2, 3], "the source is acknowledged at once, nothing waits for a commit"
    assert [len(o.signals) for o in seen] == [1, 1, 1], "a record handed off is not shown again"
    assert [type(r) for o in seen for r in o.records] == [Event, Event, Event]
    docs = [json.loads(t) for t in lines]
    events = [d for d in docs if d["kind"] == "event"]
    assert [(e["event"]["type"], e["repeat"], e["signals"]) for e in events] == [
        ("scan", False, [1]), ("scan", True, [2]), ("exception", False, [3])]
    assert events[0]["event"]["event_id"] == events[1]["event"]["event_id"]
    assert pipe.saturated is False


def test_input_that_cannot_become_a_signal_is_shown_as_its_dead_letter() -> None:
    pipe, seen, lines = _pipeline()
    acked: list[bool] = []
    pipe.reject(IngestError("not_json", "Expecting value"), (b"{oops", {"topic": "t/scan-01"}),
                lambda: acked.append(True))
    direct = pipe.dead_letter(IngestError("bad_field", "code"), b"[]", {"topic": "t/scan-01"})
    assert pipe.hand_off([direct], None)
    assert acked == [True]
    assert [(o.signals, type(o.records[0])) for o in seen] == [
        ((), IngestDeadLetter), ((), IngestDeadLetter)], "each shown once, without signals"
    docs = [json.loads(t) for t in lines]
    assert [(d["kind"], d["signals"], d["reason"], d["payload"]) for d in docs] == [
        ("dead_letter", [], "not_json: Expecting value", "{oops"),
        ("dead_letter", [], "bad_field: code", "[]")]
    assert pipe.snapshot()["ingest_errors"] == {"not_json": 1, "bad_field": 1}


def test_a_signal_that_makes_nothing_says_so() -> None:
    pipe, _, lines = _pipeline()
    pipe.accept(_read("1", "TOTE-1", T0), None, None)
    pipe.accept(_read("2", "TOTE-1", T0 + 0.1), None, None)  # a double read, debounced
    docs = [json.loads(t) for t in lines]
    assert [d["kind"] for d in docs] == ["signal", "event", "signal", "no_event"]
    assert docs[-1]["signals"] == [2]
