"""What ``try`` prints: one line per signal, event and dead letter, human or JSON.

Human lines are for a site engineer at a terminal; with ``--json`` every line
is one JSON object with a ``kind`` (``start``, ``connected``, ``unavailable``,
``signal``, ``event``, ``dead_letter``, ``no_event``, ``summary``), so a
commissioning session can be kept and compared.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from gateway.commission.dryrun import Observation
from gateway.core.events import Event, Signal, format_time
from gateway.core.records import IngestDeadLetter

#: Characters of a dead letter's payload shown.
_PAYLOAD_CHARS = 500


def jsonable(value: Any) -> Any:
    """A value as JSON can hold it: records as objects, bytes as base64, others as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, datetime | date):
        return value.isoformat()
    return repr(value)


def _compact(value: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False, separators=(", ", ": "))


def _kind_of(reason: str) -> str:
    return reason.split(":", 1)[0]


class Printer:
    """Turns observations into lines, numbers the signals, keeps the figures of the run."""

    def __init__(self, write: Callable[[str], None], *, as_json: bool) -> None:
        self._write = write
        self.as_json = as_json
        self.signals = 0
        #: Signals plus input that could not become one (what ``--count`` counts).
        self.inputs = 0
        self.events: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self.repeats = 0
        self._ids: set[str] = set()

    def _emit(self, doc: dict[str, Any], text: str) -> None:
        self._write(json.dumps(doc, ensure_ascii=False) if self.as_json else text)

    def start(self, device: str, description: Mapping[str, Any]) -> None:
        """The first line: which device, and that nothing is kept."""
        where = ", ".join(f"{k} {v}" for k, v in description.items() if v is not None)
        self._emit({"kind": "start", "device": device, **jsonable(description),
                    "stores": False, "acknowledges_upstream": False, "sends": False},
                   f"try {device} ({where}): dry run - nothing is stored, acknowledged to a "
                   "broker session of the gateway or sent upstream")

    def connected(self, device: str) -> None:
        """The device (or its broker) answers."""
        self._emit({"kind": "connected", "device": device}, f"{device}: connected")

    def unavailable(self, device: str, error: str) -> None:
        """The device (or its broker) stopped answering."""
        self._emit({"kind": "unavailable", "device": device, "error": error},
                   f"{device}: unavailable: {error}")

    def observation(self, obs: Observation) -> None:
        """The lines of one observation: its signals, then what each became."""
        numbers = []
        for sig in obs.signals:
            self.signals += 1
            numbers.append(self.signals)
            self._signal(self.signals, sig)
        self.inputs += len(obs.signals) or 1
        if not obs.records:
            self._emit({"kind": "no_event", "signals": numbers}, "    -> no event")
        for rec in obs.records:
            if isinstance(rec, Event):
                self._event(numbers, rec)
            elif isinstance(rec, IngestDeadLetter):
                self._dead_letter(numbers, rec)
            # A recognizer note is the recognizer's own bookkeeping: not shown.

    def _signal(self, n: int, sig: Signal) -> None:
        when = sig.source_time if sig.source_time is not None else sig.receive_time
        doc = {"kind": "signal", "n": n, "device": sig.device, "point": sig.point,
               "value": jsonable(sig.value), "quality": sig.quality,
               "source_time": None if sig.source_time is None else format_time(sig.source_time),
               "receive_time": format_time(sig.receive_time), "source_seq": sig.source_seq,
               "attrs": jsonable(sig.attrs)}
        extra = [f"seq {sig.source_seq}"] if sig.source_seq is not None else []
        if sig.quality != "good":
            extra.append(f"quality {sig.quality}")
        tail = f"  ({', '.join(extra)})" if extra else ""
        self._emit(doc, f"#{n} {format_time(when)} signal {sig.point} = "
                        f"{_compact(sig.value)}{tail}")

    def _event(self, numbers: list[int], ev: Event) -> None:
        repeat = ev.event_id in self._ids
        self._ids.add(ev.event_id)
        self.events[ev.type] += 1
        self.repeats += repeat
        body = ev.to_dict()
        note = "  (repeat: same event id as before, the store would keep it once)" if repeat \
            else ""
        corr = body.get("correlation_id")
        self._emit({"kind": "event", "signals": numbers, "repeat": repeat, "event": body},
                   f"    -> {ev.type} {ev.event_id}"
                   f"{'' if corr is None else ' ' + str(corr)} {_compact(body.get('data'))}{note}")

    def _dead_letter(self, numbers: list[int], dl: IngestDeadLetter) -> None:
        self.dead_letters[_kind_of(dl.reason)] += 1
        payload = dl.payload.decode("utf-8", "replace")
        if len(payload) > _PAYLOAD_CHARS:
            payload = payload[:_PAYLOAD_CHARS] + "..."
        lead = "    -> " if numbers else "input refused -> "
        self._emit({"kind": "dead_letter", "signals": numbers, "device": dl.device,
                    "reason": dl.reason, "context": jsonable(dl.context), "payload": payload},
                   f"{lead}ingest dead letter: {dl.reason}\n"
                   f"       raw {payload}  {_compact(dl.context)}")

    def summary(self, device: str, stopped: str) -> None:
        """The last line: what the run saw, and why it stopped."""
        doc = {"kind": "summary", "device": device, "stopped": stopped, "signals": self.signals,
               "events": dict(self.events), "dead_letters": dict(self.dead_letters),
               "repeats": self.repeats}
        events = ", ".join(f"{t} {n}" for t, n in sorted(self.events.items()))
        dls = ", ".join(f"{k} {n}" for k, n in sorted(self.dead_letters.items()))
        self._emit(doc, f"{device}: stopped ({stopped}): {self.signals} signal(s), "
                        f"{sum(self.events.values())} event(s)"
                        f"{f' ({events})' if events else ''}, "
                        f"{sum(self.dead_letters.values())} ingest dead letter(s)"
                        f"{f' ({dls})' if dls else ''}"
                        f"{f', {self.repeats} repeat(s)' if self.repeats else ''}; "
                        "nothing was stored")
