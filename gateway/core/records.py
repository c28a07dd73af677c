"""What the store keeps and hands out: records to append, rows to forward, dead letters."""

from __future__ import annotations

import base64
import json
import re
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


@dataclass(frozen=True, slots=True)
class RecognizerNote:
    """A recognizer's note about what it is in the middle of, kept with the events.

    Written in the same transaction as the events of its unit: ``value`` set
    replaces the note ``(device, key)``, ``None`` deletes it. The gateway hands
    a device's notes back to its recognizer at start (``restore``), so what a
    source told once (an AMR loaded a carton at 10:15 at PACK-01) outlives a
    crash between two of its messages. Notes never go upstream and do not
    count against ``max_bytes``; a recognizer keeps their number bounded.
    """

    device: str
    key: str
    value: bytes | None


Record = Event | IngestDeadLetter | RecognizerNote


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


def _json_default(value: object) -> str:
    # Contexts are msgpack maps: a peer's bytes in one must not break the listing.
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode()
    return repr(value)


_AUTH = re.compile(r"^\s*(401|403)\b|unauthori[sz]ed|forbidden", re.IGNORECASE)
_TRANSIENT = re.compile(r"^\s*(408|425|429|5[0-9][0-9])\b|time(d )?out|unavailable",
                        re.IGNORECASE)


def dead_letter_category(kind: str, reason: str) -> str:
    """What kind of problem a dead letter is, for operators.

    ``ingest``: a source message that never became an event; ``auth``: the
    upstream refused the gateway's credentials; ``transient``: the upstream
    was overloaded or failing (a replay will likely succeed once it is back);
    ``business``: the upstream refused the event's content (fix the data or
    the upstream's master data, then replay, or discard).
    """
    if kind == "ingest":
        return "ingest"
    if _AUTH.search(reason):
        return "auth"
    if _TRANSIENT.search(reason):
        return "transient"
    return "business"


def dead_letter_container(body: bytes) -> str | None:
    """The container (or barcode) a dead letter is about, if its body names one."""
    if len(body) > 65536 or body[:1] != b"{":
        return None  # events are small JSON objects; a raw payload is not parsed
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    data = doc.get("data")
    for src in (data if isinstance(data, dict) else {}, doc):
        for key in ("container", "code"):
            value = src.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def dead_letter_json(dl: DeadLetter, *, bodies: bool = True) -> str:
    """One dead letter as JSON: the same shape in the API and ``store dead-letters --json``.

    Keys: ``id``, ``kind``, ``sink``, ``device``, ``event_id``, ``type``,
    ``reason``, ``category`` (``dead_letter_category``), ``container``
    (``dead_letter_container``), ``created``, ``context``, ``body_bytes`` and,
    with ``bodies``, ``body_b64`` (the raw body, base64). Bytes inside
    ``context`` are base64 strings; any other value JSON cannot hold is its
    ``repr``.
    """
    doc: dict[str, Any] = {
        "id": dl.id, "kind": dl.kind, "sink": dl.sink, "device": dl.device,
        "event_id": dl.event_id, "type": dl.type, "reason": dl.reason,
        "category": dead_letter_category(dl.kind, dl.reason),
        "container": dead_letter_container(dl.body),
        "created": dl.created, "context": dl.context, "body_bytes": len(dl.body)}
    if bodies:
        doc["body_b64"] = base64.b64encode(dl.body).decode()
    return json.dumps(doc, default=_json_default)
