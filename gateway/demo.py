"""``warehouse-gateway demo``: the whole simulated site and the gateway reading it.

Starts Mosquitto (own config, free port), the WMS simulator, the simulated
site (``python -m simulators site``, its own process as a real site is other
machines: put walls, the Modbus conveyor, the OPC UA induct reader and
sorter, pack stations, VDA 5050 AMRs, with its ground-truth ledger) and the
gateway with a config made from :func:`simulators.site.site_devices`; prints
where each one listens and what to try, and runs until Ctrl-C (or
``--duration``). With ``--verify`` it finally lets the orders in flight
finish and prints the truth check of the ledger against the WMS.
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
import time
import tomllib
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.logs import configure_logging
from gateway.ops.demo_text import DemoSite, closing_line, device_kind, try_this, write_demo_token

__all__ = ["add_arguments", "demo_config", "demo_config_text", "run_demo"]


#: Event types the WMS takes (telemetry such as device_status stays on MQTT).
WMS_ROUTES = ["scan", "pick", "pack", "move", "exception"]


def add_arguments(d: argparse.ArgumentParser) -> None:
    """The ``demo`` sub-command's options."""
    d.add_argument("--status-port", type=int, default=8080, help="status page port (8080)")
    d.add_argument("--wms-port", type=int, default=0,
                   help="WMS simulator ingest port (default: a free one)")
    d.add_argument("--data-dir", type=Path, default=None,
                   help="where the demo keeps its config, store and the site's ledger "
                        "(default: a temporary folder, removed at the end)")
    d.add_argument("--order-rate", type=float, default=0.5, help="orders per second (0.5)")
    d.add_argument("--orders", type=int, default=None,
                   help="stop making orders after N (default: until stopped)")
    d.add_argument("--put-walls", type=int, default=1, help="put-wall stations (1)")
    d.add_argument("--pack-stations", type=int, default=2, help="pack stations (2)")
    d.add_argument("--amrs", type=int, default=2, help="VDA 5050 AMRs (2; 0: none)")
    d.add_argument("--random-faults", action=argparse.BooleanOptionalAction, default=True,
                   help="now and then a no-read, a jam, a full chute, a short pick, an "
                        "overweight carton, an AMR emergency stop (on)")
    d.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    d.add_argument("--verify", action="store_true",
                   help="at the end, let the orders in flight finish and print the truth "
                        "check of the site's ledger against what the WMS accepted")
    d.add_argument("--seed", type=int, default=1, help="the site's random seed")


#: The site's fault rates with --random-faults (per scan/pick/carton, or per second).
_RANDOM_FAULTS = ["--no-read-rate", "0.03", "--short-pick-rate", "0.03",
                  "--overweight-rate", "0.03", "--jam-rate", "0.005",
                  "--chute-full-rate", "0.003", "--estop-rate", "0.003"]


def demo_config(*, store_path: Path, broker_port: int, wms_url: str, status_port: int,
                devices: list[dict[str, Any]], site_id: str = "DC-EAST-1",
                codes: list[dict[str, str]] | None = None,
                status_token_file: Path | None = None) -> dict[str, Any]:
    """The demo's gateway config as data: the site's ``devices`` and ``[[site.codes]]``,
    the WMS and MQTT sinks."""
    return {
        "site": {"id": site_id, **({"codes": codes} if codes else {})},
        # Delivered events stay an hour, for the container search and `events tail`.
        "store": {"path": store_path, "max_bytes": "256 MiB", "retention": "1h"},
        "brokers": [{"id": "site", "host": "127.0.0.1", "port": broker_port}],
        "devices": devices,
        "sinks": [
            # A short backoff: after a demo outage the backlog drains seconds later.
            {"id": "wms", "type": "http", "url": wms_url, "routes": WMS_ROUTES,
             "backoff_max": "5s"},
            {"id": "mqtt-out", "type": "mqtt", "broker": "site", "prefix": "wh"},
        ],
        "status": {"host": "127.0.0.1", "port": status_port,
                   **({"token_file": status_token_file} if status_token_file else {})},
    }


