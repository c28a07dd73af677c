"""``python -m bench spine``: the store-and-forward spine, measured end to end.

Every component is real and on loopback: Mosquitto, the scanner simulator,
the WMS simulator (its own process) and the gateway (its own process).

- ``raw_mqtt_receive_per_s``: a bare paho subscriber drains the flood from its
  persistent session (auto-ack) — the ceiling of MQTT receive on this machine.
- ``e2e_events_per_s``: the gateway drains the same flood from its own
  session: MQTT receive → JSON decode → recognizer → durable group commit
  (``synchronous=FULL``) → manual PUBACK → HTTP POST accepted by the WMS.
- ``drain_events_per_s``: a backlog built through the gateway with the WMS
  down, then the WMS started: events per second until all are accepted.
- ``rss_mb_peak``: the gateway's peak RSS while the backlog builds and drains.
- ``p99_latency_ms``: scanner timestamp → accepted by the WMS, at a steady rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulators.broker import MosquittoBroker, free_port
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.harness.wms import WmsProcess
from simulators.scanners import ScannerFleet

TOPIC = "site/DC-EAST-1/scanners/+/reads"
SCANNERS = 8


def _wait_unique(wms: WmsProcess, n: int, timeout: float, poll: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wms.stats()["unique"] >= n:
            return time.time()
        time.sleep(poll)
    raise TimeoutError(f"WMS has {wms.stats()['unique']} of {n} events after {timeout}s")


def _props(expiry: int) -> Properties:
    p = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    p.SessionExpiryInterval = expiry
    return p


def _raw_subscriber(port: int, n: int | None) -> float:
    """Create (n=None) or drain (n messages) the bare subscriber's session; return msg/s."""
    got = 0
    done = threading.Event()
    t0 = 0.0

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        nonlocal t0
        t0 = time.perf_counter()
        c.subscribe(TOPIC, 1)
        if n is None:
            done.set()

    def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if n is not None and got >= n:
            done.set()

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-raw",
                    protocol=mqtt.MQTTv5)
    c.on_connect = on_connect
    c.on_message = on_message
    c.connect("127.0.0.1", port, clean_start=False, properties=_props(3600))
    c.loop_start()
    if not done.wait(600):
        raise TimeoutError("raw subscriber did not finish")
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return 0.0 if n is None else n / elapsed


def _publish(port: int, total: int, rate: float | None = None, start_read_id: int = 1) -> int:
    fleet = ScannerFleet("127.0.0.1", port, count=SCANNERS, client_id=f"bench-pub-{time.time()}",
                         start_read_id=start_read_id, window=500)
    fleet.connect()
    try:
        return fleet.run(total=total, rate=rate)
    finally:
        fleet.close()


def _connected_at(gw: GatewayProcess, after_line: int) -> float:
    lines = gw.log_events("mqtt_connected")[after_line:]
    for doc in lines:
        if doc.get("client_id", "").startswith("wh-gw-") and "sink" not in doc["client_id"]:
            return datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00")).timestamp()
    raise RuntimeError("gateway never logged mqtt_connected")


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}"


def run(args: argparse.Namespace) -> int:
    """Run every phase and print one JSON line."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wh-bench-"))
    result: dict[str, Any] = {"bench": "spine", "machine": _machine()}
    with MosquittoBroker(work / "mosquitto") as broker:
        port = broker.port
        wms_port, ctl_port = free_port(), free_port()

        # -- phase 1: the same flood drained by a bare subscriber and by the gateway --
        wms = WmsProcess(wms_port, ctl_port, keep_events=0, log_path=work / "wms-e2e.log")
        wms.start()
        cfg = GatewaySetup(workdir=work / "e2e", broker_port=port, wms_url=wms.url,
                         scanners=SCANNERS, http_extra={"backoff_max": 0.5})
        gw = GatewayProcess(cfg)
        gw.start()  # creates the gateway's persistent session and subscriptions
        gw.stop()
        _raw_subscriber(port, None)
        _publish(port, args.flood)
        raw = _raw_subscriber(port, args.flood)
        seen = len(gw.log_events("mqtt_connected"))
        gw.start(wait_ready=False)
        t_end = _wait_unique(wms, args.flood, 600)
        e2e = args.flood / (t_end - _connected_at(gw, seen))
        gw.stop()
        wms.stop()
        result.update(flood_messages=args.flood, raw_mqtt_receive_per_s=round(raw),
                      e2e_events_per_s=round(e2e), e2e_ratio=round(e2e / raw, 3))

        # -- phase 2: a backlog built with the WMS down, then drained --
        cfg2 = GatewaySetup(workdir=work / "drain", broker_port=port, wms_url=wms.url,
                          scanners=SCANNERS, max_bytes="4 GiB", batch_max=5000,
                          http_extra={"backoff_max": 0.2, "backoff_initial": 0.05})
        gw2 = GatewayProcess(cfg2, name="gateway-drain")
        gw2.start()
        peak = [gw2.rss_bytes()]
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.wait(0.2):
                try:
                    peak.append(gw2.rss_bytes())
                except OSError:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t_build = time.time()
        _publish(port, args.backlog, start_read_id=10_000_000)
        deadline = time.monotonic() + 900
        while gw2.status()["store"].get("events", 0) < args.backlog:
            if time.monotonic() > deadline:
                raise TimeoutError("backlog did not build")
            time.sleep(0.5)
        build_s = time.time() - t_build
        wms2 = WmsProcess(wms_port, ctl_port, keep_events=0, log_path=work / "wms-drain.log")
        t0 = time.time()
        wms2.start()
        t_end = _wait_unique(wms2, args.backlog, 900, poll=0.05)
        drain = args.backlog / (t_end - t0)
        stop_sampling.set()
        sampler.join()
        store_file_mb = gw2.status()["store"]["file_bytes"] / 1e6
        gw2.stop()
        wms2.stop()
        result.update(backlog_events=args.backlog, backlog_build_s=round(build_s, 1),
                      drain_events_per_s=round(drain), rss_mb_peak=round(max(peak) / 2**20, 1),
                      store_file_mb_after_drain=round(store_file_mb, 1))

        # -- phase 3: latency at a steady rate --
        wms3 = WmsProcess(wms_port, ctl_port, keep_events=1_000_000,
                          log_path=work / "wms-latency.log")
        wms3.start()
        cfg3 = GatewaySetup(workdir=work / "latency", broker_port=port, wms_url=wms3.url,
                          scanners=SCANNERS)
        gw3 = GatewayProcess(cfg3, name="gateway-latency")
        gw3.start()
        total = int(args.latency_rate * args.latency_seconds)
        _publish(port, total, rate=args.latency_rate, start_read_id=50_000_000)
        _wait_unique(wms3, total, 120)
        lat = []
        for rec in wms3.events():
            occurred = datetime.fromisoformat(
                rec["event"]["occurred_at"].replace("Z", "+00:00")).timestamp()
            lat.append((rec["received_at"] - occurred) * 1000)
        lat.sort()
        gw3.stop()
        wms3.stop()
        result.update(
            latency_rate_per_s=args.latency_rate,
            p50_latency_ms=round(lat[len(lat) // 2], 1),
            p99_latency_ms=round(lat[int(len(lat) * 0.99)], 1),
            max_latency_ms=round(lat[-1], 1),
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0
