"""What the gateway shows about itself: a typed, immutable snapshot of its components.

The process builds one ``GatewaySnapshot`` per request from what each component
publishes; the status API (``to_json``), the metrics text (gateway/metrics.py)
and the status page all read it, and none of them needs the process object.
Components' own figures are kept whole in ``details`` (their JSON keys are part
of ``/api/status``); the fields the gateway itself reasons about (connection,
counts, state, alerts) are typed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.alert import Alert


def count_of(value: object) -> int:
    """A message count: a number, or the sum of a per-topic table of numbers."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return sum(n for n in value.values() if isinstance(n, int) and not isinstance(n, bool))
    return 0


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """One device as its driver reports it."""

    id: str
    connected: bool
    #: Messages received since start (a per-topic table summed).
    messages: int
    #: Source messages that became ingest dead letters, by kind, since start.
    ingest_errors: Mapping[str, int]
    #: True while every message of the last minute (over a minimum sample) was rejected.
    rejecting_all: bool
    #: The driver's figures as it reported them (``/api/status`` → ``devices.<id>``).
    details: Mapping[str, Any]
    #: Events its recognizer made since start (before the store drops repeats).
    events: int = 0

    @classmethod
    def from_driver(cls, device: str, details: Mapping[str, Any],
                    rejecting_all: bool = False) -> DeviceSnapshot:
        """Build from a driver's per-device figures."""
        errors = details.get("ingest_errors") or {}
        return cls(
            id=device,
            connected=bool(details.get("connected")),
            messages=count_of(details.get("messages", details.get("inputs", 0))),
            events=count_of(details.get("events", 0)),
            ingest_errors={str(k): int(v) for k, v in errors.items()},
            rejecting_all=rejecting_all,
            details=details,
        )

    @property
    def rejected(self) -> int:
        """Ingest dead letters of this device since start, every kind."""
        return sum(self.ingest_errors.values())

    def to_json(self) -> dict[str, Any]:
        """The device's entry in ``/api/status``."""
        return {**self.details, "rejecting_all": self.rejecting_all}


@dataclass(frozen=True, slots=True)
class ForwarderSnapshot:
    """A sink's forwarder: its cursor and what it moved past since start."""

    cursor: int
    events_delivered: int
    #: Events of this sink that became sink dead letters (as committed to the store).
    dead_letters: int
    batches: int
    last_batch_at: float | None


def routed_events(by_type: Mapping[str, int], routes: Iterable[str] | None) -> int:
    """How many of the events counted ``by_type`` a sink with ``routes`` takes (None: all)."""
    if routes is None:
        return sum(by_type.values())
    return sum(by_type.get(t, 0) for t in set(routes))


