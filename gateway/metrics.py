"""Prometheus text exposition of a ``GatewaySnapshot`` (``GET /metrics``)."""

from __future__ import annotations

from gateway.core.snapshot import GatewaySnapshot


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
    metric("wh_ready", "gauge", "1 when the gateway is ready", [("", int(snap.ready))])
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
    metric("wh_sink_delivered_total", "counter", "Events delivered by a sink",
           [(f'{{sink="{_label(s)}"}}', v.forwarder.events_delivered if v.forwarder else 0)
            for s, v in sinks.items()])
    metric("wh_sink_dead_letters_total", "counter", "Events a sink's upstream rejected",
           [(f'{{sink="{_label(s)}"}}', v.forwarder.dead_letters if v.forwarder else 0)
            for s, v in sinks.items()])
    metric("wh_sink_paused", "gauge",
           "1 while a sink is paused (credentials refused, or replies it cannot interpret)",
           [(f'{{sink="{_label(s)}"}}', int(v.paused)) for s, v in sinks.items()])
    devices = snap.devices
    metric("wh_device_connected", "gauge", "1 while the device's connection is up",
           [(f'{{device="{_label(d)}"}}', int(v.connected)) for d, v in devices.items()])
    metric("wh_device_messages_total", "counter", "Messages received from a device",
           [(f'{{device="{_label(d)}"}}', v.messages) for d, v in devices.items()])
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
