"""One container identity: the site's code classification, applied to every event.

A site's codes say what they are by their shape (``[[site.codes]]``: a regex
→ ``container`` / ``carton`` / ``sku`` / ``location`` / ``order`` /
``label``; the first match wins). ``Identity.apply`` runs on every event a
device makes, after its recognizer or mapping and before the store, and
makes the events of one handling unit joinable whatever device saw it:

- a ``scan`` gets ``data.code_kind`` (its code's kind, ``null`` when no rule
  matches); a scan of a ``container`` or ``carton`` code also gets
  ``data.container`` = the code;
- ``correlation_id`` is ``container:<id>`` on every event with a
  ``data.container``, else ``order:<id>`` on an event with a ``data.order``;
  other events keep the recognizer's correlation (a scan of an unclassified
  code keeps ``code:<code>``, a conveyor fault ``fault:<boot>:<n>``).

The event id never changes: it comes from the physical source. Without
``[[site.codes]]`` no code has a kind: scans carry ``code_kind: null`` and
``code:<code>``, every event naming its container still correlates by it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import field_validator

from gateway.core.config import Model
from gateway.core.events import Event

__all__ = ["CODE_KINDS", "CodeRule", "Identity", "classify"]

CodeKind = Literal["container", "carton", "sku", "location", "order", "label"]
CODE_KINDS: Final = ("container", "carton", "sku", "location", "order", "label")
#: Kinds of code that name a handling unit (they become ``data.container``).
_UNIT_KINDS: Final = frozenset({"container", "carton"})
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_encode_str = json.encoder.encode_basestring
# Landmarks of the canonical body ``Event.create`` writes (gateway.core.events).
_CORR, _PRIO, _DATA = b'"correlation_id":', b',"priority":', b',"data":{'
_DATA_CODE = b',"data":{"code":"'


def _correlation(body: bytes) -> tuple[int, int]:
    """Where the correlation id's JSON value is in a canonical body."""
    start = body.index(_CORR) + len(_CORR)
    return start, body.index(_PRIO, start)


def _data_string(body: bytes, key: bytes) -> bytes | None:
    """The raw text of ``data.<key>`` when it is a plain string (no escapes), else None."""
    data = body.find(_DATA)
    if data < 0:
        return None
    for lead in (b'{"', b',"'):
        at = body.find(lead + key + b'":"', data + len(_DATA) - 1)
        if at >= 0:
            start = at + len(key) + 5
            end = body.find(b'"', start)
            value = body[start:end]
            return None if b"\\" in value else value
    return None


class CodeRule(Model):
    """One ``[[site.codes]]`` entry: codes matching ``pattern`` (whole code) are ``kind``."""

    pattern: str
    kind: CodeKind

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as err:
            raise ValueError(f"bad regex {v!r}: {err}") from None
        return v


def classify(rules: Sequence[tuple[re.Pattern[str], str]], code: str) -> str | None:
    """The kind of ``code``: the first rule whose pattern matches all of it, else None."""
    for pattern, kind in rules:
        if pattern.fullmatch(code):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class Identity:
    """The central identity step (see the module doc); pure, no state but the rules."""

    rules: tuple[tuple[re.Pattern[str], str], ...] = ()

    @classmethod
    def of(cls, codes: Sequence[CodeRule]) -> Identity:
        """The step for a site's ``[[site.codes]]``."""
        return cls(tuple((re.compile(c.pattern), c.kind) for c in codes))

    def kind(self, code: str) -> str | None:
        """The kind of one code (None: no rule matches)."""
        return classify(self.rules, code)

    def apply(self, records: Sequence[Any]) -> Sequence[Any]:
        """The records with every event's container identity made whole (others as they are)."""
        out: list[Any] | None = None
        for i, rec in enumerate(records):
            if not isinstance(rec, Event):
                continue
            new = self.event(rec)
            if new is not rec:
                if out is None:
                    out = list(records)
                out[i] = new
        return records if out is None else out

    def event(self, ev: Event) -> Event:
        """One event with its container identity (the same object when nothing changes)."""
        body = ev.body
        scan = ev.type == "scan"
        has_container, has_order = b'"container"' in body, b'"order"' in body
        # Fast paths (this runs on every event): byte landmarks of the canonical body.
        if not scan and not has_container and not has_order:
            return ev
        if not has_order:
            if scan and not has_container and b'"code_kind"' not in body:
                fast = self._scan(ev)
                if fast is not None:
                    return fast
            elif not scan and has_container:
                container = _data_string(body, b"container")
                if container:
                    start, end = _correlation(body)
                    if body[start:end] == b'"container:' + container + b'"':
                        return ev
        return self._rewrite(ev, scan)

    def _scan(self, ev: Event) -> Event | None:
        """A scan whose ``data`` starts with a plain ``code``: spliced, not re-encoded."""
        body = ev.body
        at = body.find(_DATA_CODE)
        if at < 0:
            return None
        start = at + len(_DATA_CODE)
        raw = body[start:body.index(b'"', start)]
        if b"\\" in raw:
            return None
        code = raw.decode()
        kind = self.kind(code)
        extra = ',"code_kind":' + ("null" if kind is None else f'"{kind}"')
        if kind in _UNIT_KINDS:
            extra += f',"container":{_encode_str(code)}'
            c0, c1 = _correlation(body)
            body = body[:c0] + _encode_str(f"container:{code}").encode() + body[c1:]
        if not body.endswith(b"}}"):
            return None
        return Event(event_id=ev.event_id, type=ev.type, priority=ev.priority, device=ev.device,
                     body=body[:-2] + extra.encode() + b"}}")

    def _rewrite(self, ev: Event, scan: bool) -> Event:
        body = ev.body
        doc = json.loads(body)
        data = doc.get("data")
        if not isinstance(data, dict):
            return ev
        changed = False
        if scan and isinstance(data.get("code"), str):
            kind = self.kind(data["code"])
            if data.get("code_kind", ...) != kind:
                data["code_kind"] = kind
                changed = True
            if kind in _UNIT_KINDS and data.get("container") != data["code"]:
                data["container"] = data["code"]
                changed = True
        container, order = data.get("container"), data.get("order")
        if isinstance(container, str | int) and container != "":
            correlation: str | None = f"container:{container}"
        elif isinstance(order, str | int) and order != "":
            correlation = f"order:{order}"
        else:
            correlation = doc.get("correlation_id")
        if correlation != doc.get("correlation_id"):
            doc["correlation_id"] = correlation
            changed = True
        if not changed:
            return ev
        return Event(event_id=ev.event_id, type=ev.type, priority=ev.priority, device=ev.device,
                     body=_encode(doc).encode())
