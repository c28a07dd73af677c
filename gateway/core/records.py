"""What the store keeps and hands out: records to append, rows to forward, dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gateway.core.events import Event


@dataclass(frozen=True, slots=True)
class IngestDeadLetter:
    """A source message that could not become a signal.

    Kept whole up to the store's ``dead_letter_payload_bytes``; a longer
    payload is cut to that prefix and its context gains ``original_size``,
    ``sha256`` and ``truncated`` (see ``Store.append``).
    """

    device: str
    reason: str
    payload: bytes
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SinkDeadLetter:
    """An event a sink's upstream permanently rejected."""

    seq: int
    event_id: str
    reason: str


Record = Event | IngestDeadLetter


class Row(NamedTuple):
    """One stored event as a forwarder reads it (a tuple: cheap to build in bulk)."""

    seq: int
    event_id: str
    type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter as operators see it."""

    id: int
    kind: str
    sink: str | None
    device: str | None
    event_id: str | None
    type: str | None
    reason: str
    body: bytes
    context: dict[str, Any]
    created: float
