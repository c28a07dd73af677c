"""Alerts the gateway derives from its components' figures, and the log of alerts.

``sink_alerts`` and ``store_alerts`` turn the snapshot of sinks and store into
``Alert`` values (gateway/core/alert.py); ``AlertBook`` keeps each open
alert's ``since`` and writes one log line when it opens and one when it clears.

``RejectionWatch`` turns "this device's every message becomes an ingest dead
letter" into an alert: a counter inside a device's details is easy to miss,
and a device whose payload format changed (a firmware update, a remapped
topic) delivers nothing at all while looking connected and busy.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.core.alert import SEVERITIES, Alert, sort_alerts
from gateway.core.snapshot import CommitterSnapshot, SinkSnapshot, StoreSnapshot
from gateway.core.throttle import LogThrottle

log = structlog.get_logger(__name__)

#: The window over which a device's messages and rejections are compared.
REJECTION_WINDOW_S = 60.0
#: Fewest messages in the window before "all rejected" is an alert (one or two
#: bad messages from a quiet device are not).
REJECTION_MIN_MESSAGES = 20


class RejectionWatch:
    """Per device: were all of the last minute's messages (at least 20) rejected?

    Fed with each device's cumulative counters (messages received, ingest dead
    letters) every few seconds; compares the newest sample with the newest one
    at least ``window_s`` old (or with zero, the counters' value at start).
    """

    def __init__(self, window_s: float = REJECTION_WINDOW_S,
                 min_messages: int = REJECTION_MIN_MESSAGES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0 or min_messages < 1:
            raise ValueError(f"window_s must be > 0 and min_messages >= 1, "
                             f"got {window_s!r} and {min_messages!r}")
        self.window_s = window_s
        self.min_messages = min_messages
        self._clock = clock
        # device -> samples (time, messages, rejected), oldest first; the first
        # one may be older than the window (it is the comparison base).
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}
        self._rejecting: dict[str, tuple[int, int]] = {}

    def observe(self, counts: Mapping[str, tuple[int, int]]) -> None:
        """Record each device's ``(messages, rejected)`` totals since start."""
        now = self._clock()
        cutoff = now - self.window_s
        for device, (messages, rejected) in counts.items():
            samples = self._samples.setdefault(device, deque())
            if samples and (messages < samples[-1][1] or rejected < samples[-1][2]):
                samples.clear()  # counters went back (a driver restarted): start over
            samples.append((now, messages, rejected))
            # Keep one sample at or before the cutoff as the base; drop older ones.
            while len(samples) > 1 and samples[1][0] <= cutoff:
                samples.popleft()
            if samples[0][0] <= cutoff:
                _, base_messages, base_rejected = samples[0]
            else:
                base_messages, base_rejected = 0, 0  # counters start at zero
            seen = messages - base_messages
            bad = rejected - base_rejected
            if seen >= self.min_messages and bad >= seen:
                self._rejecting[device] = (seen, bad)
            else:
                self._rejecting.pop(device, None)
        for device in set(self._samples) - set(counts):
            del self._samples[device]
            self._rejecting.pop(device, None)

    def rejecting_all(self, device: str) -> bool:
        """True while every recent message of ``device`` was rejected."""
        return device in self._rejecting

    def alerts(self) -> list[Alert]:
        """One alert per device whose every recent message was rejected."""
        return [
            Alert("device_rejecting_all", f"device:{device}",
                  f"device {device}: all {seen} messages of the last {self.window_s:.0f} s were "
                  f"rejected as ingest dead letters (payload format or mapping wrong?); "
                  f"list them with GET /api/dead-letters?kind=ingest",
                  figures={"messages": seen})
            for device, (seen, _) in sorted(self._rejecting.items())
        ]


# -- alerts of the gateway's own parts: sinks, store, dead letters ------------------------

#: A sink failing this long (seconds) without a delivery is an alert; a blip is not.
SINK_DOWN_ALERT_S = 5.0
#: The store this full (fraction of ``max_bytes``) raises ``store_filling``.
STORE_FILLING_FRACTION = 0.8


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def sink_alerts(sink: SinkSnapshot, now: float) -> list[Alert]:
    """A sink paused, not delivering for a while, or refused by its broker."""
    subject = f"sink:{sink.id}"
    d = sink.details
    backlog = sink.backlog_events or 0
    figures: dict[str, Any] = {"backlog_events": backlog}
    if sink.oldest_pending_at is not None:
        figures["oldest_undelivered_age_s"] = round(max(0.0, now - sink.oldest_pending_at), 1)
    waiting = f"; {backlog} events waiting" if backlog else ""
    if "oldest_undelivered_age_s" in figures and backlog:
        waiting += f", the oldest for {_ago(figures['oldest_undelivered_age_s'])}"
    if sink.paused:
        return [Alert("sink_paused", subject, f"sink {sink.id}: {sink.alert}{waiting}",
                      since=d.get("down_since"), detail=d.get("last_error_raw"),
                      figures=figures)]
    out: list[Alert] = []
    down_since = d.get("down_since")
    if isinstance(down_since, int | float) and now - down_since >= SINK_DOWN_ALERT_S:
        error = d.get("last_error") or "no delivery"
        out.append(Alert("sink_unavailable", subject,
                         f"sink {sink.id} is not delivering: {error}; down for "
                         f"{_ago(now - down_since)}{waiting}",
                         since=down_since, detail=d.get("last_error_raw"), figures=figures))
    elif sink.state == "disconnected":
        out.append(Alert("sink_unavailable", subject,
                         f"sink {sink.id} is not delivering: its broker connection is down "
                         f"({d.get('last_error') or 'not connected yet'}){waiting}",
                         detail=d.get("last_error"), figures=figures))
    if sink.alert:
        kind = "sink_refused" if sink.state == "refused" else "mqtt_client_id_clash"
        out.append(Alert(kind, subject, f"sink {sink.id}: {sink.alert}", figures=figures))
    return out


def store_alerts(store: StoreSnapshot, committer: CommitterSnapshot,
                 sinks: Mapping[str, SinkSnapshot]) -> list[Alert]:
    """The store full or filling, dead letters waiting or over budget, a recovered file."""
    out: list[Alert] = []
    laggard = max(sinks.values(), key=lambda s: s.backlog_events or 0, default=None)
    because = ""
    if laggard is not None and (laggard.backlog_events or 0) > 0:
        because = f" (sink {laggard.id} holds {laggard.backlog_events} undelivered events)"
    figures = {"used_bytes": store.used_bytes, "max_bytes": store.max_bytes}
    if committer.full:
        if committer.full_reason == "disk":
            out.append(Alert("store_full", "store",
                             "store full (disk): sources are being held back; free disk space",
                             figures=figures))
        else:
            out.append(Alert("store_full", "store",
                             f"store full: sources are being held back{because}",
                             figures=figures))
    elif store.max_bytes and store.used_bytes >= STORE_FILLING_FRACTION * store.max_bytes:
        pct = 100 * store.used_bytes / store.max_bytes
        out.append(Alert("store_filling", "store",
                         f"store {pct:.0f} % full{because}", figures=figures))
    if store.dead_letters_over_budget:
        out.append(Alert("dead_letters_over_budget", "store",
                         "dead letters over budget: replay or discard sink dead letters"))
    waiting = store.dead_letters.get("sink", 0)
    if waiting:
        out.append(Alert("dead_letters_waiting", "store:dead-letters",
                         f"{waiting} dead letter{'s' if waiting != 1 else ''} rejected by "
                         "upstream wait to be replayed or discarded",
                         figures={"sink": waiting}))
    ingest = store.dead_letters.get("ingest", 0)
    if ingest:
        out.append(Alert("dead_letters_waiting", "store:ingest-dead-letters",
                         f"{ingest} source message{'s' if ingest != 1 else ''} could not be "
                         "read and wait to be exported or discarded",
                         severity="info", figures={"ingest": ingest}))
    report = store.open_report
    if report.get("corrupt"):
        out.append(Alert("store_recovered", "store",
                         f"store file was corrupt and moved to {report.get('moved_to')}; "
                         f"{report.get('salvaged_events')} events salvaged",
                         detail=report.get("reason")))
    if report.get("rewound"):
        out.append(Alert(
            "store_rewound", "store",
            f"store file was rewound (its -wal file was lost?): it opened at seq "
            f"{report.get('opened_at_seq')}, its high-water mark is "
            f"{report.get('high_water_seq')}; events after seq {report.get('opened_at_seq')}"
            f" that were not yet delivered are lost; seq resumes at "
            f"{report.get('resumes_at_seq')}"))
    return out


def summary(ready: bool, stopping: bool, alerts: Sequence[Alert]) -> dict[str, Any]:
    """One word and one line for the top of the page: never "ok" while something is down."""
    worst = next((s for s in SEVERITIES if any(a.level == s for a in alerts)), None)
    if stopping:
        state = "stopping"
    elif not ready:
        state = "not_ready"
    elif worst in ("critical", "warning"):
        state = worst
    else:
        state = "ok"
    serious = [a for a in alerts if a.level != "info"]
    if state == "ok":
        text = "ready, delivering; nothing needs attention"
    elif state == "stopping":
        text = "the gateway is stopping"
    else:
        head = "not ready" if state == "not_ready" else "ready, but"
        n = len(serious)
        text = (f"{head}: {n} problem{'s' if n != 1 else ''}"
                + (f", first: {serious[0].message}" if serious else ""))
    return {"state": state, "text": text, "alerts": len(alerts)}


# -- the log of alerts ---------------------------------------------------------------------

#: Kinds whose transitions have log event names of their own: (raised, cleared).
_LOG_NAMES: Mapping[str, tuple[str, str]] = {
    "conveyor_jam": ("conveyor_jam", "conveyor_jam_cleared"),
    "conveyor_fault": ("conveyor_fault", "conveyor_fault_cleared"),
    "sink_unavailable": ("sink_down", "sink_recovered"),
    "sink_paused": ("sink_down", "sink_recovered"),
}
#: Seconds between two log lines of one alert (raised or cleared); repeats are counted.
ALERT_LOG_INTERVAL_S = 60.0


@dataclass(slots=True)
class _Open:
    since: float
    peak_backlog: int


class AlertBook:
    """Remembers open alerts: keeps their ``since`` and logs each one's raise and clear.

    One line when an alert opens and one when it clears (with how long it was
    open, and for a sink its peak backlog). An alert that comes and goes
    within ``interval_s`` (a flapping link) is not logged at each change: the
    next line carries ``repeated=N`` (``LogThrottle``).
    """

    def __init__(self, logger: Any = None, clock: Callable[[], float] = time.time,
                 interval_s: float = ALERT_LOG_INTERVAL_S) -> None:
        self._clock = clock
        self._open: dict[str, _Open] = {}
        self._throttle = LogThrottle(logger if logger is not None else log, interval_s,
                                     clock=time.monotonic if clock is time.time else clock)

    def update(self, alerts: Sequence[Alert]) -> tuple[Alert, ...]:
        """The alerts with ``since`` filled in; logs those that opened and those that cleared."""
        now = self._clock()
        current: dict[str, _Open] = {}
        out: list[Alert] = []
        for a in alerts:
            if a.id in current:  # two reports of one problem: keep the first
                continue
            backlog = int(a.figures.get("backlog_events", 0) or 0)
            st = self._open.get(a.id)
            if st is None:
                st = _Open(a.since if a.since is not None else now, backlog)
                self._log_raised(a, st.since)
            st.peak_backlog = max(st.peak_backlog, backlog)
            current[a.id] = st
            out.append(a.with_since(st.since))
        for alert_id, st in self._open.items():
            if alert_id not in current:
                self._log_cleared(alert_id, st, now)
        self._open = current
        return tuple(sort_alerts(out))

    def flush(self) -> None:
        """Write held-back repeat counts whose interval elapsed."""
        self._throttle.flush()

    def _log_raised(self, a: Alert, since: float) -> None:
        event = _LOG_NAMES.get(a.kind, ("alert_raised", ""))[0]
        level = {"critical": "error", "warning": "warning", "info": "info"}[a.level]
        self._throttle.log(level, event, ("raised", a.id), kind=a.kind, subject=a.subject,
                           severity=a.level, message=a.message, since=round(since, 3),
                           **{k: v for k, v in a.figures.items() if k not in _RESERVED})

    def _log_cleared(self, alert_id: str, st: _Open, now: float) -> None:
        kind, _, subject = alert_id.partition(":")
        event = _LOG_NAMES.get(kind, ("", "alert_cleared"))[1]
        fields: dict[str, Any] = {"kind": kind, "subject": subject,
                                  "duration_s": round(now - st.since, 1)}
        if kind in ("sink_unavailable", "sink_paused"):
            fields["sink"] = subject.partition(":")[2]
            fields["down_s"] = fields.pop("duration_s")
            fields["peak_backlog_events"] = st.peak_backlog
        self._throttle.log("info", event, ("cleared", alert_id), **fields)


_RESERVED = frozenset({"kind", "subject", "severity", "message", "since", "event", "level"})


# -- device clocks -------------------------------------------------------------------------

#: A device clock this far (seconds) from the gateway's raises the ``clock_skew`` alert.
CLOCK_SKEW_ALERT_S = 120.0
#: Seconds per bucket of the skew estimate (two buckets are compared).
CLOCK_SKEW_BUCKET_S = 60.0


class ClockSkew:
    """How far a device's clock is from the gateway's, robust to late input.

    The offset of one input is its receive time minus the device's own time.
    Input that waited (a broker redelivering after an outage, OPC UA history
    read after a reconnect) only looks older, so the smallest offset of a
    bucket of inputs is the estimate; a skew is reported only when two
    consecutive buckets agree on it, so one burst of old input is no alert.
    Called on the ingest path: a few comparisons per input.
    """

    __slots__ = ("_cur", "_prev", "_start")

    def __init__(self) -> None:
        self._cur: float | None = None
        self._prev: float | None = None
        self._start = 0.0

    def observe(self, receive_time: float, source_time: float) -> None:
        """One input's times (wall clock, seconds)."""
        off = receive_time - source_time
        if receive_time - self._start >= CLOCK_SKEW_BUCKET_S:
            recent = receive_time - self._start < 2 * CLOCK_SKEW_BUCKET_S
            self._prev = self._cur if recent else None
            self._cur = None
            self._start = receive_time
        if self._cur is None or abs(off) < abs(self._cur):
            self._cur = off

    @property
    def offset_s(self) -> float | None:
        """The latest estimate (None before any input with a device time)."""
        return self._cur

    def skewed(self) -> float | None:
        """The offset when both buckets put the device's clock over the limit, else None."""
        cur, prev = self._cur, self._prev
        if cur is None or prev is None or abs(cur) <= CLOCK_SKEW_ALERT_S \
                or abs(prev) <= CLOCK_SKEW_ALERT_S or (cur > 0) != (prev > 0):
            return None
        return cur if abs(cur) < abs(prev) else prev
