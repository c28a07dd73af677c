"""Canonical business events (schema ``wh.event.v1``) and signals.

A *signal* is one raw observation from a device; a *recognizer* turns signals
into *events*. Both are frozen slotted dataclasses: they sit on the hot path
and are never mutated after creation.

``event_id`` is a UUID v5 over ``site / device / source key``. The source key
comes from the physical source (scanner read id, VDA 5050 order/action id,
OPC UA event id, Modbus counter value), never from gateway memory, so the same
physical happening re-read after a crash or a QoS 1 redelivery gets the same
id and upstream can deduplicate.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

SCHEMA: Final = "wh.event.v1"

#: Namespace of every event id this gateway derives. Changing it would change
#: every id and break upstream deduplication across an upgrade: never change it.
EVENT_NAMESPACE: Final = uuid.UUID("6f1d8a52-6c1e-5e0b-9a57-3f0c2b7d9e41")


class Priority(enum.IntEnum):
    """Priority class of an event; lower values are more precious.

    ``BUSINESS`` and ``EXCEPTION`` events are never dropped by the gateway;
    ``TELEMETRY`` may be evicted oldest-first when the store is full.
    """

    BUSINESS = 0
    EXCEPTION = 1
    TELEMETRY = 2


_PRIORITY_NAMES: Final = {p: p.name.lower() for p in Priority}

#: Event types the gateway knows, with their priority class.
EVENT_TYPES: Final[Mapping[str, Priority]] = {
    "pick": Priority.BUSINESS,
    "pack": Priority.BUSINESS,
    "move": Priority.BUSINESS,
    "scan": Priority.BUSINESS,
    "exception": Priority.EXCEPTION,
    "device_status": Priority.TELEMETRY,
    "telemetry": Priority.TELEMETRY,
}


_NAMESPACE_BYTES: Final = EVENT_NAMESPACE.bytes
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def make_event_id(site: str, device: str, source_key: str) -> str:
    """Derive the deterministic event id for one physical happening.

    Exactly ``str(uuid.uuid5(EVENT_NAMESPACE, "site/device/source_key"))``,
    computed without building ``UUID`` objects (it runs once per event).
    """
    digest = hashlib.sha1(
        _NAMESPACE_BYTES + f"{site}/{device}/{source_key}".encode(), usedforsecurity=False
    ).digest()
    b = bytearray(digest[:16])
    b[6] = (b[6] & 0x0F) | 0x50
    b[8] = (b[8] & 0x3F) | 0x80
    x = b.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_second_cache: tuple[int, str] = (-1, "")


def format_time(ts: float) -> str:
    """Format a POSIX timestamp as ISO 8601 UTC with milliseconds and ``Z``.

    Truncates to the millisecond. The formatted second is cached: this runs
    twice per event on the ingest hot path.
    """
    global _second_cache
    # Same rounding as datetime.fromtimestamp: to the microsecond, then truncate.
    frac, whole = math.modf(ts)
    rem = round(frac * 1e6)
    sec = int(whole)
    if rem >= 1_000_000:
        sec, rem = sec + 1, rem - 1_000_000
    elif rem < 0:
        sec, rem = sec - 1, rem + 1_000_000
    cached = _second_cache
    if cached[0] != sec:
        t = time.gmtime(sec)
        cached = (sec, f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
                       f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}")
        _second_cache = cached
    return f"{cached[1]}.{rem // 1000:03d}Z"


def parse_time(value: object) -> float:
    """Parse a source timestamp: ISO 8601 string, or epoch seconds/milliseconds.

    Raises ``ValueError`` naming what was wrong. Numbers above 1e11 are taken
    as milliseconds (1e11 s is the year 5138).
    """
    if isinstance(value, bool):
        raise ValueError(f"timestamp must be ISO 8601 or epoch number, got {value!r}")
    if isinstance(value, int | float):
        try:
            ts = float(value)
        except OverflowError:  # an integer beyond any float
            raise ValueError(f"timestamp out of range: integer of {len(str(value))} digits"
                             ) from None
        return _representable(ts / 1000.0 if ts > 1e11 else ts, value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"timestamp is not ISO 8601: {value!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return _representable(dt.timestamp(), value)
    raise ValueError(f"timestamp must be ISO 8601 or epoch number, got {type(value).__name__}")


def _representable(ts: float, value: object) -> float:
    # NaN, infinities and instants outside years 1..9999 would pass here and
    # then make ``format_time`` raise deep inside a recognizer.
    try:
        datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"timestamp out of range: {value!r}") from None
    return ts


@dataclass(frozen=True, slots=True)
class Signal:
    """One raw observation from a device.

    ``source_time`` is the device's own time when it has one, else the receive
    time; ``source_seq`` is the device's sequence/read id when it has one.
    ``attrs`` carries protocol-specific extras (symbology, topic, ...).
    """

    device: str
    point: str
    value: Any
    receive_time: float
    source_time: float | None = None
    source_seq: str | None = None
    quality: str = "good"
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """A canonical business event, ready for the store.

    ``body`` is the canonical JSON encoding: it is what both the store keeps
    and the sinks send, so it is computed once here and never re-encoded.
    """

    event_id: str
    type: str
    priority: Priority
    device: str
    body: bytes

    @classmethod
    def create(
        cls,
        *,
        site: str,
        device: str,
        type: str,
        source_key: str,
        occurred_at: float,
        observed_at: float,
        data: Mapping[str, Any],
        correlation_id: str | None = None,
        priority: Priority | None = None,
    ) -> Event:
        """Build an event and its canonical JSON body."""
        if priority is None:
            priority = EVENT_TYPES.get(type, Priority.TELEMETRY)
        event_id = make_event_id(site, device, source_key)
        # Hand-assembled canonical JSON (same bytes as json.dumps of the document
        # in this key order): this runs once per event on the ingest hot path.
        corr = "null" if correlation_id is None else _encode_str(correlation_id)
        body = (
            f'{{"event_id":"{event_id}","type":{_encode_str(type)},"schema":"{SCHEMA}",'
            f'"site":{_encode_str(site)},"device":{_encode_str(device)},'
            f'"occurred_at":"{format_time(occurred_at)}",'
            f'"observed_at":"{format_time(observed_at)}",'
            f'"correlation_id":{corr},"priority":"{_PRIORITY_NAMES[priority]}",'
            f'"data":{_encode_json(data if isinstance(data, dict) else dict(data))}}}'
        ).encode()
        return cls(event_id=event_id, type=type, priority=priority, device=device, body=body)

    def to_dict(self) -> dict[str, Any]:
        """Decode the canonical body (for tests and operator tools)."""
        result: dict[str, Any] = json.loads(self.body)
        return result
