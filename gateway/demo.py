"""``warehouse-gateway demo``: a whole simulated site on this machine.

Starts Mosquitto (own config, free port), the WMS simulator, the site
simulator (``python -m simulators site``: orders picked at put walls, totes on
a Modbus conveyor, an OPC UA sorter with its induct reader, MQTT pack-station
scanners, VDA 5050 AMRs carrying cartons to dock doors, one tote and one
carton code across all of them, a ground-truth ledger) and the gateway with
an embedded default config, prints where each one listens, and runs until
Ctrl-C (or ``--duration``). The site runs as a child process, as its devices
would be separate machines on a real site; when the demo stops it prints the
truth check of what the WMS accepted against the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import structlog

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.logs import configure_logging

log = structlog.get_logger(__name__)


def demo_config(*, store_path: Path, broker_port: int, wms_url: str, status_port: int,
                devices: list[dict[str, Any]]) -> dict[str, Any]:
    """The demo's gateway config as data: a site with the simulated devices given."""
    return {
        "site": {"id": "DC-EAST-1"},
        "store": {"path": store_path, "max_bytes": "256 MiB"},
        "brokers": [{"id": "site", "host": "127.0.0.1", "port": broker_port}],
        "devices": devices,
        "sinks": [
            {"id": "wms", "type": "http", "url": wms_url,
             "routes": ["scan", "pick", "pack", "move", "exception"]},
            {"id": "mqtt-out", "type": "mqtt", "broker": "site", "prefix": "wh"},
        ],
        "status": {"host": "127.0.0.1", "port": status_port},
    }


def demo_config_text(**kw: Any) -> str:
    """The demo's config file (:func:`demo_config` rendered as TOML)."""
    from simulators.harness.toml import render_toml

    return render_toml(demo_config(**kw))


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of the demo sub-command."""
    configure_logging("info", "auto")
    if args.data_dir is not None:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    from gateway.app import StartupError
    from gateway.exitcodes import EXIT_FAILED, STARTUP_EXIT_CODES

    try:
        try:
            import uvloop

            uvloop.run(_demo(args))
        except ImportError:
            asyncio.run(_demo(args))
    except StartupError as err:
        sys.stderr.write(f"error: {err}\n")
        return STARTUP_EXIT_CODES.get(err.reason, EXIT_FAILED)
    return 0


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _wanted(args: argparse.Namespace, device: dict[str, Any]) -> bool:
    """Whether the demo's flags ask the gateway to read ``device``."""
    driver = device["driver"]
    return bool((driver != "modbus" or args.conveyors > 0) and (driver != "opcua" or args.sorter)
            and (driver != "vda5050" or args.amrs > 0))


async def _demo(args: argparse.Namespace) -> None:
    from simulators.broker import MosquittoBroker
    from simulators.harness.site import SiteProcess
    from simulators.site import SiteLayout, fetch_wms_events, read_ledger, verify
    from simulators.wms import WmsSimulator

    own_dir = args.data_dir is None
    data = Path(args.data_dir or tempfile.mkdtemp(prefix="wh-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    broker = MosquittoBroker(data / "mosquitto")
    await asyncio.to_thread(broker.start)
    wms = WmsSimulator(port=args.wms_port)
    await wms.start()
    layout = SiteLayout(pack_stations=max(1, args.scanners), amrs=max(0, args.amrs))
    site = SiteProcess(data / "site", broker.port, layout=layout, extra=[
        "--order-rate", str(args.rate), "--no-read-rate", "0.02", "--short-pick-rate", "0.05",
        "--overweight-rate", "0.03", "--jam-rate", "0.01", "--chute-full-rate", "0.01"])
    try:
        await asyncio.to_thread(site.start)
    except BaseException:
        await asyncio.to_thread(site.stop, 5)
        await wms.stop()
        await asyncio.to_thread(broker.stop)
        raise
    devices = [d for d in site.devices() if _wanted(args, d)]
    text = demo_config_text(store_path=data / "buffer.db", broker_port=broker.port,
                            wms_url=wms.url, status_port=args.status_port, devices=devices)
    await asyncio.to_thread((data / "gateway.toml").write_text, text, encoding="utf-8")
    cfg = parse_config(tomllib.loads(text), data / "gateway.toml")
    gateway = Gateway(cfg)
    gw_task = asyncio.create_task(gateway.run(install_signals=False), name="gateway")
    try:
        ready = asyncio.create_task(gateway.ready.wait())
        # The gateway may fail to start (e.g. the status port is in use): say so at once.
        await asyncio.wait([ready, gw_task], timeout=15, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if gw_task.done():
            gw_task.result()  # raises what stopped it (a StartupError: one line)
        if not gateway.ready.is_set():
            raise TimeoutError("the demo gateway did not become ready within 15 s")
        await asyncio.to_thread(site.start_orders)
        _say("")
        _say("warehouse gateway demo is running")
        _say(f"  status page     http://{cfg.status.host}:{cfg.status.port}/")
        _say(f"  status API      http://{cfg.status.host}:{cfg.status.port}/api/status")
        _say(f"  metrics         http://{cfg.status.host}:{cfg.status.port}/metrics")
        _say(f"  MQTT broker     mqtt://{broker.host}:{broker.port}  "
             f"(events out on wh/{cfg.site.id}/events/#)")
        _say(f"  WMS simulator   {wms.url}  (stats: http://127.0.0.1:{wms.control_port}/stats)")
        _say(f"  site            {args.rate} orders/s; control {site.control_url}/state, "
             f"ledger {site.ledger}")
        _say(f"  pack scanners   {layout.pack_stations} publishing to "
             f"site/{cfg.site.id}/pack/<station>/scanner/reads")
        if args.conveyors:
            _say(f"  conveyor        Modbus TCP PLC on 127.0.0.1:{site.modbus_port}")
        if args.sorter:
            _say(f"  sorter          OPC UA opc.tcp://127.0.0.1:{site.opcua_port}/")
        if args.amrs:
            _say(f"  AMRs            {args.amrs} VDA 5050 vehicles on the broker (uagv/v2/...)")
        _say(f"  config, store   {data}")
        _say("  Ctrl-C stops everything.")
        _say("")
        waiters = [asyncio.create_task(stop.wait()), gw_task]
        await asyncio.wait(waiters, timeout=args.duration, return_when=asyncio.FIRST_COMPLETED)
        waiters[0].cancel()
    finally:
        await asyncio.to_thread(site.stop, 10)
        if not gw_task.done():
            await asyncio.sleep(2.0)  # the last polls and reads reach the WMS
        gateway.stop()
        with contextlib.suppress(Exception):
            await gw_task
        stats = wms.stats()
        _say(f"demo stopped: WMS accepted {stats['unique']} unique events "
             f"({stats['duplicates']} duplicates) from the site's "
             f"{len(read_ledger(site.ledger)[1]) if site.ledger.exists() else 0} happenings")
        if site.ledger.exists():
            events = await asyncio.to_thread(fetch_wms_events, wms.control_url)
            report = verify(read_ledger(site.ledger)[1], events)
            report.pop("examples")
            _say("truth check " + json.dumps(report, separators=(",", ":")))
        await wms.stop()
        await asyncio.to_thread(broker.stop)
        if own_dir:
            shutil.rmtree(data, ignore_errors=True)
