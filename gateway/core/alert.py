"""The one alert model: what a site engineer should look at now, and what to do.

Every component reports its problems as ``Alert`` values: drivers (a device
unavailable, a conveyor jam), sinks (unavailable, paused), the store (filling,
full, recovered from corruption), the supervisor (a task failing). The status
page, ``/api/status`` → ``alerts``, ``/metrics`` (``wh_alert``) and the log
(``gateway/alertlog.py``) all read the same values, so they cannot disagree.

An alert's identity is ``kind`` + ``subject``: the same problem of the same
thing seen again is the same alert (its ``since`` is kept); its ``message``
may change while it is open (a count, an age). ``runbook`` is the anchor of
its entry in docs/operations.md, ``action`` the short line of what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

Severity = Literal["critical", "warning", "info"]

#: Severities, most urgent first (the page sorts by this).
SEVERITIES: Final[tuple[Severity, ...]] = ("critical", "warning", "info")


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of alert: its default severity, its runbook anchor and what to do."""

    name: str
    severity: Severity
    action: str

    @property
    def runbook(self) -> str:
        """The anchor of its entry in docs/operations.md."""
        return "alert-" + self.name.replace("_", "-")


_KINDS = [
    Kind("device_unavailable", "critical",
         "check the device's power, network and address; the gateway reconnects by itself"),
    Kind("device_heartbeat_stale", "critical",
         "the PLC answers but its program is not running: check the PLC"),
    Kind("device_no_history", "info",
         "events that happen while the server is unreachable are not caught up"),
    Kind("device_rejecting_all", "critical",
         "every message is rejected: fix the device's payload mapping, then discard or "
         "export its ingest dead letters"),
    Kind("conveyor_jam", "critical", "clear the jam on the conveyor; the alert clears with it"),
    Kind("conveyor_fault", "warning", "check the conveyor's fault code at the PLC"),
    Kind("amr_connection_broken", "warning",
         "check the vehicles named: power, Wi-Fi, their MQTT connection"),
    Kind("amr_condition", "warning",
         "check the vehicles named: release the e-stop, clear the protective field, "
         "see the FATAL error, charge the battery"),
    Kind("broker_unavailable", "critical",
         "check the MQTT broker (systemctl status mosquitto), network and credentials"),
    Kind("mqtt_client_id_clash", "critical",
         "two clients use the same MQTT client id: give one of them another id"),
    Kind("sink_unavailable", "critical",
         "the upstream does not answer: check it and the network; events wait in the store"),
    Kind("sink_paused", "critical",
         "the upstream refuses the credentials or does not speak the ingest contract: "
         "fix the token or the url"),
    Kind("sink_refused", "warning", "the broker refuses publishes: check its ACLs"),
    Kind("dead_letters_waiting", "warning",
         "the upstream rejected events: fix the cause, then replay or discard them"),
    Kind("dead_letters_over_budget", "warning",
         "dead letters exceed their budget: replay or discard them"),
    Kind("store_filling", "warning",
         "the store is filling because a sink does not deliver: make it deliver"),
    Kind("store_full", "critical",
         "sources are held back: make the sinks deliver or free disk space"),
    Kind("store_recovered", "warning",
         "the store file was damaged and recovered: check the disk, keep or delete the "
         "moved file"),
    Kind("store_rewound", "critical",
         "the store lost its -wal file: reconcile the lost events with upstream"),
    Kind("task_failed", "critical",
         "a part of the gateway keeps failing: keep its traceback for a bug report"),
    Kind("insecure_transport", "warning",
         "a connection runs without verified TLS or sends a password in clear: "
         "set up certificates (docs/operations.md, TLS and certificates)"),
    Kind("clock_skew", "warning",
         "the gateway's clock and the devices' clocks disagree: check NTP on both"),
]

#: Every kind, by name.
KINDS: Final[Mapping[str, Kind]] = {k.name: k for k in _KINDS}


@dataclass(frozen=True, slots=True)
class Alert:
    """One problem of one thing, as a site engineer reads it."""

    #: One of ``KINDS``.
    kind: str
    #: What it is about: ``device:<id>``, ``sink:<id>``, ``broker:<id>``, ``store``, ``task:<n>``.
    subject: str
    #: Plain words, one line.
    message: str
    severity: Severity | None = None
    #: Wall time it began, when the component knows it (else the first time it was seen).
    since: float | None = None
    #: The raw technical detail (an exception's text), shown on demand.
    detail: str | None = None
    #: Figures of the problem (zone, code, backlog_events ...), also in the log lines.
    figures: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown alert kind {self.kind!r}; expected one of "
                             f"{', '.join(KINDS)}")

    @property
    def id(self) -> str:
        """Stable identity: the same problem of the same thing is the same alert."""
        return f"{self.kind}:{self.subject}"

    @property
    def level(self) -> Severity:
        """The severity given, else the kind's."""
        return self.severity or KINDS[self.kind].severity

    @property
    def runbook(self) -> str:
        """Anchor in docs/operations.md."""
        return KINDS[self.kind].runbook

    @property
    def action(self) -> str:
        """What to do, one short line."""
        return KINDS[self.kind].action

    def with_since(self, since: float) -> Alert:
        """The same alert with ``since`` filled in."""
        return self if self.since is not None else replace(self, since=since)

    def __contains__(self, text: object) -> bool:
        """``"wms" in alert``: a substring of its message (or subject)."""
        return isinstance(text, str) and (text in self.message or text in self.subject)

    def to_json(self) -> dict[str, Any]:
        """The alert in ``/api/status`` → ``alerts``."""
        return {
            "id": self.id, "kind": self.kind, "severity": self.level, "subject": self.subject,
            "message": self.message, "since": self.since, "detail": self.detail,
            "action": self.action, "runbook": f"operations.md#{self.runbook}",
            "figures": dict(self.figures),
        }


def sort_alerts(alerts: list[Alert]) -> list[Alert]:
    """Most urgent first, then oldest first."""
    return sorted(alerts, key=lambda a: (SEVERITIES.index(a.level), a.since or 0.0, a.id))
