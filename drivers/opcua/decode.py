"""OPC UA notifications → signals; anything that cannot become one raises ``IngestError``.

Event fields are looked up by browse name (the last element of the select
clause's browse path), as the event filter built from the event type lists
them. Divert confirms need ``TrackingId`` and a known ``Result``; scan events
need ``ScanResult`` (a structure with ``CodeType``, ``ScanData``,
``Timestamp``) or at least a ``Time``. Data-change values must be JSON-safe:
numbers (finite), booleans, strings, date-times, arrays of those, localized
texts; other values are refused.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds

from gateway.core.errors import IngestError
from gateway.core.events import Signal
from gateway.core.reports import DIVERT_CONFIRM, DIVERT_RESULTS, SCAN

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: OPC UA's "no time" (1601-01-01), which servers send for unset DateTimes.
_NO_TIME = datetime(1601, 1, 1)


def field_names(select_clauses: Sequence[ua.SimpleAttributeOperand]) -> list[str]:
    """The name each select clause's value goes by (last browse-path element)."""
    names = []
    for clause in select_clauses:
        path = clause.BrowsePath
        names.append(path[-1].Name if path else AttributeIds(clause.AttributeId).name)
    return names


def event_types(evfilter: ua.EventFilter) -> frozenset[ua.NodeId]:
    """The event types an ``OfType``/``InList`` where clause admits (empty: any)."""
    types: set[ua.NodeId] = set()
    for element in evfilter.WhereClause.Elements:
        for operand in element.FilterOperands:
            value = getattr(operand, "Value", None)
            if value is not None and isinstance(value.Value, ua.NodeId):
                types.add(value.Value)
    return frozenset(types)


def epoch(when: Any) -> float | None:
    """A UA DateTime (naive = UTC) as POSIX seconds; ``None`` for unset times."""
    if not isinstance(when, datetime):
        return None
    if when.tzinfo is None:
        if when <= _NO_TIME:
            return None
        when = when.replace(tzinfo=UTC)
    seconds: float = (when - _EPOCH).total_seconds()
    return seconds


def micros(when: datetime) -> int:
    """A UA DateTime as integer µs since the epoch (exact: the id of a data change uses it)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    d = when - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _text(fields: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = fields.get(name)
    if isinstance(value, ua.LocalizedText):
        value = value.Text
    if value is None or value == "":
        if required:
            raise IngestError("missing_field", f"event field {name!r} is empty or missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise IngestError("bad_field", f"event field {name!r} must be a string, got {value!r}")
    return str(value)


def divert_signal(device: str, fields: dict[str, Any], receive_time: float) -> Signal:
    """One divert-confirm event → a ``divert_confirm`` signal."""
    tracking = _text(fields, "TrackingId", required=True)
    result = _text(fields, "Result", required=True)
    if result not in DIVERT_RESULTS:
        raise IngestError("bad_result", f"Result {result!r} is not one of {sorted(DIVERT_RESULTS)}")
    seq = fields.get("ConfirmSeq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise IngestError("bad_field", f"event field 'ConfirmSeq' must be an integer, got {seq!r}")
    return Signal(
        device=device, point=DIVERT_CONFIRM, value=result, receive_time=receive_time,
        source_time=epoch(fields.get("Time")), source_seq=f"{tracking}:{seq}",
        attrs={"tracking_id": tracking, "confirm_seq": seq,
               "barcode": _text(fields, "Barcode", required=False),
               "chute": _text(fields, "Chute", required=False),
               "induct": _text(fields, "Induct", required=False)},
    )


def scan_signal(device: str, fields: dict[str, Any], receive_time: float) -> Signal:
    """One AutoID scan event → a ``scan`` signal (value = the scanned code, "" for no-read)."""
    result = fields.get("ScanResult")
    if result is None:
        raise IngestError("missing_field", "event field 'ScanResult' is missing")
    if isinstance(result, ua.ExtensionObject):
        raise IngestError("bad_field", "ScanResult is a structure the server did not describe "
                                       f"(encoding {result.TypeId})")
    code = getattr(result, "ScanData", None)
    if isinstance(code, bytes):
        try:
            code = code.decode()
        except UnicodeDecodeError:
            raise IngestError("bad_field", f"ScanData is not UTF-8: {code!r}") from None
    if code is None:
        code = ""
    if not isinstance(code, str):
        raise IngestError("bad_field", f"ScanData must be a string, got {code!r}")
    when = epoch(getattr(result, "Timestamp", None))
    if when is None:
        when = epoch(fields.get("Time"))
    scan_id = fields.get("ScanId")
    if scan_id is not None and (isinstance(scan_id, bool) or not isinstance(scan_id, int | str)):
        raise IngestError("bad_field", f"event field 'ScanId' must be an integer, got {scan_id!r}")
    return Signal(
        device=device, point=SCAN, value=code, receive_time=receive_time, source_time=when,
        source_seq=None if scan_id is None else str(scan_id),
        attrs={"code_type": getattr(result, "CodeType", None) or None,
               "reader": _text(fields, "DeviceName", required=False)},
    )


def json_value(value: Any, where: str) -> Any:
    """A data-change value as something the event JSON can carry, or ``IngestError``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise IngestError("bad_value", f"{where}: {value!r} is not a finite number")
        return value
    if isinstance(value, datetime):
        when = epoch(value)
        return None if when is None else value.replace(tzinfo=UTC).isoformat()
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, list | tuple):
        return [json_value(v, where) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_value(getattr(value, f.name), where)
                for f in dataclasses.fields(value)}
    raise IngestError("unsupported_type", f"{where}: {type(value).__name__} values are not read")


