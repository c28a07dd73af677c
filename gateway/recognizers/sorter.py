"""Sorter and induct reader signals → ``move``, ``scan``, ``exception``, status, telemetry.

Three kinds of signal reach this recognizer (the OPC UA driver makes them):

- ``divert_confirm``: the sorter's confirm of one item at one decision point.
  ``value`` is the result, ``attrs`` carry ``tracking_id``, ``barcode``,
  ``chute``, ``induct`` and ``confirm_seq``. ``diverted`` becomes a ``move``
  (container = barcode, from = induct, to = chute); every other result becomes
  an ``exception`` whose ``reason`` is the result.
- ``scan``: an induct reader's scan (OPC 30010 AutoID style). ``value`` is the
  scanned code, ``source_seq`` the reader's scan id; a no-read code becomes an
  ``exception`` with reason ``no_read``.
- any other point: a data change of a configured variable; ``attrs["kind"]``
  ``status`` makes a ``device_status`` event, anything else ``telemetry``.

Event ids come from the device, never from this process: a divert from the
sorter's tracking id and confirm sequence number, a scan from the reader's
scan id and the scan's own timestamp, a data change from the node and its
source timestamp. A confirm, scan or initial value re-delivered after a
reconnect (by the subscription or by an event-history read) therefore has the
id it had the first time, and the store and upstream drop it as a repeat.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from gateway.core.events import Event, Priority, Signal
from gateway.core.reports import DIVERT_CONFIRM, DIVERT_RESULTS, SCAN

__all__ = [
    "DIVERT_CONFIRM", "DIVERT_RESULTS", "SCAN", "SorterRecognizer", "datachange_source_key",
    "divert_source_key", "scan_source_key",
]

def _ms(ts: float) -> int:
    return round(ts * 1000)


def divert_source_key(sig: Signal) -> str:
    """``divert:<tracking id>:<confirm seq>``, or ``divert:<tracking id>@<ms>`` without a seq."""
    tracking = sig.attrs.get("tracking_id")
    seq = sig.attrs.get("confirm_seq")
    if seq is not None:
        return f"divert:{tracking}:{seq}"
    when = sig.source_time if sig.source_time is not None else sig.receive_time
    return f"divert:{tracking}@{_ms(when)}"


def scan_source_key(sig: Signal) -> str:
    """``scan:<reader>:<scan id>@<ms>``; ``scan:<reader>@<ms>`` when the reader has no scan id."""
    reader = sig.attrs.get("reader") or sig.device
    when = sig.source_time if sig.source_time is not None else sig.receive_time
    if sig.source_seq is None:
        return f"scan:{reader}@{_ms(when)}"
    return f"scan:{reader}:{sig.source_seq}@{_ms(when)}"


def datachange_source_key(sig: Signal) -> str:
    """``dc:<node>@<source timestamp, µs>`` (the driver puts the stamp in ``source_seq``)."""
    return f"dc:{sig.attrs.get('node', sig.point)}@{sig.source_seq}"


@dataclass(slots=True)
class SorterRecognizer:
    """Turns one OPC UA device's signals into events (pure: no I/O, no clock)."""

    site: str
    device: str
    #: ``data.from`` of moves when the confirm does not name its induct.
    induct: str | None = None
    location: str | None = None
    no_read_codes: Collection[str] = ("", "NOREAD")
    moves: int = 0
    exceptions: int = 0
    scans: int = 0
    data_changes: int = 0

    def feed(self, sig: Signal) -> list[Event]:
        """Events for one signal."""
        if sig.point == DIVERT_CONFIRM:
            return [self._divert(sig)]
        if sig.point == SCAN:
            return [self._scan(sig)]
        return [self._data_change(sig)]

    def _divert(self, sig: Signal) -> Event:
        a = sig.attrs
        result = str(sig.value)
        barcode = a.get("barcode") or None
        induct = a.get("induct") or self.induct
        occurred = sig.source_time if sig.source_time is not None else sig.receive_time
        common: dict[str, Any] = {"tracking_id": a.get("tracking_id"),
                                  "confirm_seq": a.get("confirm_seq"), "sorter": self.device}
        key = divert_source_key(sig)
        correlation = f"container:{barcode}" if barcode else None
        reason = DIVERT_RESULTS.get(result, result.replace("-", "_"))
        if reason is None:
            self.moves += 1
            return Event.create(
                site=self.site, device=self.device, type="move", source_key=key,
                occurred_at=occurred, observed_at=sig.receive_time, correlation_id=correlation,
                data={"container": barcode, "from": induct, "to": a.get("chute"), **common},
            )
        self.exceptions += 1
        return Event.create(
            site=self.site, device=self.device, type="exception", source_key=key,
            occurred_at=occurred, observed_at=sig.receive_time, correlation_id=correlation,
            priority=Priority.EXCEPTION,
            data={"reason": reason, "container": barcode, "from": induct,
                  "chute": a.get("chute"), **common},
        )

    def _scan(self, sig: Signal) -> Event:
        code = str(sig.value)
        reader = sig.attrs.get("reader") or self.device
        occurred = sig.source_time if sig.source_time is not None else sig.receive_time
        key = scan_source_key(sig)
        if code in self.no_read_codes:
            self.exceptions += 1
            return Event.create(
                site=self.site, device=self.device, type="exception", source_key=key,
                occurred_at=occurred, observed_at=sig.receive_time, priority=Priority.EXCEPTION,
                data={"reason": "no_read", "reader": reader, "read_id": sig.source_seq,
                      "location": self.location},
            )
        self.scans += 1
        return Event.create(
            site=self.site, device=self.device, type="scan", source_key=key,
            occurred_at=occurred, observed_at=sig.receive_time, correlation_id=f"code:{code}",
            data={"code": code, "symbology": sig.attrs.get("code_type"),
                  "read_id": sig.source_seq, "reader": reader, "location": self.location},
        )

    def _data_change(self, sig: Signal) -> Event:
        self.data_changes += 1
        status = sig.attrs.get("kind") == "status"
        occurred = sig.source_time if sig.source_time is not None else sig.receive_time
        return Event.create(
            site=self.site, device=self.device,
            type="device_status" if status else "telemetry",
            source_key=datachange_source_key(sig), occurred_at=occurred,
            observed_at=sig.receive_time, priority=Priority.TELEMETRY,
            data={"point": sig.point, "value": sig.value, "quality": sig.quality,
                  "node": sig.attrs.get("node")},
        )
