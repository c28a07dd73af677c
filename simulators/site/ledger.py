"""The site's ground-truth ledger: one JSON line per physical happening.

The first line is a header naming the format and the site; every other line
is one entry::

    {"seq": 17, "kind": "conveyor_move", "type": "move", "device": "conveyor-01",
     "source_key": "trk:1:5", "event_id": "…", "at": "2026-11-23T10:15:02.350Z",
     "t": 1795428902.350123, "container": "TOTE-000003",
     "fields": {"container": "TOTE-000003", "from": "Z01", "to": "Z02", ...},
     "order": "ORD-000002", "line": 1, "sku": "SKU-0042", "qty": 2}

- ``kind`` is the happening (``simulators.site.kinds`` says which event it
  must become); ``type`` is that event's type;
- ``device`` is the id of the device in the gateway's config and
  ``source_key`` the device-native id the gateway derives the event id from
  (``event_id`` is that id, computed here the way the gateway does);
- ``t`` is when it happened by the device's clock (epoch seconds), ``at``
  the same time as the gateway formats it;
- ``fields`` are the event's ``data`` fields the truth check compares;
- ``lost`` (when present) says the device itself lost the record before any
  reader could see it (``"ring_overrun"``): the gateway cannot deliver the
  happening and must report the loss as an exception instead.

Each line is written and flushed as it happens, so a ledger is complete up to
the moment the site stopped, however it stopped.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gateway.core.events import format_time, make_event_id

__all__ = ["FORMAT", "Entry", "Ledger", "read_ledger"]

FORMAT = "wh.site.ledger.v1"


@dataclass(frozen=True, slots=True)
class Entry:
    """One physical happening, as the ledger holds it."""

    seq: int
    kind: str
    type: str
    device: str
    source_key: str
    event_id: str
    t: float
    container: str | None
    fields: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    lost: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as its ledger line holds it."""
        doc: dict[str, Any] = {
            "seq": self.seq, "kind": self.kind, "type": self.type, "device": self.device,
            "source_key": self.source_key, "event_id": self.event_id, "at": format_time(self.t),
            "t": self.t, "container": self.container, "fields": self.fields, **self.extra}
        if self.lost is not None:
            doc["lost"] = self.lost
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Entry:
        """An entry from its ledger line."""
        known = {"seq", "kind", "type", "device", "source_key", "event_id", "at", "t",
                 "container", "fields", "lost"}
        return cls(seq=int(doc["seq"]), kind=str(doc["kind"]), type=str(doc["type"]),
                   device=str(doc["device"]), source_key=str(doc["source_key"]),
                   event_id=str(doc["event_id"]), t=float(doc["t"]),
                   container=doc.get("container"), fields=dict(doc.get("fields") or {}),
                   extra={k: v for k, v in doc.items() if k not in known},
                   lost=doc.get("lost"))


class Ledger:
    """Appends entries to a JSON lines file (or only keeps them, without a path)."""

    def __init__(self, path: Path | None, site: str) -> None:
        self.path = path
        self.site = site
        self.entries: list[Entry] = []
        self._lock = threading.Lock()
        self._out: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._write({"ledger": FORMAT, "site": site})

    def _write(self, doc: dict[str, Any]) -> None:
        if self._out is not None:
            self._out.write(json.dumps(doc, separators=(",", ":")) + "\n")
            self._out.flush()

    def record(self, kind: str, type: str, device: str, source_key: str, t: float, *,
               container: str | None, fields: dict[str, Any], lost: str | None = None,
               **extra: Any) -> Entry:
        """Write one happening; returns its entry."""
        with self._lock:
            entry = Entry(seq=len(self.entries) + 1, kind=kind, type=type, device=device,
                          source_key=source_key,
                          event_id=make_event_id(self.site, device, source_key), t=t,
                          container=container, fields=fields, extra=extra, lost=lost)
            self.entries.append(entry)
            self._write(entry.to_json())
        return entry

    def mark_lost(self, entry: Entry, why: str) -> Entry:
        """Write ``entry`` again, marked as lost by the device (the later line wins)."""
        with self._lock:
            lost = Entry(entry.seq, entry.kind, entry.type, entry.device, entry.source_key,
                         entry.event_id, entry.t, entry.container, entry.fields, entry.extra,
                         lost=why)
            self.entries[entry.seq - 1] = lost
            self._write(lost.to_json())
        return lost

    def close(self) -> None:
        """Close the file."""
        if self._out is not None:
            self._out.close()
            self._out = None


def read_ledger(path: Path) -> tuple[str, list[Entry]]:
    """``(site, entries)`` of a ledger file, in happening order (a re-written seq wins).

    Raises:
        ValueError: naming the line that is not a ledger line.
    """
    site: str | None = None
    by_seq: dict[int, Entry] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(_lines(f), start=1):
            try:
                doc = json.loads(line)
                if n == 1:
                    if doc.get("ledger") != FORMAT:
                        raise ValueError(f"not a {FORMAT} header")
                    site = str(doc["site"])
                    continue
                entry = Entry.from_json(doc)
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: {err}") from None
            by_seq[entry.seq] = entry
    if site is None:
        raise ValueError(f"{path}: empty ledger (no {FORMAT} header)")
    return site, [by_seq[k] for k in sorted(by_seq)]


def _lines(f: TextIO) -> Iterator[str]:
    for line in f:
        # A site killed mid-write leaves at most one partial last line.
        if line.endswith("\n") and line.strip():
            yield line