def quality(status: ua.StatusCode | None) -> str:
    """``good`` / ``uncertain`` / ``bad`` from a status code's severity bits."""
    if status is None:
        return "good"
    severity = status.value >> 30
    return "good" if severity == 0 else ("uncertain" if severity == 1 else "bad")


_PLAIN = frozenset({str, int, bool, type(None)})


def event_value(value: Any) -> Any:
    """Any event field as something a mapping (and the event JSON) can carry; never raises.

    Like ``json_value``, plus: node ids as their string form, byte strings as
    UTF-8 text (hex when not text), qualified names as their name, status
    codes as their name; anything else as its text.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        if value.tzinfo is None:  # UA DateTimes are naive UTC; 1601 is "no time"
            return None if value <= _NO_TIME else value.isoformat() + "+00:00"
        return value.isoformat()
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return bytes(value).hex()
    if isinstance(value, ua.NodeId):
        return value.to_string()
    if isinstance(value, ua.QualifiedName):
        return value.Name
    if isinstance(value, ua.StatusCode):
        return value.name
    if isinstance(value, ua.Variant):
        return event_value(value.Value)
    if isinstance(value, list | tuple):
        return [event_value(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: event_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def select_fields(evfilter: ua.EventFilter, wanted: frozenset[str] | None) -> None:
    """Keep only the select clauses a mapping reads (by path, browse name or first element)."""
    if wanted is None:
        return
    kept = []
    for clause in evfilter.SelectClauses:
        names = [q.Name for q in clause.BrowsePath]
        if not names or "/".join(names) in wanted or names[-1] in wanted or names[0] in wanted:
            kept.append(clause)
    evfilter.SelectClauses = kept


def field_paths(select_clauses: Sequence[ua.SimpleAttributeOperand]) -> list[str]:
    """Each select clause's browse path as ``A/B`` (one name for a top-level field)."""
    paths = []
    for clause in select_clauses:
        path = clause.BrowsePath
        paths.append("/".join(q.Name for q in path) if path
                     else AttributeIds(clause.AttributeId).name)
    return paths


def event_signal(device: str, point: str, fields: dict[str, Any], receive_time: float,
                 attrs: dict[str, Any]) -> Signal:
    """Any event → a generic signal for a mapping: value = every field, JSON-safe.

    ``fields`` is keyed by browse path (``A/B``); each field is also there by
    its browse name (the last element) unless a top-level field has that name.
    The source time is the event's ``Time``.
    """
    doc: dict[str, Any] = {}
    nested = False
    for path, raw in fields.items():
        doc[path] = raw if type(raw) in _PLAIN else event_value(raw)
        nested = nested or "/" in path
    if nested:
        for path, v in list(doc.items()):
            if "/" in path:
                doc.setdefault(path.rsplit("/", 1)[1], v)
    return Signal(device=device, point=point, value=doc, receive_time=receive_time,
                  source_time=epoch(fields.get("Time")), attrs=attrs)
