"""``warehouse-gateway demo``: a whole simulated site on this machine.

Starts Mosquitto (own config, free port), the WMS simulator, a fleet of
barcode scanners and the gateway with an embedded default config, prints
where each one listens, and runs until Ctrl-C (or ``--duration``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import threading
import tomllib
from importlib import resources
from pathlib import Path

import structlog

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.logs import configure_logging

log = structlog.get_logger(__name__)


def demo_config_text(*, store_path: Path, broker_port: int, wms_url: str, status_port: int,
                     scanners: int) -> str:
    """The demo's config file, with scanner devices appended."""
    template = resources.files("gateway").joinpath("demo.toml").read_text("utf-8")
    text = (template.replace("{store_path}", str(store_path))
            .replace("{broker_port}", str(broker_port))
            .replace("{wms_url}", wms_url)
            .replace("{status_port}", str(status_port)))
    for i in range(1, scanners + 1):
        text += (
            f'\n[[devices]]\nid = "scan-{i:02d}"\ndriver = "mqtt"\nrole = "scanner"\n'
            f'broker = "site"\ntopic = "site/DC-EAST-1/scanners/scan-{i:02d}/reads"\n'
            f'location = "INDUCT-{i}"\n'
        )
    return text


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of the demo sub-command."""
    configure_logging("info", "auto")
    if args.data_dir is not None:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    try:
        import uvloop

        uvloop.run(_demo(args))
    except ImportError:
        asyncio.run(_demo(args))
    return 0


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _demo(args: argparse.Namespace) -> None:
    from simulators.broker import MosquittoBroker
    from simulators.scanners import ScannerFleet
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
    text = demo_config_text(store_path=data / "buffer.db", broker_port=broker.port,
                            wms_url=wms.url, status_port=args.status_port,
                            scanners=args.scanners)
    await asyncio.to_thread((data / "gateway.toml").write_text, text, encoding="utf-8")
    cfg = parse_config(tomllib.loads(text), data / "gateway.toml")
    gateway = Gateway(cfg)
    gw_task = asyncio.create_task(gateway.run(install_signals=False), name="gateway")
    fleet = ScannerFleet(broker.host, broker.port, count=args.scanners,
                         no_read_rate=0.02, double_read_rate=0.05, client_id="demo-scanners")
    fleet_stop = threading.Event()
    fleet_task: asyncio.Task[int] | None = None
    try:
        async with asyncio.timeout(15):
            await gateway.ready.wait()
        await asyncio.to_thread(fleet.connect)
        fleet_task = asyncio.create_task(
            asyncio.to_thread(fleet.run, None, args.rate, fleet_stop), name="scanners"
        )
        _say("")
        _say("warehouse gateway demo is running")
        _say(f"  status page     http://{cfg.status.host}:{cfg.status.port}/")
        _say(f"  status API      http://{cfg.status.host}:{cfg.status.port}/api/status")
        _say(f"  metrics         http://{cfg.status.host}:{cfg.status.port}/metrics")
        _say(f"  MQTT broker     mqtt://{broker.host}:{broker.port}  "
             f"(events out on wh/{cfg.site.id}/events/#)")
        _say(f"  WMS simulator   {wms.url}  (stats: http://127.0.0.1:{wms.control_port}/stats)")
        _say(f"  scanners        {args.scanners} publishing {args.rate}/s to "
             "site/DC-EAST-1/scanners/<id>/reads")
        _say(f"  config, store   {data}")
        _say("  Ctrl-C stops everything.")
        _say("")
        waiters = [asyncio.create_task(stop.wait()), gw_task]
        await asyncio.wait(waiters, timeout=args.duration, return_when=asyncio.FIRST_COMPLETED)
        waiters[0].cancel()
    finally:
        fleet_stop.set()
        if fleet_task is not None:
            with contextlib.suppress(Exception):
                await fleet_task
        await asyncio.to_thread(fleet.close)
        gateway.stop()
        with contextlib.suppress(Exception):
            await gw_task
        stats = wms.stats()
        _say(f"demo stopped: WMS accepted {stats['unique']} unique events "
             f"({stats['duplicates']} duplicates) from {fleet.published} scanner messages")
        await wms.stop()
        await asyncio.to_thread(broker.stop)
        if own_dir:
            shutil.rmtree(data, ignore_errors=True)
