"""The one alert model: kinds, the alert book's log lines, sink and store alerts, history, metrics.

The HTTP sink is exercised against a real closed loopback port and the real
WMS simulator; the alert book and the history ring run on a hand-moved clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from waiting import ManualClock, wait_until

from gateway.alerts import (
    SINK_DOWN_ALERT_S,
    AlertBook,
    sink_alerts,
    store_alerts,
    summary,
)
from gateway.config import HttpSinkConfig
from gateway.core.alert import KINDS, Alert, sort_alerts
from gateway.core.events import Event
from gateway.core.records import Row
from gateway.core.snapshot import (
    CommitterSnapshot,
    DeviceSnapshot,
    GatewaySnapshot,
    SinkSnapshot,
    StoreSnapshot,
)
from gateway.history import History, Sample
from gateway.ingest import _conveyor_alerts
from gateway.metrics import CONTENT_TYPE, render_metrics
from gateway.recognizers.conveyor import ConveyorMap, ConveyorRecognizer
from gateway.sinks.http import HttpSink
from simulators.broker import free_port
from simulators.wms import WmsSimulator


def rows(n: int) -> list[Row]:
    out = []
    for i in range(1, n + 1):
        ev = Event.create(site="S", device="scan-01", type="scan", source_key=f"r{i}",
                          occurred_at=1.0, observed_at=1.0, data={"code": f"C{i}"})
        out.append(Row(seq=i, event_id=ev.event_id, type="scan", body=ev.body))
    return out


def sink_snapshot(state: str = "ok", **details: Any) -> SinkSnapshot:
    return SinkSnapshot.build("wms", {"type": "http", "state": state, **details}, None,
                              details.pop("backlog", 0))


# -- the model ------------------------------------------------------------------------------


def test_every_kind_has_a_runbook_entry_in_the_operations_doc() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text("utf-8")
    for kind in KINDS.values():
        assert f'<a id="{kind.runbook}"></a>' in doc, kind.name
    with pytest.raises(ValueError, match="unknown alert kind 'sink_sad'"):
        Alert("sink_sad", "sink:wms", "x")


def test_alerts_sort_by_severity_then_age_and_serialize_with_runbook() -> None:
    a = Alert("dead_letters_waiting", "store:dead-letters", "3 wait", since=5.0)
    b = Alert("sink_unavailable", "sink:wms", "down", since=9.0, detail="ClientConnectorError")
    c = Alert("sink_paused", "sink:erp", "paused", since=7.0)
    assert [x.id for x in sort_alerts([a, b, c])] == [
        "sink_paused:sink:erp", "sink_unavailable:sink:wms",
        "dead_letters_waiting:store:dead-letters"]
    doc = b.to_json()
    assert doc["severity"] == "critical" and doc["detail"] == "ClientConnectorError"
    assert doc["runbook"] == "operations.md#alert-sink-unavailable"
    assert doc["action"].startswith("the upstream does not answer")
    assert "wms" in b and "erp" not in b


def test_summary_is_never_ready_and_fine_while_a_sink_is_down() -> None:
    down = Alert("sink_unavailable", "sink:wms", "sink wms is not delivering")
    info = Alert("dead_letters_waiting", "store:x", "2 unreadable", severity="info")
    assert summary(True, False, [])["state"] == "ok"
    assert summary(True, False, [info])["state"] == "ok"
    s = summary(True, False, [down, info])
    assert s["state"] == "critical" and "sink wms is not delivering" in s["text"]
    assert summary(False, False, [])["state"] == "not_ready"
    assert summary(True, True, [])["state"] == "stopping"


# -- the alert book ---------------------------------------------------------------------------


def test_book_keeps_since_and_logs_raise_and_recovery_with_peak_backlog() -> None:
    clock = ManualClock(1000.0)
    book = AlertBook(clock=clock)

    def down(backlog: int) -> Alert:
        return Alert("sink_unavailable", "sink:wms", f"sink wms down; {backlog} waiting",
                     figures={"backlog_events": backlog})

    with structlog.testing.capture_logs() as logs:
        (first,) = book.update([down(10)])
        clock.advance(30)
        (again,) = book.update([down(700)])
        clock.advance(30)
        book.update([down(400)])
        clock.advance(5)
        assert book.update([]) == ()
    assert first.since == again.since == 1000.0
    assert [e["event"] for e in logs] == ["sink_down", "sink_recovered"]
    assert logs[0]["log_level"] == "error" and logs[0]["backlog_events"] == 10
    rec = logs[1]
    assert rec["sink"] == "wms" and rec["down_s"] == 65.0 and rec["peak_backlog_events"] == 700


def test_book_logs_a_jam_and_its_clear_once_and_aggregates_a_flapping_alert() -> None:
    clock = ManualClock(1000.0)
    book = AlertBook(clock=clock, interval_s=60.0)
    jam = Alert("conveyor_jam", "device:conveyor-01", "conveyor conveyor-01 jammed in zone Z03",
                since=990.0, figures={"zone": "Z03", "fault_code": 101})
    flap = Alert("device_unavailable", "device:plc-7", "device plc-7 unavailable")
    with structlog.testing.capture_logs() as logs:
        book.update([jam])
        book.update([jam])
        clock.advance(12)
        book.update([])
        for _ in range(5):  # a link that comes and goes every second
            clock.advance(1)
            book.update([flap])
            clock.advance(1)
            book.update([])
        clock.advance(61)
        book.flush()
    events = [(e["event"], e.get("repeated")) for e in logs]
    assert events[:2] == [("conveyor_jam", None), ("conveyor_jam_cleared", None)]
    assert logs[0]["zone"] == "Z03" and logs[0]["since"] == 990.0
    assert logs[1]["duration_s"] == 22.0
    assert events[2:4] == [("alert_raised", None), ("alert_cleared", None)]
    # The four repeats of each are one line each with their count, not eight lines.
    assert sorted(events[4:]) == [("alert_cleared", 4), ("alert_raised", 4)]


# -- sinks and the store ------------------------------------------------------------------------


def test_a_short_blip_is_no_alert_a_longer_outage_is_one_in_plain_words() -> None:
    now = 5000.0
    blip = sink_snapshot("backoff", down_since=now - 1, last_error="no reply within 1 s")
    assert sink_alerts(blip, now) == []
    long = SinkSnapshot.build(
        "wms", {"type": "http", "state": "backoff", "down_since": now - 125,
                "last_error": "cannot connect to 127.0.0.1:9: connection refused",
                "last_error_raw": "ClientConnectorError: Cannot connect to host 127.0.0.1:9 "
                                  "ssl:default [Connect call failed]"},
        None, 774, oldest_pending_at=now - 3 * 3600)
    (alert,) = sink_alerts(long, now)
    assert alert.kind == "sink_unavailable" and alert.since == now - 125
    assert alert.message == ("sink wms is not delivering: cannot connect to 127.0.0.1:9: "
                             "connection refused; down for 2 min; 774 events waiting, the "
                             "oldest for 3 h 0 min")
    assert "ssl:default" in (alert.detail or "")
    paused = sink_snapshot("paused_auth", alert="HTTP 401: upstream refused the credentials")
    assert [a.kind for a in sink_alerts(paused, now)] == ["sink_paused"]
    assert SINK_DOWN_ALERT_S <= 10


def test_store_filling_full_and_dead_letters_waiting() -> None:
    sinks = {"wms": sink_snapshot("backoff", backlog=900)}
    filling = StoreSnapshot(used_bytes=85, max_bytes=100, dead_letters={"sink": 3, "ingest": 1})
    got = store_alerts(filling, CommitterSnapshot(), sinks)
    assert [(a.kind, a.level) for a in got] == [
        ("store_filling", "warning"), ("dead_letters_waiting", "warning"),
        ("dead_letters_waiting", "info")]
    assert got[0].message == "store 85 % full (sink wms holds 900 undelivered events)"
    assert got[1].message.startswith("3 dead letters rejected by upstream wait")
    full = store_alerts(StoreSnapshot(used_bytes=100, max_bytes=100),
                        CommitterSnapshot(full=True, full_reason="capacity"), sinks)
    assert [a.kind for a in full] == ["store_full"]
    report = {"corrupt": True, "moved_to": "/x.corrupt-1", "salvaged_events": 4}
    assert [a.kind for a in store_alerts(StoreSnapshot(open_report=report),
                                         CommitterSnapshot(), {})] == ["store_recovered"]


async def test_http_sink_outage_reads_in_plain_words_and_drops_the_stale_status(
        wms: WmsSimulator) -> None:
    cfg = HttpSinkConfig(id="wms", type="http", url=wms.url, backoff_initial=0.01,
                         backoff_max=0.05, timeout=1.0)
    sink = HttpSink(cfg)
    try:
        assert await sink.deliver(rows(3)) == []
        snap = sink.snapshot()
        assert snap["last_status"] == 200 and snap["down_since"] is None
        assert snap["bytes_sent"] > 0
        sink.cfg = HttpSinkConfig(id="wms", type="http", url=f"http://127.0.0.1:{free_port()}/e",
                                  backoff_initial=0.01, backoff_max=0.05, timeout=1.0)
        task = asyncio.create_task(sink.deliver(rows(2)))
        await wait_until(lambda: sink.snapshot()["failures"] >= 2, 10, "failed attempts")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        snap = sink.snapshot()
        assert snap["last_status"] is None  # not the 200 from before the outage
        assert snap["down_since"] is not None and snap["last_success"] is not None
        assert snap["last_error"].startswith("cannot connect to 127.0.0.1:")
        assert snap["last_error"].endswith(": connection refused"), snap["last_error"]
        assert "ssl:default" not in snap["last_error"]
        assert "ClientConnectorError" in snap["last_error_raw"]
    finally:
        await sink.close()


# -- conveyor faults ------------------------------------------------------------------------


def test_an_open_jam_is_an_alert_with_zone_code_and_since_until_cleared() -> None:
    from gateway.core.events import Signal

    points = ConveyorMap(fault_active="fa", fault_code="fc", fault_zone="fz", fault_count="fn")
    rec = ConveyorRecognizer(site="S", device="conveyor-01", points=points, zones={3: "MERGE-3"})

    def poll(t: float, **values: int) -> None:
        rec.feed_poll([Signal("conveyor-01", k, v, t) for k, v in values.items()], t)

    poll(100.0, fa=0, fc=0, fz=0, fn=0)
    assert _conveyor_alerts("conveyor-01", rec) == []
    poll(200.0, fa=1, fc=101, fz=3, fn=1)
    poll(210.0, fa=1, fc=101, fz=3, fn=1)
    (jam,) = _conveyor_alerts("conveyor-01", rec)
    assert (jam.kind, jam.since, jam.message) == (
        "conveyor_jam", 200.0, "conveyor conveyor-01 jammed in zone MERGE-3")
    assert jam.figures == {"zone": "MERGE-3", "fault_code": 101, "fault_count": 1}
    poll(220.0, fa=1, fc=7, fz=3, fn=2)
    (fault,) = _conveyor_alerts("conveyor-01", rec)
    assert (fault.kind, fault.since) == ("conveyor_fault", 220.0)
    assert fault.message == "conveyor conveyor-01: fault 7 in zone MERGE-3"
    poll(230.0, fa=0, fc=0, fz=0, fn=2)
    assert _conveyor_alerts("conveyor-01", rec) == [] and rec.open_since is None


# -- history ------------------------------------------------------------------------------


def test_history_rates_drain_estimate_and_a_bounded_ring() -> None:
    h = History(interval_s=2.0, span_s=20.0)
    for i in range(30):
        t = 1000.0 + 2 * i
        h.add(Sample(t=t, events_in=100 * i, delivered={"wms": 150 * i},
                     backlog={"wms": max(0, 3000 - 50 * i)}, store_used_bytes=i))
    assert len(h) == 11  # 20 s of 2 s samples, both ends included
    assert h.rate_in() == pytest.approx(50.0)
    assert h.rate_out("wms") == pytest.approx(75.0)
    # 1550 left, shrinking by 25 events/s: 62 s.
    assert h.drain_s("wms") == pytest.approx(62.0)
    doc = h.to_json()
    assert len(doc["t"]) == 10 and doc["rate_in"][-1] == 50.0
    assert doc["sinks"]["wms"]["backlog"][-1] == 1550
    h.add(Sample(t=2000.0, events_in=3, delivered={}, backlog={}, store_used_bytes=0))
    assert len(h) == 1  # a counter that went back: a new process, a new ring
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        History(interval_s=0)


# -- metrics ------------------------------------------------------------------------------


def test_metrics_name_sink_state_codes_ages_devices_build_and_start() -> None:
    sink = SinkSnapshot.build(
        "wms", {"type": "http", "state": "backoff", "status_counts": {"200": 7, "503": 2},
                "last_success": 1795468811.5, "bytes_sent": 4096}, None, 12,
        oldest_undelivered_age_s=42.5)
    dev = DeviceSnapshot.from_driver("sorter-1", {"connected": True, "inputs": 9,
                                                  "events": 14})
    snap = GatewaySnapshot(
        site="S", pid=1, uptime_s=1.0, ready=True,
        alerts=(Alert("sink_unavailable", "sink:wms", "down"),), devices={"sorter-1": dev},
        sinks={"wms": sink}, store=StoreSnapshot(), committer=CommitterSnapshot(), tasks={},
        started_at=1795468800.25)
    text = render_metrics(snap)
    for line in ('wh_sink_state{sink="wms",state="backoff"} 1',
                 'wh_sink_state{sink="wms",state="ok"} 0',
                 'wh_sink_up{sink="wms"} 0',
                 'wh_sink_requests_total{sink="wms",code="503"} 2',
                 'wh_sink_last_success_timestamp_seconds{sink="wms"} 1795468811.5',
                 'wh_sink_oldest_undelivered_age_seconds{sink="wms"} 42.5',
                 'wh_sink_sent_bytes_total{sink="wms"} 4096',
                 'wh_device_messages_total{device="sorter-1"} 9',
                 'wh_device_events_total{device="sorter-1"} 14',
                 'wh_alerts{kind="sink_unavailable",severity="critical"} 1',
                 'wh_alerts{kind="store_full",severity="critical"} 0',
                 "wh_process_start_time_seconds 1795468800.25"):
        assert line in text.splitlines(), line
    assert "wh_build_info{version=" in text
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_clock_skew_needs_two_buckets_agreeing_and_ignores_late_input() -> None:
    from gateway.alerts import CLOCK_SKEW_BUCKET_S, ClockSkew

    late = ClockSkew()
    t = 10_000.0
    for i in range(50):  # a broker redelivers 10-minute-old reads after an outage
        late.observe(t + i * 0.01, t - 600 + i * 0.01)
    for i in range(5):  # then live reads, on time
        late.observe(t + 30 + i, t + 30 + i - 0.05)
    late.observe(t + CLOCK_SKEW_BUCKET_S + 1, t + CLOCK_SKEW_BUCKET_S + 0.9)
    assert late.skewed() is None and late.offset_s == pytest.approx(0.1)

    behind = ClockSkew()
    for i in range(0, 200, 10):  # a device whose clock is 5 min behind, for 3 minutes
        behind.observe(t + i, t + i - 300)
    assert behind.skewed() == pytest.approx(300.0)
    quiet = ClockSkew()
    quiet.observe(t, t - 300)  # one old message, then silence: no alert
    quiet.observe(t + 5 * CLOCK_SKEW_BUCKET_S, t + 5 * CLOCK_SKEW_BUCKET_S - 300)
    assert quiet.skewed() is None
