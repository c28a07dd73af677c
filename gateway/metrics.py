"""Prometheus text exposition of a ``GatewaySnapshot`` (``GET /metrics``)."""

from __future__ import annotations

import platform
from functools import cache

from gateway.core.alert import KINDS
from gateway.core.snapshot import GatewaySnapshot

#: ``Content-Type`` of the exposition (text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Every state a sink reports, so each has a series (0 or 1) and rules can match it.
SINK_STATES = ("ok", "backoff", "failing", "paused_auth", "paused_protocol", "disconnected",
               "refused")


@cache
def version() -> str:
    """The installed package's version ("unknown" when run from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("warehouse-gateway")
    except PackageNotFoundError:
        return "unknown"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(snap: GatewaySnapshot) -> str:
    """Every ``wh_*`` metric of a snapshot, in the Prometheus text format."""
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{labels} {value}")

    store = snap.store
    counters = store.counters
    com = snap.committer
    metric("wh_build_info", "gauge", "Version of the gateway and of Python (always 1)",
           [(f'{{version="{_label(version())}",python="{platform.python_version()}"}}', 1)])
    metric("wh_process_start_time_seconds", "gauge", "Wall time the process started (Unix)",
           [("", round(snap.started_at, 3))])
    metric("wh_ready", "gauge", "1 when the gateway is ready", [("", int(snap.ready))])
    counts: dict[tuple[str, str], int] = {}
    for a in snap.alerts:
        counts[(a.kind, a.level)] = counts.get((a.kind, a.level), 0) + 1
    metric("wh_alerts", "gauge", "Open alerts by kind and severity (0 when none is open)",
           [(f'{{kind="{k}",severity="{sev}"}}', counts.get((k, sev), 0))
            for k, kind in KINDS.items()
            for sev in sorted({kind.severity, *(s for (kk, s) in counts if kk == k)})])
    metric("wh_store_used_bytes", "gauge", "Bytes of events in the store (against max_bytes)",
           [("", store.used_bytes)])
    metric("wh_store_dead_letter_bytes", "gauge", "Bytes of dead letters (own budget)",
           [("", store.dead_letter_bytes)])
    metric("wh_store_disk_room_bytes", "gauge",
           "Free disk space plus the store file's free pages",
           [("", store.disk_room_bytes)])
    metric("wh_store_disk_low", "gauge", "1 while disk room is below store.min_free_bytes",
           [("", int(store.disk_low))])
    metric("wh_store_max_bytes", "gauge", "Store capacity", [("", store.max_bytes)])
    metric("wh_store_file_bytes", "gauge", "Size of the database file and its WAL",
           [("", store.file_bytes)])
    metric("wh_store_events", "gauge", "Events held in the store", [("", store.events)])
    metric("wh_store_full", "gauge", "1 while the store refuses business events",
           [("", int(com.full))])
    metric("wh_events_committed_total", "counter", "Events committed since start",
           [("", com.events)])
    metric("wh_commits_total", "counter", "Store transactions (group commits)",
           [("", com.commits)])
    metric("wh_duplicate_events_total", "counter", "Events already in the store (redeliveries)",
           [("", counters.get("duplicate_events", 0))])
    metric("wh_telemetry_evicted_total", "counter", "Telemetry events evicted or dropped",
           [("", counters.get("evicted_telemetry", 0) + counters.get("dropped_telemetry", 0))])
    metric("wh_dead_letters", "gauge", "Dead letters held, by kind",
           [(f'{{kind="{k}"}}', v) for k, v in store.dead_letters.items()])
    sinks = snap.sinks
    metric("wh_sink_backlog_events", "gauge", "Events not yet delivered to a sink",
           [(f'{{sink="{_label(s)}"}}', v.backlog_events or 0) for s, v in sinks.items()])
    metric("wh_sink_events_in_total", "counter",
           "Events accepted since start with a type the sink's routes take",
           [(f'{{sink="{_label(s)}"}}', v.events_in or 0) for s, v in sinks.items()])
    metric("wh_sink_delivered_total", "counter", "Events delivered by a sink",
           [(f'{{sink="{_label(s)}"}}', v.forwarder.events_delivered if v.forwarder else 0)
            for s, v in sinks.items()])
    metric("wh_sink_dead_letters_total", "counter", "Events a sink's upstream rejected",
           [(f'{{sink="{_label(s)}"}}', v.forwarder.dead_letters if v.forwarder else 0)
            for s, v in sinks.items()])
    metric("wh_sink_state", "gauge", "1 for the state the sink is in, 0 for the others",
           [(f'{{sink="{_label(s)}",state="{st}"}}', int(v.state == st))
            for s, v in sinks.items() for st in (*SINK_STATES, *(
                [v.state] if v.state not in SINK_STATES else []))])
    metric("wh_sink_up", "gauge", "1 while the sink delivers (state ok)",
           [(f'{{sink="{_label(s)}"}}', int(v.state == "ok")) for s, v in sinks.items()])
    metric("wh_sink_requests_total", "counter", "HTTP requests of a sink by reply status code",
           [(f'{{sink="{_label(s)}",code="{_label(str(code))}"}}', n)
            for s, v in sinks.items()
            for code, n in sorted((v.details.get("status_counts") or {}).items())])
    metric("wh_sink_last_success_timestamp_seconds", "gauge",
           "Wall time of the sink's last successful delivery (0: none since start)",
           [(f'{{sink="{_label(s)}"}}', v.details.get("last_success") or 0)
            for s, v in sinks.items()])
    metric("wh_sink_oldest_undelivered_age_seconds", "gauge",
           "Age of the oldest event the sink has not yet passed (0: nothing waits)",
           [(f'{{sink="{_label(s)}"}}', v.oldest_undelivered_age_s or 0)
            for s, v in sinks.items()])
    metric("wh_sink_sent_bytes_total", "counter", "Request bytes a sink sent (resends included)",
           [(f'{{sink="{_label(s)}"}}', v.details["bytes_sent"])
            for s, v in sinks.items() if "bytes_sent" in v.details])
    metric("wh_sink_paused", "gauge",
           "1 while a sink is paused (credentials refused, or replies it cannot interpret)",
           [(f'{{sink="{_label(s)}"}}', int(v.paused)) for s, v in sinks.items()])
    devices = snap.devices
    metric("wh_device_connected", "gauge", "1 while the device's connection is up",
           [(f'{{device="{_label(d)}"}}', int(v.connected)) for d, v in devices.items()])
    metric("wh_device_messages_total", "counter",
           "Inputs from a device: MQTT messages, OPC UA notifications and events, "
           "Modbus polls in which a watched point changed",
           [(f'{{device="{_label(d)}"}}', v.messages) for d, v in devices.items()])
    metric("wh_device_events_total", "counter", "Events recognized from a device's inputs",
           [(f'{{device="{_label(d)}"}}', v.events) for d, v in devices.items()])
    metric("wh_device_polls_total", "counter", "Poll cycles of a polled (Modbus) device",
           [(f'{{device="{_label(d)}"}}', v.details["polls"])
            for d, v in devices.items() if "polls" in v.details])
    metric("wh_device_rejecting_all", "gauge",
           "1 while every message of the last minute (at least 20) became an ingest dead letter",
           [(f'{{device="{_label(d)}"}}', int(v.rejecting_all)) for d, v in devices.items()])
    metric("wh_ingest_errors_total", "counter", "Source messages that could not become signals",
           [(f'{{device="{_label(d)}",kind="{_label(k)}"}}', n)
            for d, v in devices.items() for k, n in v.ingest_errors.items()])
    metric("wh_task_restarts_total", "counter",
           "Times a gateway task failed unexpectedly and was restarted",
           [(f'{{task="{_label(t)}"}}', v.restarts) for t, v in snap.tasks.items()])
    # One series per MQTT connection: devices sharing a connection repeat its count.
    takeovers = {v["client_id"]: v["session_takeovers"]
                 for v in [*(d.details for d in devices.values()),
                           *(s.details for s in sinks.values())]
                 if "session_takeovers" in v}
    metric("wh_mqtt_session_takeovers_total", "counter",
           "MQTT connections lost to another client using the same client id",
           [(f'{{client_id="{_label(c)}"}}', n) for c, n in takeovers.items()])
    metric("wh_process_rss_bytes", "gauge", "Resident memory of the gateway",
           [("", snap.rss_bytes)])
    return "\n".join(out) + "\n"
