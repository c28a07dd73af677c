"""Orders per minute through the whole simulated site, with the gateway under a CPU limit.

Everything is real and on loopback: Mosquitto, the WMS simulator (its own
process), the site simulator (``python -m simulators site``: put walls, the
Modbus conveyor, the OPC UA sorter, MQTT pack stations, VDA 5050
AMRs) and the gateway process. The order rate grows step by step (120, 360,
600, 900, 1200 orders per minute); each step is a fresh site, WMS and gateway that
run ``window_s`` seconds of orders, then drain: every order at its dock door
and the gateway's WMS backlog empty. A step passes when the gateway stayed
under ``cpu_limit`` percent of one core over the order window, the site
delivered orders at 90 % of the rate or more (counted from the first order at
its dock door to the last), and the truth check
(``simulators.site.verify``) is 0 / 0 / 0 / 0. The result is the highest
passing step.

Figures: ``site_orders_per_min``, ``site_gateway_cpu_pct`` (over the order
window of that step), ``site_gateway_cpu_us_per_event`` (the gateway's CPU
from ready to drained, over the business events it delivered: scan, pick,
pack, move; at low rates the fixed cost of polling and AMR heartbeats
dominates it), ``site_gateway_cpu_us_per_event_marginal`` (the CPU one more
business event per second costs, between the lowest and the highest passing
step), ``site_business_events``, ``site_events_per_order``,
``site_simulator_cpu_pct``, ``site_steps_tried`` and per step
``site_step_<n>_delivered_per_min``,
``site_step_<n>_cpu_pct`` / ``site_step_<n>_truth`` / ``site_step_<n>_failed``.
When a step fails because the site itself (one Python process sharing the
machine) cannot keep up, the figure is a floor of the gateway's capacity;
``site_limited_by`` says which limit ended the steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulators.broker import MosquittoBroker, free_port
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.harness.site import SiteProcess
from simulators.harness.wms import WmsProcess
from simulators.site import SiteLayout, read_ledger, verify
from simulators.site.config import site_codes

__all__ = ["add_arguments", "measure", "run"]

BUSINESS = frozenset({"scan", "pick", "pack", "move"})
ROUTES = ["scan", "pick", "pack", "move", "exception"]
#: A site big enough that its stations are not the first limit.
LAYOUT = SiteLayout(put_walls=16, pack_stations=16, amrs=96, docks=8, zones=3)
SITE_ARGS = ["--conveyor-speed", "20000", "--amr-speed", "8", "--amr-action-time", "0.3",
             "--amr-rest", "0.5", "--pick-time", "0.1", "--scan-gap", "0.1"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench site``."""
    p.add_argument("--steps", default="120,360,600,900,1200",
                   help="order rates to try, orders per minute")
    p.add_argument("--window", type=float, default=30.0, help="seconds of orders per step")
    p.add_argument("--cpu-limit", type=float, default=50.0, help="percent of one core")
    p.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")