@dataclass(frozen=True, slots=True)
class SinkSnapshot:
    """One sink: what the sink reports, what its forwarder counted, its backlog."""

    id: str
    type: str
    state: str
    alert: str | None
    #: Events delivered, as the sink itself counts them.
    delivered: int
    #: Dead letters as the sink itself counts them (its ``deliver`` results).
    sink_reported_dead_letters: int | None
    forwarder: ForwarderSnapshot | None
    #: Upper bound of events not yet passed by the cursor (``None`` before the first stats).
    backlog_events: int | None
    #: The sink's figures as it reported them.
    details: Mapping[str, Any]
    #: Wall time the oldest event after the cursor was committed (None: nothing waits).
    oldest_pending_at: float | None = None
    #: Its age at the snapshot, seconds.
    oldest_undelivered_age_s: float | None = None
    #: Events per second the forwarder moved past lately (None: not known yet).
    rate_out_per_s: float | None = None
    #: Seconds until the backlog is gone at the current rates (None: not draining).
    drain_estimate_s: float | None = None
    #: Events accepted since start with a type the sink's routes take (None: not known).
    events_in: int | None = None

    @classmethod
    def build(cls, sink: str, details: Mapping[str, Any], forwarder: ForwarderSnapshot | None,
              backlog_events: int | None, **figures: Any) -> SinkSnapshot:
        """Build from a sink's report, its forwarder's counts and the store's backlog."""
        own = details.get("dead_letters")
        return cls(
            id=sink,
            type=str(details.get("type", "")),
            state=str(details.get("state", "")),
            alert=details.get("alert") or None,
            delivered=int(details.get("delivered", 0) or 0),
            sink_reported_dead_letters=own if isinstance(own, int) else None,
            forwarder=forwarder,
            backlog_events=backlog_events,
            details=details,
            **figures,
        )

    @property
    def paused(self) -> bool:
        """True while the sink holds delivery back (credentials, protocol)."""
        return self.state.startswith("paused")

    def to_json(self) -> dict[str, Any]:
        """The sink's entry in ``/api/status``.

        ``dead_letters`` is the forwarder's count (what the store recorded);
        the sink's own count, when it keeps one, is ``sink_reported_dead_letters``.
        """
        out = {k: v for k, v in self.details.items() if k != "dead_letters"}
        if self.sink_reported_dead_letters is not None:
            out["sink_reported_dead_letters"] = self.sink_reported_dead_letters
        if self.forwarder is not None:
            f = self.forwarder
            out.update(cursor=f.cursor, events_delivered=f.events_delivered,
                       dead_letters=f.dead_letters, batches=f.batches,
                       last_batch_at=f.last_batch_at)
        out["backlog_events"] = self.backlog_events
        out["oldest_undelivered_age_s"] = self.oldest_undelivered_age_s
        out["rate_out_per_s"] = self.rate_out_per_s
        out["drain_estimate_s"] = self.drain_estimate_s
        out["events_in"] = self.events_in
        return out


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """The store's statistics (refreshed every few seconds; see ``Store.stats``)."""

    used_bytes: int = 0
    max_bytes: int = 0
    file_bytes: int = 0
    events: int = 0
    dead_letter_bytes: int = 0
    dead_letter_max_bytes: int | None = None
    disk_room_bytes: int = 0
    disk_low: bool = False
    #: Dead letters held, by kind (``sink``, ``ingest``).
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    #: Persistent counters (``duplicate_events``, ``evicted_telemetry`` ...).
    counters: Mapping[str, int] = field(default_factory=dict)
    #: Events after each sink's cursor (upper bound).
    backlog: Mapping[str, int] = field(default_factory=dict)
    #: Sink -> commit time of the oldest event after its cursor (None: nothing waits).
    oldest_pending: Mapping[str, float | None] = field(default_factory=dict)
    open_report: Mapping[str, Any] = field(default_factory=dict)
    #: Everything ``Store.stats`` returned (``/api/status`` → ``store``).
    stats: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> StoreSnapshot:
        """Build from ``Store.stats()`` (an empty mapping before the first refresh)."""
        dlm = stats.get("dead_letter_max_bytes")
        return cls(
            used_bytes=int(stats.get("used_bytes", 0) or 0),
            max_bytes=int(stats.get("max_bytes", 0) or 0),
            file_bytes=int(stats.get("file_bytes", 0) or 0),
            events=int(stats.get("events", 0) or 0),
            dead_letter_bytes=int(stats.get("dead_letter_bytes", 0) or 0),
            dead_letter_max_bytes=int(dlm) if isinstance(dlm, int) else None,
            disk_room_bytes=int(stats.get("disk_room_bytes", 0) or 0),
            disk_low=bool(stats.get("disk_low", False)),
            dead_letters=dict(stats.get("dead_letters") or {}),
            counters=dict(stats.get("counters") or {}),
            backlog=dict(stats.get("backlog") or {}),
            oldest_pending=dict(stats.get("oldest_pending") or {}),
            open_report=dict(stats.get("open_report") or {}),
            stats=stats,
        )

    @property
    def dead_letters_over_budget(self) -> bool:
        """Dead letters take more than their budget (sink dead letters are kept)."""
        return self.dead_letter_max_bytes is not None and (
            self.dead_letter_bytes > self.dead_letter_max_bytes)


@dataclass(frozen=True, slots=True)
class CommitterSnapshot:
    """The committer's figures since start."""

    pending_units: int = 0
    commits: int = 0
    events: int = 0
    #: Events accepted since start, by type.
    events_by_type: Mapping[str, int] = field(default_factory=dict)
    duplicates: int = 0
    ingest_dead_letters: int = 0
    evicted_telemetry: int = 0
    dropped_telemetry: int = 0
    full: bool = False
    full_reason: str | None = None
    last_commit_ms: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CommitterSnapshot:
        """Build from ``Committer.snapshot()``."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_json(self) -> dict[str, Any]:
        """``/api/status`` → ``committer``."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """One supervised task."""

    state: str
    restarts: int
    last_error: str | None = None
    last_failed_at: float | None = None
    since: float | None = None
    next_try_s: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSnapshot:
        """Build from one entry of ``Supervisor.snapshot()``."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_json(self) -> dict[str, Any]:
        """``/api/status`` → ``tasks.<name>``."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class GatewaySnapshot:
    """Everything the status page, ``/api/status`` and ``/metrics`` show."""

    site: str
    pid: int
    uptime_s: float
    ready: bool
    alerts: tuple[Alert, ...]
    devices: Mapping[str, DeviceSnapshot]
    sinks: Mapping[str, SinkSnapshot]
    store: StoreSnapshot
    committer: CommitterSnapshot
    tasks: Mapping[str, TaskSnapshot]
    unrouted_messages: int = 0
    rss_bytes: int = 0
    #: Wall time the process started.
    started_at: float = 0.0
    #: Whether the gateway is serving normally, and the one line that says so.
    summary: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``/api/status`` document."""
        return {
            "site": self.site,
            "pid": self.pid,
            "uptime_s": self.uptime_s,
            "ready": self.ready,
            "summary": dict(self.summary),
            "started_at": self.started_at,
            "alerts": [a.to_json() for a in self.alerts],
            "devices": {k: v.to_json() for k, v in self.devices.items()},
            "sinks": {k: v.to_json() for k, v in self.sinks.items()},
            "store": dict(self.store.stats),
            "committer": self.committer.to_json(),
            "tasks": {k: v.to_json() for k, v in self.tasks.items()},
            "unrouted_messages": self.unrouted_messages,
            "rss_bytes": self.rss_bytes,
        }
