"""The truth check: what the WMS accepted against what physically happened.

``verify(entries, events)`` compares the ledger (``simulators.site.ledger``)
with the events a WMS simulator accepted and returns one report, counted per
event type:

- ``missing``: a happening of a checked kind whose event never arrived (a
  happening the device itself lost counts here only when no exception
  reported the loss);
- ``phantom``: an event of a checked type that no happening accounts for;
- ``wrong_fields``: an event whose ``type``, ``device``, one of the ledger's
  ``fields`` or (for kinds whose source carries an exact time) whose
  ``occurred_at`` differs from the ledger;
- ``out_of_order``: per container, two consecutive happenings whose events'
  ``occurred_at`` are in the opposite order. Only pairs whose times are
  comparable count: both stamped by device clocks, or both by one device.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from simulators.site.kinds import KINDS, Kind
from simulators.site.ledger import Entry

__all__ = ["fetch_wms_events", "verify"]

_EXAMPLES = 5


def fetch_wms_events(control_url: str, page: int = 10_000) -> list[dict[str, Any]]:
    """Every event the WMS simulator accepted, paged from its control API ``/events``."""
    out: list[dict[str, Any]] = []
    after = 0
    base = control_url.rstrip("/")
    while True:
        with urllib.request.urlopen(f"{base}/events?after={after}&limit={page}",
                                    timeout=30) as r:
            doc = json.loads(r.read())
        records = doc["events"]
        if not records:
            return out
        out.extend(rec["event"] for rec in records)
        after = int(doc["next"])


def _checked(kinds: Iterable[str] | None) -> dict[str, Kind]:
    if kinds is None:
        return {name: k for name, k in KINDS.items() if k.produced}
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown ledger kinds {unknown}; expected some of {sorted(KINDS)}")
    return {name: KINDS[name] for name in kinds}


def _diff(entry: Entry, kind: Kind, event: Mapping[str, Any]) -> list[str]:
    wrong = [k for k in ("type", "device") if event.get(k) != getattr(entry, k)]
    data = event.get("data") or {}
    wrong += [f"data.{k}" for k, v in entry.fields.items() if data.get(k) != v]
    if kind.exact_time and event.get("occurred_at") != entry.to_json()["at"]:
        wrong.append("occurred_at")
    return wrong


def verify(entries: list[Entry], events: list[dict[str, Any]],
           kinds: Iterable[str] | None = None) -> dict[str, Any]:
    """The truth check's report (see the module doc); ``ok`` when all four counts are 0."""
    checked = _checked(kinds)
    types = {k.type for k in checked.values()}
    expected: dict[str, Entry] = {}
    lost: list[Entry] = []
    others: set[str] = set()
    for e in entries:
        if e.kind not in checked:
            others.add(e.event_id)
        elif e.lost is not None:
            lost.append(e)
        else:
            expected[e.event_id] = e
    missing: Counter[str] = Counter()
    phantom: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    disorder: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    delivered: dict[str, dict[str, Any]] = {}
    covered: set[int] = set()
    unchecked: Counter[str] = Counter()

    def example(what: str, **detail: Any) -> None:
        if len(examples) < _EXAMPLES * 4:
            examples.append({"problem": what, **detail})

    for ev in events:
        eid, etype = ev.get("event_id"), ev.get("type")
        entry = expected.get(eid) if isinstance(eid, str) else None
        if entry is not None:
            delivered[entry.event_id] = ev
            bad = _diff(entry, checked[entry.kind], ev)
            if bad:
                wrong[entry.type] += 1
                example("wrong_fields", kind=entry.kind, event_id=eid, fields=bad,
                        ledger=entry.to_json(), event=ev)
            continue
        if etype not in types or eid in others:
            unchecked[str(etype)] += 1
            continue
        hits = [e.seq for e in lost if (k := checked[e.kind]).covers and k.covers(e, ev)]
        if hits:
            covered.update(hits)
            continue
        phantom[str(etype)] += 1
        example("phantom", event=ev)
    for eid, entry in expected.items():
        if eid not in delivered:
            missing[entry.type] += 1
            example("missing", ledger=entry.to_json())
    for e in lost:
        if e.seq not in covered:
            missing["exception"] += 1
            example("lost_unreported", ledger=e.to_json())
    by_container: dict[str, list[Entry]] = defaultdict(list)
    for entry in expected.values():
        if entry.container and entry.event_id in delivered:
            by_container[entry.container].append(entry)
    for container, seq in by_container.items():
        seq.sort(key=lambda e: e.seq)
        for a, b in itertools.pairwise(seq):
            ka, kb = checked[a.kind], checked[b.kind]
            if not ((ka.clock == kb.clock == "device") or a.device == b.device):
                continue
            ta = delivered[a.event_id]["occurred_at"]
            tb = delivered[b.event_id]["occurred_at"]
            if ta > tb:
                disorder[b.type] += 1
                example("out_of_order", container=container, first=a.to_json(),
                        then=b.to_json(), first_at=ta, then_at=tb)
    totals = {name: sum(c.values()) for name, c in (
        ("missing", missing), ("phantom", phantom), ("wrong_fields", wrong),
        ("out_of_order", disorder))}
    return {
        "ok": not any(totals.values()),
        **totals,
        "by_type": {t: {"missing": missing[t], "phantom": phantom[t], "wrong_fields": wrong[t],
                        "out_of_order": disorder[t]}
                    for t in sorted(types | set(missing) | set(phantom))},
        "expected": len(expected),
        "delivered": len(delivered),
        "lost_by_device": len(lost),
        "lost_reported": len(covered),
        "unchecked_events": dict(unchecked),
        "unchecked_kinds": dict(Counter(e.kind for e in entries if e.kind not in checked)),
        "examples": examples,
    }
