"""Modbus points read per second: 50 simulated conveyor PLCs polled by the gateway.

Everything is real and on loopback: the conveyor simulator (one process, one
pymodbus server per PLC on its own port), the WMS simulator and the gateway
process, whose ``ModbusDriver`` tasks (one per PLC, one connection each)
poll the full register map of ``python -m simulators conveyor`` with 16 zones
(coils, discrete inputs, holding and input registers, the 12-slot tracking
ring: 5 requests and 97 points per poll) as fast as ``poll_interval`` allows,
while the lines move totes and the events go to the store and the WMS.

``modbus_points_per_s`` counts decoded points: every point of every
completed poll (changed or not), summed over the devices' ``points_read``
in the gateway's ``/api/status``, over a steady window. Also reported:
polls and requests per second, the gateway's and the simulator's CPU
(percent of one core), events accepted by the WMS per second, and the
median poll time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from simulators.broker import free_port
from simulators.conveyor_plc import gateway_device
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.harness.process import ChildProcess, simulator
from simulators.harness.wms import WmsProcess


def _start_simulator(workdir: Path, count: int, zones: int, tote_rate: float
                     ) -> tuple[ChildProcess, list[int]]:
    sim = simulator("conveyor", ["--count", str(count), "--port", "0", "--control-port", "0",
                                 "--zones", str(zones), "--tote-rate", str(tote_rate)],
                    workdir / "conveyor-sim.log")
    sim.start()
    try:
        line = sim.wait_for_log_event("conveyor_simulator_listening", 30)
    except BaseException:
        sim.kill()
        raise
    return sim, [int(p) for p in line["ports"]]


def _totals(gw: GatewayProcess) -> tuple[int, int, int]:
    devices = gw.status()["devices"]
    mb = [d for d in devices.values() if d.get("driver") == "modbus"]
    return (sum(d["points_read"] for d in mb), sum(d["polls"] for d in mb),
            sum(d["requests"] for d in mb))


def measure(workdir: Path, *, devices: int = 50, seconds: float = 15.0,
            poll_interval: str = "20ms", zones: int = 16, tote_rate: float = 1.0,
            warmup: float = 4.0, device_extra: dict[str, Any] | None = None,
            **_: Any) -> dict[str, float | int]:
    """Run the measurement in ``workdir``; returns the figures (see the module doc).

    ``device_extra``: more keys of every device table (``bench/mapping.py`` adds a mapping).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    sim, ports = _start_simulator(workdir, devices, zones, tote_rate)
    wms = WmsProcess(free_port(), free_port(), keep_events=10_000,
                     log_path=workdir / "wms.log")
    try:
        wms.start()
        extra = [
            gateway_device(f"conveyor-{n:02d}", port, poll_interval=poll_interval,
                           zones=zones,
                           extra={"counter_report_interval": "5s", **(device_extra or {})})
            for n, port in enumerate(ports, 1)]
        cfg = GatewaySetup(workdir=workdir / "gw", broker_port=free_port(), wms_url=wms.url,
                           scanners=0, synchronous="NORMAL", devices=extra)
        with GatewayProcess(cfg) as gw:
            gw.start(timeout=60)
            time.sleep(warmup)
            p0, n0, r0 = _totals(gw)
            e0 = wms.stats()["unique"]
            c0, s0, t0 = gw.cpu_seconds(), sim.cpu_seconds(), time.monotonic()
            time.sleep(seconds)
            p1, n1, r1 = _totals(gw)
            e1 = wms.stats()["unique"]
            c1, s1, t1 = gw.cpu_seconds(), sim.cpu_seconds(), time.monotonic()
            status = gw.status()
            mb = [d for d in status["devices"].values() if d.get("driver") == "modbus"]
            connected = sum(1 for d in mb if d["connected"])
            poll_ms = sorted(d["last_poll_ms"] for d in mb)
            gw.stop()
    finally:
        sim.stop()
        wms.stop()
    dt = t1 - t0
    return {
        "modbus_points_per_s": round((p1 - p0) / dt),
        "modbus_polls_per_s": round((n1 - n0) / dt, 1),
        "modbus_requests_per_s": round((r1 - r0) / dt),
        "modbus_devices": devices,
        "modbus_devices_connected": connected,
        "modbus_points_per_poll": mb[0]["points_per_poll"] if mb else 0,
        "modbus_poll_ms_median": poll_ms[len(poll_ms) // 2] if poll_ms else 0.0,
        "modbus_events_per_s": round((e1 - e0) / dt, 1),
        "modbus_gateway_cpu_pct": round(100 * (c1 - c0) / dt, 1),
        "modbus_simulator_cpu_pct": round(100 * (s1 - s0) / dt, 1),
    }


if __name__ == "__main__":
    import tempfile

    print(json.dumps(measure(Path(tempfile.mkdtemp(prefix="bench-modbus-")))))
