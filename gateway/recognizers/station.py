"""What pick and pack stations share: reading a station message through its field map.

A station's signals are whole JSON documents (MQTT ``message``) or polled
points (Modbus, OPC UA variables). ``StationInput.read`` tells which kind of
station message a signal is (``gateway.mapping.stations``) and takes its
canonical fields out; a message no kind matches, or a required field that is
missing or of the wrong type, is a ``StationReject`` the recognizer turns into
an ingest dead letter naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from gateway.core.errors import IngestError
from gateway.core.events import Signal, parse_time
from gateway.core.records import IngestDeadLetter, Record
from gateway.mapping.stations import KINDS, MISSING, MessageMap, StationConfig, lookup

__all__ = ["DeadLetterFn", "StationBase", "StationInput", "StationReject", "as_number",
           "as_text"]

DeadLetterFn = Callable[[IngestError, bytes, Mapping[str, Any]], IngestDeadLetter]
_dumps: Final = json.JSONEncoder(separators=(",", ":"), default=repr).encode


class StationReject(Exception):
    """A station message that cannot be used; ``kind`` names why (snake_case)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def as_text(value: Any, name: str) -> str | None:
    """A code or id as text (integers too); None when missing/null/empty."""
    if value is MISSING or value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise StationReject("bad_field", f"{name!r} must be text or an integer, got {value!r}")
    return str(value)


def as_number(value: Any, name: str) -> int | float | None:
    """A quantity or weight as a number (numeric text too); None when missing/null."""
    if value is MISSING or value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise StationReject("bad_field", f"{name!r} must be a number, got {value!r}"
                                ) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise StationReject("bad_field", f"{name!r} must be a number, got {value!r}")
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass(frozen=True, slots=True)
class Message:
    """One station message: its kind, canonical fields (MISSING when absent), time."""

    kind: str
    fields: Mapping[str, Any]
    time: float
    #: The message's own time when it had one (else None: the receive time is used).
    source_time: float | None


@dataclass(frozen=True, slots=True)
class StationInput:
    """Reads a station's signals through its resolved message maps (one per kind)."""

    role: str
    messages: Mapping[str, MessageMap]
    #: Polled points (trigger points and field points) the station reads.
    points: frozenset[str] = frozenset()

    @classmethod
    def of(cls, role: str, messages: Mapping[str, MessageMap]) -> StationInput:
        """The reader of a station's messages."""
        points = {m.point for m in messages.values() if m.point is not None}
        for m in messages.values():
            if m.point is not None:
                points.update(m.fields.values())
        return cls(role, dict(messages), frozenset(points))

    def kind_of(self, sig: Signal, values: Mapping[str, Any]) -> str | None:
        """Which kind of message a signal is (None: no kind's rule matches)."""
        topic = sig.attrs.get("topic")
        doc = sig.value if sig.point == "message" else values
        for kind, m in self.messages.items():
            if m.matches(topic, sig.point, doc):
                return kind
        return None

    def read(self, sig: Signal, values: Mapping[str, Any]) -> Message:
        """The kind and fields of one signal (``values``: polled points' current values)."""
        kind = self.kind_of(sig, values)
        if kind is None:
            where = sig.attrs.get("topic") or sig.point
            raise StationReject("no_rule", f"message on {where!r} is none of the station's "
                                f"messages ({', '.join(self.messages)})")
        m = self.messages[kind]
        doc = sig.value if sig.point == "message" else values
        fields = {name: lookup(doc, path) for name, path in m.fields.items()}
        for name in KINDS[self.role][kind]:
            if name.endswith("!") and fields.get(name[:-1], MISSING) in (MISSING, None, ""):
                raise StationReject("missing_field", f"{kind} message: no {name[:-1]!r} "
                                    f"(field {m.fields[name[:-1]]!r})")
        source_time: float | None = sig.source_time
        stamp = fields.get("timestamp", MISSING)
        if stamp not in (MISSING, None):
            try:
                source_time = parse_time(stamp)
            except ValueError as err:
                raise StationReject("bad_timestamp", f"{m.fields['timestamp']!r}: {err}"
                                    ) from None
        t = source_time if source_time is not None else sig.receive_time
        return Message(kind, fields, t, source_time)


def payload_of(sig: Signal) -> bytes:
    """The signal's value as bytes, for a dead letter."""
    try:
        return _dumps(sig.value).encode()
    except (TypeError, ValueError):
        return repr(sig.value).encode()


def own_dead_letter(device: str) -> DeadLetterFn:
    """Dead letters made without a pipeline (table tests)."""
    def make(err: IngestError, payload: bytes, context: Mapping[str, Any]) -> IngestDeadLetter:
        return IngestDeadLetter(device=device, reason=f"{err.kind}: {err.detail}",
                                payload=payload, context=dict(context))
    return make


@dataclass(slots=True)
class StationBase:
    """What every station recognizer has: its config, input reader and dead letters."""

    site: str
    device: str
    config: StationConfig
    location: str | None = None
    _input: StationInput = field(init=False, repr=False)
    _dead_letter: DeadLetterFn = field(init=False, repr=False)

    #: The station's role (``pick_station`` / ``pack_station``).
    ROLE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._input = StationInput.of(self.ROLE, self.config.messages)
        self._dead_letter = own_dead_letter(self.device)

    @property
    def station(self) -> str:
        """``data.station`` of this station's events."""
        return self.config.station or self.device

    def bind_dead_letters(self, fn: DeadLetterFn) -> None:
        """Make dead letters with ``fn`` (the pipeline's: counted and logged per device)."""
        self._dead_letter = fn

    def _reject(self, err: StationReject, sig: Signal) -> Record:
        context = {k: v for k, v in (("topic", sig.attrs.get("topic")),
                                     ("point", sig.point)) if v is not None}
        return self._dead_letter(IngestError(err.kind, err.detail), payload_of(sig), context)