def _wait(cond: Any, timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(poll)
    raise TimeoutError(f"{what} not within {timeout:g}s")


def _step(workdir: Path, broker: MosquittoBroker, per_min: int, window_s: float
          ) -> dict[str, Any]:
    orders = max(1, round(per_min * window_s / 60))
    wms = WmsProcess(free_port(), free_port(), keep_events=2_000_000,
                     log_path=workdir / "wms.log")
    wms.start()
    site = SiteProcess(workdir / "site", broker.port, layout=LAYOUT, extra=[
        *SITE_ARGS, "--order-rate", str(per_min / 60), "--orders", str(orders)])
    site.start()
    gw = GatewayProcess(GatewaySetup(workdir=workdir / "gw", broker_port=broker.port,
                                     wms_url=wms.url, scanners=0,
                                     devices=site.devices(poll_interval="100ms"),
                                     http_extra={"routes": ROUTES},
                                     site_extra={"codes": site_codes()}))
    out: dict[str, Any] = {"orders": orders}
    try:
        gw.start()
        site.start_orders()
        t0, g0, s0 = time.monotonic(), gw.cpu_seconds(), site.cpu_seconds()
        first: list[float] = []

        def delivered(done: int) -> bool:
            st = site.state()
            if st["delivered"] and not first:
                first.append(time.monotonic())
            return bool(st["delivered"] >= done)

        # Deliveries are watched from the start: the first one dates the full pipeline.
        _wait(lambda: (delivered(orders), not site.state()["making"])[1], window_s * 3 + 30,
              "every order made", 0.25)
        t1, g1, s1 = time.monotonic(), gw.cpu_seconds(), site.cpu_seconds()
        out["cpu_pct"] = 100 * (g1 - g0) / (t1 - t0)
        out["site_cpu_pct"] = 100 * (s1 - s0) / (t1 - t0)
        try:
            _wait(lambda: delivered(orders), 120, "every order at a dock door", 0.25)
            # Orders through per minute once the first reached its dock (the pipeline full).
            span = time.monotonic() - first[0]
            out["delivered_per_min"] = 60 * (orders - 1) / span if span > 0 else 0.0
            _wait(lambda: gw.status()["sinks"]["wms"]["backlog_events"] == 0, 60,
                  "the gateway's WMS backlog empty")
            time.sleep(2.0)
            _wait(lambda: gw.status()["sinks"]["wms"]["backlog_events"] == 0, 60,
                  "the gateway's WMS backlog empty")
        except TimeoutError as err:
            out["failed"] = str(err)
        g2 = gw.cpu_seconds()
    finally:
        gw.stop()
        site.stop(15)
    try:
        events = [rec["event"] for rec in wms.events()]
    finally:
        wms.stop()
    report = verify(read_ledger(site.ledger)[1], events)
    (workdir / "truth.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    business = sum(ev["type"] in BUSINESS for ev in events)
    out.update(truth={k: report[k] for k in ("missing", "phantom", "wrong_fields",
                                             "out_of_order")},
               truth_ok=report["ok"], business_events=business,
               us_per_event=1e6 * (g2 - g0) / business if business else None)
    return out


def measure(workdir: Path, *, steps: Sequence[int] = (120, 360, 600, 900, 1200),
            window_s: float = 30.0, cpu_limit: float = 50.0) -> dict[str, Any]:
    """Step the order rate up until a step fails; see the module doc."""
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"site_orders_per_min": 0, "site_gateway_cpu_pct": 0.0}
    tried = 0
    passed: list[tuple[float, float]] = []  # (business events/s offered, gateway CPU %)
    with MosquittoBroker(workdir / "mosquitto") as broker:
        for per_min in steps:
            tried += 1
            try:
                step = _step(workdir / f"step-{per_min}", broker, per_min, window_s)
            except (TimeoutError, OSError, RuntimeError) as err:
                print(f"site step {per_min}/min: failed: {err}", file=sys.stderr)
                out[f"site_step_{per_min}_failed"] = str(err)
                out["site_limited_by"] = "error"
                break
            cpu = step.get("cpu_pct", 0.0)
            out[f"site_step_{per_min}_cpu_pct"] = round(cpu, 1)
            out[f"site_step_{per_min}_truth"] = step["truth"]
            print(f"site step {per_min}/min: gateway {cpu:.1f} % of a core, "
                  f"{step['us_per_event'] or 0:.0f} µs/event, site "
                  f"{step['site_cpu_pct']:.0f} %, truth {step['truth']}"
                  f"{', ' + step['failed'] if 'failed' in step else ''}", file=sys.stderr)
            rate = step.get("delivered_per_min", 0.0)
            out[f"site_step_{per_min}_delivered_per_min"] = round(rate)
            if "failed" not in step and rate < 0.9 * per_min:
                step["failed"] = f"the site delivered {rate:.0f} orders/min"
            if "failed" in step:
                out[f"site_step_{per_min}_failed"] = step["failed"]
                out["site_limited_by"] = "site"
                break
            if not step["truth_ok"]:
                out["site_limited_by"] = "truth_check"
                break
            if cpu >= cpu_limit:
                out["site_limited_by"] = "gateway_cpu"
                break
            passed.append((step["business_events"] / window_s, cpu))
            out.update(site_orders_per_min=per_min, site_gateway_cpu_pct=round(cpu, 1),
                       site_gateway_cpu_us_per_event=round(step["us_per_event"] or 0),
                       site_business_events=step["business_events"],
                       site_events_per_order=round(step["business_events"] / step["orders"], 1),
                       site_simulator_cpu_pct=round(step["site_cpu_pct"], 1))
        else:
            out["site_limited_by"] = "steps"
    out["site_steps_tried"] = tried
    if len(passed) >= 2 and passed[-1][0] > passed[0][0]:
        # What one more event costs, without the fixed cost of polling and heartbeats.
        (r0, c0), (r1, c1) = passed[0], passed[-1]
        out["site_gateway_cpu_us_per_event_marginal"] = round((c1 - c0) * 1e4 / (r1 - r0))
    return out


def run(args: argparse.Namespace) -> int:
    """``python -m bench site``: print one JSON line of figures."""
    steps = [int(s) for s in str(args.steps).split(",") if s]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-site-"))
    print(json.dumps(measure(workdir, steps=steps, window_s=args.window,
                             cpu_limit=args.cpu_limit)))
    return 0
