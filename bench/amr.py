"""AMRs per gateway: VDA 5050 vehicles at one state message per second each.

Everything is real and on loopback: Mosquitto, the AMR simulator (several
processes of ``python -m simulators amr --standalone``, each vehicle with its
own MQTT connection, executing pick/drop orders), the WMS simulator and the
gateway process. The fleet grows step by step (250, 500, 750, 1000, ...
AMRs); at each step, once every vehicle is online at the gateway, the
gateway's CPU is read from ``/proc/<pid>/stat`` over a steady window. The
result is the largest step at which the gateway stayed under ``cpu_limit``
percent of one core *and* took in at least 95 % of one state message per
AMR per second (a step also fails when the simulators, sharing the machine,
cannot produce that load: the figure is then a floor, not the gateway's
limit). Each step is also printed to stderr.

Figures: ``amr_count``, ``amr_gateway_cpu_pct`` (at that count),
``amr_states_per_s`` (state messages the gateway took in per second),
``amr_simulator_cpu_pct`` and ``amr_broker_cpu_pct`` (summed over their
processes, percent of one core), ``amr_steps_tried``, and per step
``amr_step_<n>_cpu_pct``.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulators.broker import MosquittoBroker, free_port
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.harness.process import ChildProcess, cpu_seconds, simulator, stop_all
from simulators.harness.wms import WmsProcess

FLEET = "amr-fleet"
def _fleet(gw: GatewayProcess) -> dict[str, Any]:
    result: dict[str, Any] = gw.status()["devices"][FLEET]
    return result


def _raise_open_files() -> None:
    # Children (Mosquitto, simulators) inherit it: one socket per vehicle.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Simulators:
    """The AMR simulator processes, ``per_process`` vehicles each."""

    def __init__(self, port: int, per_process: int, interval: float, logdir: Path) -> None:
        self.port, self.per_process, self.interval, self.logdir = (
            port, per_process, interval, logdir)
        self.procs: list[ChildProcess] = []
        self.count = 0

    def grow_to(self, total: int) -> None:
        while self.count < total:
            n = min(self.per_process, total - self.count)
            child = simulator("amr", [
                "--port", str(self.port), "--count", str(n), "--first", str(self.count + 1),
                "--state-interval", str(self.interval), "--standalone",
                "--speed", "2", "--action-time", "2", "--idle-min", "1", "--idle-max", "5",
                "--fail-rate", "0.02", "--seed", str(len(self.procs) + 1)],
                self.logdir / f"amr-sim-{len(self.procs)}.log")
            child.start()
            self.procs.append(child)
            self.count += n

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.procs if p.running)

    def stop(self) -> None:
        stop_all(self.procs, 15)  # one budget for all: they stop in parallel


def _wait_online(gw: GatewayProcess, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    online = 0
    while time.monotonic() < deadline:
        try:
            online = _fleet(gw)["vehicles"].get("online", 0)
        except OSError:  # a status request timing out while the machine is saturated
            online = -1
        if online >= n:
            return
        time.sleep(0.5)
    raise TimeoutError(f"only {online} of {n} AMRs online at the gateway after {timeout}s")


def _step(gw_pid: int, broker_pid: int, gw: GatewayProcess, sims: _Simulators, n: int,
          settle_s: float, window_s: float) -> tuple[float, float, float, float]:
    """(gateway CPU %, states/s taken in, simulators CPU %, broker CPU %) at ``n`` AMRs."""
    _wait_online(gw, n, 60 + n / 20)
    time.sleep(settle_s)
    t0, g0, s0, b0 = (time.monotonic(), cpu_seconds(gw_pid), sims.cpu_seconds(),
                      cpu_seconds(broker_pid))
    m0 = _fleet(gw)["messages"].get("state", 0)
    time.sleep(window_s)
    t1, g1, s1, b1 = (time.monotonic(), cpu_seconds(gw_pid), sims.cpu_seconds(),
                      cpu_seconds(broker_pid))
    m1 = _fleet(gw)["messages"].get("state", 0)
    elapsed = t1 - t0
    return (100 * (g1 - g0) / elapsed, (m1 - m0) / elapsed, 100 * (s1 - s0) / elapsed,
            100 * (b1 - b0) / elapsed)


def measure(workdir: Path, *,
            steps: Sequence[int] = (250, 500, 750, 1000, 1500, 2000, 3000, 4000),
            per_process: int = 500, state_interval: float = 1.0, settle_s: float = 5.0,
            window_s: float = 15.0, cpu_limit: float = 50.0) -> dict[str, float | int]:
    """Step the fleet up until the gateway needs ``cpu_limit`` % of a core; see module doc."""
    workdir.mkdir(parents=True, exist_ok=True)
    _raise_open_files()
    out: dict[str, float | int] = {"amr_count": 0, "amr_gateway_cpu_pct": 0.0}
    tried = 0
    with MosquittoBroker(workdir / "mosquitto") as broker:
        wms = WmsProcess(free_port(), free_port(), keep_events=1000,
                         log_path=workdir / "wms.log")
        wms.start()
        sims = _Simulators(broker.port, per_process, state_interval, workdir)
        cfg = GatewaySetup(workdir=workdir / "gw", broker_port=broker.port, wms_url=wms.url,
                           scanners=0, synchronous="NORMAL",
                           devices=[{"id": FLEET, "driver": "vda5050", "broker": "site"}])
        try:
            with GatewayProcess(cfg) as gw:
                gw.start()
                assert broker.pid is not None
                gw_pid, broker_pid = gw.pid, broker.pid
                for n in steps:
                    tried += 1
                    sims.grow_to(n)
                    try:
                        step = _step(gw_pid, broker_pid, gw, sims, n, settle_s, window_s)
                    except (TimeoutError, OSError) as err:
                        # The machine cannot carry this many simulated AMRs next to the
                        # gateway (or the gateway stopped answering): the step fails.
                        print(f"amr step {n}: failed: {err}", file=sys.stderr)
                        out[f"amr_step_{n}_failed"] = 1
                        break
                    cpu, rate, sim_cpu, broker_cpu = step
                    out[f"amr_step_{n}_cpu_pct"] = round(cpu, 1)
                    out[f"amr_step_{n}_states_per_s"] = round(rate)
                    print(f"amr step {n}: gateway {cpu:.1f} % of a core, {rate:.0f} states/s; "
                          f"simulators {sim_cpu:.0f} %, broker {broker_cpu:.0f} %",
                          file=sys.stderr)
                    if cpu >= cpu_limit or rate < 0.95 * n / state_interval:
                        break
                    out.update(amr_count=n, amr_gateway_cpu_pct=round(cpu, 1),
                               amr_states_per_s=round(rate),
                               amr_simulator_cpu_pct=round(sim_cpu, 1),
                               amr_simulator_processes=len(sims.procs),
                               amr_broker_cpu_pct=round(broker_cpu, 1),
                               amr_gateway_rss_mb=round(gw.rss_bytes() / 2**20, 1))
        finally:
            sims.stop()
            wms.stop()
    out["amr_steps_tried"] = tried
    return out


if __name__ == "__main__":
    print(json.dumps(measure(Path(tempfile.mkdtemp(prefix="bench-amr-")))))
