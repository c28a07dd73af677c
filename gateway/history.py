"""The last hour of the gateway's rates, in memory: what the status page's charts draw.

Every stats refresh (2 s) the gateway records one ``Sample`` of its cumulative
counters: events committed, events each sink's forwarder moved past, each
sink's backlog, the store's used bytes. A bounded ring keeps the last hour
(``HISTORY_S``); memory is a few hundred kilobytes at most and never grows with
traffic. Rates are differences of neighbouring samples, so a restarted counter
(a new process) only starts a new ring.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final

#: Seconds of history kept.
HISTORY_S: Final = 3600.0
#: Samples over which the current rates are averaged (drain estimate, rate figures).
RATE_WINDOW_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative figures at one moment (wall time ``t``)."""

    t: float
    events_in: int
    #: Sink -> events its forwarder moved past since start.
    delivered: Mapping[str, int]
    #: Sink -> events after its cursor.
    backlog: Mapping[str, int]
    store_used_bytes: int


class History:
    """A ring of samples covering the last ``span_s`` seconds."""

    def __init__(self, interval_s: float, span_s: float = HISTORY_S) -> None:
        if interval_s <= 0 or span_s < interval_s:
            raise ValueError(f"interval_s must be > 0 and span_s >= interval_s, "
                             f"got {interval_s!r} and {span_s!r}")
        self.interval_s = interval_s
        self._ring: deque[Sample] = deque(maxlen=int(span_s / interval_s) + 1)

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, sample: Sample) -> None:
        """Record a sample; a counter that went back (a new process) starts the ring over."""
        ring = self._ring
        if ring and (sample.events_in < ring[-1].events_in or sample.t <= ring[-1].t):
            ring.clear()
        ring.append(sample)

    def _window(self, window_s: float) -> tuple[Sample, Sample] | None:
        ring = self._ring
        if len(ring) < 2:
            return None
        last = ring[-1]
        first = ring[0]
        for s in reversed(ring):
            first = s
            if last.t - s.t >= window_s:
                break
        return (first, last) if last.t > first.t else None

    def rate_in(self, window_s: float = RATE_WINDOW_S) -> float | None:
        """Events committed per second over the last ``window_s`` (None: too few samples)."""
        w = self._window(window_s)
        if w is None:
            return None
        a, b = w
        return (b.events_in - a.events_in) / (b.t - a.t)

    def rate_out(self, sink: str, window_s: float = RATE_WINDOW_S) -> float | None:
        """Events per second the sink's forwarder moved past over the last ``window_s``."""
        w = self._window(window_s)
        if w is None:
            return None
        a, b = w
        if sink not in a.delivered or sink not in b.delivered:
            return None
        return max(0, b.delivered[sink] - a.delivered[sink]) / (b.t - a.t)

    def drain_s(self, sink: str, window_s: float = RATE_WINDOW_S) -> float | None:
        """Seconds until the sink's backlog is gone at the current rates.

        ``None`` when there is no backlog to drain, too few samples, or the
        backlog is not shrinking (the page then says "not draining").
        """
        w = self._window(window_s)
        if w is None:
            return None
        a, b = w
        now_backlog = b.backlog.get(sink, 0)
        if now_backlog <= 0 or sink not in a.backlog:
            return None
        shrink = (a.backlog[sink] - now_backlog) / (b.t - a.t)
        if shrink <= 0:
            return None
        return now_backlog / shrink

    def to_json(self) -> dict[str, Any]:
        """``GET /api/history``: one point per sample (rates per second between samples)."""
        ring = list(self._ring)
        sinks = sorted({s for x in ring for s in x.delivered})
        t: list[float] = []
        rate_in: list[float] = []
        out: dict[str, dict[str, list[float]]] = {s: {"rate_out": [], "backlog": []}
                                                   for s in sinks}
        used: list[int] = []
        for prev, cur in pairwise(ring):
            dt = cur.t - prev.t
            t.append(round(cur.t, 3))
            rate_in.append(round((cur.events_in - prev.events_in) / dt, 3))
            for s in sinks:
                d = cur.delivered.get(s, 0) - prev.delivered.get(s, 0)
                out[s]["rate_out"].append(round(max(0, d) / dt, 3))
                out[s]["backlog"].append(cur.backlog.get(s, 0))
            used.append(cur.store_used_bytes)
        return {"interval_s": self.interval_s, "span_s": HISTORY_S, "t": t, "rate_in": rate_in,
                "sinks": out, "store_used_bytes": used}