def demo_config_text(**kw: Any) -> str:
    """The demo's config file (:func:`demo_config` rendered as TOML)."""
    from simulators.harness.toml import render_toml

    return render_toml(demo_config(**kw))


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of the demo sub-command."""
    configure_logging("info", "auto")
    if args.order_rate <= 0:
        sys.stderr.write("error: --order-rate must be > 0\n")
        return 2
    if args.data_dir is not None:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    from gateway.app import StartupError
    from gateway.exitcodes import EXIT_FAILED, STARTUP_EXIT_CODES

    try:
        try:
            import uvloop

            return uvloop.run(_demo(args))
        except ImportError:
            return asyncio.run(_demo(args))
    except StartupError as err:
        sys.stderr.write(f"error: {err}\n")
        return STARTUP_EXIT_CODES.get(err.reason, EXIT_FAILED)


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _site_args(args: argparse.Namespace) -> list[str]:
    out = ["--order-rate", str(args.order_rate), "--seed", str(args.seed)]
    if args.orders is not None:
        out += ["--orders", str(args.orders)]
    return out + (_RANDOM_FAULTS if args.random_faults else [])


async def _demo(args: argparse.Namespace) -> int:
    from simulators.broker import MosquittoBroker
    from simulators.harness.site import SiteProcess
    from simulators.site import SiteLayout
    from simulators.site.config import site_codes
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
    layout = SiteLayout(put_walls=args.put_walls, pack_stations=args.pack_stations,
                        amrs=args.amrs)
    site = SiteProcess(data / "site", broker.port, layout=layout, extra=_site_args(args))
    try:
        await asyncio.to_thread(site.start)
    except BaseException:
        await asyncio.to_thread(site.stop, 5)
        await wms.stop()
        await asyncio.to_thread(broker.stop)
        raise
    token_file, token = write_demo_token(data)
    text = demo_config_text(store_path=data / "buffer.db", broker_port=broker.port,
                            wms_url=wms.url, status_port=args.status_port,
                            devices=site.devices(), site_id=layout.site, codes=site_codes(),
                            status_token_file=token_file)
    await asyncio.to_thread((data / "gateway.toml").write_text, text, encoding="utf-8")
    cfg = parse_config(tomllib.loads(text), data / "gateway.toml")
    kinds = {d.id: device_kind(getattr(d, "role", None), d.driver) for d in cfg.devices}
    gateway = Gateway(cfg)
    gw_task = asyncio.create_task(gateway.run(install_signals=False), name="gateway")
    code = 0
    try:
        ready = asyncio.create_task(gateway.ready.wait())
        # The gateway may fail to start (e.g. the status port is in use): say so at once.
        await asyncio.wait([ready, gw_task], timeout=15, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if gw_task.done():
            gw_task.result()  # raises what stopped it (a StartupError: one line)
        if not gateway.ready.is_set():
            raise TimeoutError("the demo gateway did not become ready within 15 s")
        # Orders start once the gateway reads every device: nothing happens unseen.
        await asyncio.to_thread(site.start_orders)
        for text_line in try_this(DemoSite(
                status=f"http://{cfg.status.host}:{cfg.status.port}", token=token,
                config=data / "gateway.toml", wms_ingest=wms.url,
                wms_control=f"http://127.0.0.1:{wms.control_port}",
                broker=f"mqtt://{broker.host}:{broker.port}",
                events_topic=f"wh/{cfg.site.id}/events/#", site_control=site.control_url,
                ledger=site.ledger, devices=kinds, modbus_port=site.modbus_port,
                opcua_port=site.opcua_port)):
            _say(text_line)
        waiters = [asyncio.create_task(stop.wait()), gw_task]
        await asyncio.wait(waiters, timeout=args.duration, return_when=asyncio.FIRST_COMPLETED)
        waiters[0].cancel()
        if args.verify and not gw_task.done():
            code = await _truth_check(site, gateway, wms, stop)
    finally:
        gateway.stop()
        with contextlib.suppress(Exception):
            await gw_task
        stats = wms.stats()
        _say(closing_line(stats["unique"], stats["duplicates"],
                          (r["event"]["device"] for r in wms.events), kinds))
        await asyncio.to_thread(site.stop, 10)
        await wms.stop()
        await asyncio.to_thread(broker.stop)
        if own_dir:
            shutil.rmtree(data, ignore_errors=True)
    return code


#: How long ``--verify`` waits for the orders in flight and the backlog.
_SETTLE_S = 120.0


async def _truth_check(site: Any, gateway: Gateway, wms: Any, stop: asyncio.Event) -> int:
    """Stop new orders, wait until the site is idle and the WMS has it all, print the check."""
    from simulators.site import read_ledger, verify

    await asyncio.to_thread(site.fault, "stop_orders")
    _say("demo: no new orders; waiting for the orders in flight (Ctrl-C skips)")
    stop.clear()
    deadline = time.monotonic() + _SETTLE_S
    settled = False
    while time.monotonic() < deadline and not stop.is_set():
        state = await asyncio.to_thread(site.state)
        backlog = gateway.snapshot().sinks["wms"].backlog_events
        if state["idle"] and backlog == 0:
            if settled:
                break
            settled = True  # one more beat: the last polls and AMR states come in
        else:
            settled = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    _, entries = await asyncio.to_thread(read_ledger, site.ledger)
    report = verify(entries, [r["event"] for r in wms.events])
    _say("truth check: " + json.dumps(report, separators=(",", ":")))
    return 0 if report["ok"] else 1
