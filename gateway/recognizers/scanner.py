"""Barcode scanner reads → ``scan`` events (and ``exception`` for no-reads)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field

from gateway.core.events import Event, Priority, Signal

#: Codes remembered for debouncing; bounds memory whatever the read rate.
MAX_RECENT_CODES = 4096


def scanner_source_key(sig: Signal) -> str:
    """The physical source key of one scanner read.

    ``read:<read id>@<source time in ms>`` when the scanner stamps its reads,
    ``read:<read id>`` when it does not, ``msg:<sha1 of the payload>`` when it
    sends no read id at all.
    """
    if sig.source_seq is None:
        return f"msg:{sig.attrs.get('digest', '')}"
    if sig.source_time is None:
        return f"read:{sig.source_seq}"
    return f"read:{sig.source_seq}@{round(sig.source_time * 1000)}"


@dataclass(slots=True)
class ScannerRecognizer:
    """Turns ``read`` signals of one scanner into events.

    - The event id comes from the reader, its read id and the read's own
      timestamp (``scanner_source_key``): a redelivered read yields the same
      id, while a scanner whose read counter restarted after a power cycle
      does not reuse the ids of its earlier reads. Without a read id, the
      digest of the raw message is the key.
    - A *double read* — a code this reader already reported, with a new read
      id, less than ``debounce_s`` later by source time — is dropped and
      counted in ``debounced``. Other reads in between do not matter.
    - A code listed in ``no_read_codes`` becomes an ``exception`` event with
      reason ``no_read``.
    """

    site: str
    device: str
    debounce_s: float = 0.5
    no_read_codes: Collection[str] = ("NOREAD", "")
    location: str | None = None
    debounced: int = 0
    _recent: OrderedDict[str, tuple[float, str]] = field(default_factory=OrderedDict,
                                                           repr=False)

    def feed(self, sig: Signal) -> list[Event]:
        """Events for one scanner signal (point ``read``, value = the code)."""
        code = str(sig.value)
        key = scanner_source_key(sig)
        occurred = sig.source_time if sig.source_time is not None else sig.receive_time
        if code in self.no_read_codes:
            return [Event.create(
                site=self.site, device=self.device, type="exception", source_key=key,
                occurred_at=occurred, observed_at=sig.receive_time,
                correlation_id=None, priority=Priority.EXCEPTION,
                data={"reason": "no_read", "reader": self.device, "read_id": sig.source_seq,
                      "location": self.location},
            )]
        if self.debounce_s > 0:
            seen = self._recent.get(code)
            if seen is not None and seen[1] != key and 0 <= occurred - seen[0] < self.debounce_s:
                self.debounced += 1
                return []
            self._remember(code, occurred, key)
        return [Event.create(
            site=self.site, device=self.device, type="scan", source_key=key,
            occurred_at=occurred, observed_at=sig.receive_time,
            correlation_id=f"code:{code}",
            data={"code": code, "symbology": sig.attrs.get("symbology"),
                  "read_id": sig.source_seq, "reader": self.device, "location": self.location},
        )]

    def _remember(self, code: str, occurred: float, key: str) -> None:
        recent = self._recent
        recent[code] = (occurred, key)
        recent.move_to_end(code)
        horizon = occurred - self.debounce_s
        while recent:
            oldest = next(iter(recent.values()))
            if oldest[0] >= horizon and len(recent) <= MAX_RECENT_CODES:
                break
            recent.popitem(last=False)
