"""``warehouse-gateway demo``: a whole simulated site on this machine.

Starts Mosquitto (own config, free port), the WMS simulator, a fleet of
barcode scanners, two conveyor PLCs (Modbus TCP), a sorter with its induct
reader (OPC UA), a fleet of AMRs (VDA 5050 over MQTT) and the gateway with an
embedded default config, prints where each one listens, and runs until Ctrl-C
(or ``--duration``). Device simulators run as child processes, as they would
be separate machines on a real site.
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
from pathlib import Path
from typing import Any

import structlog

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.logs import configure_logging
from gateway.ops.demo_text import DemoSite, closing_line, try_this, write_demo_token

log = structlog.get_logger(__name__)


_SORTER_MODEL = "nsu=urn:warehouse-gateway:sorter-sim:model"


def demo_config(*, store_path: Path, broker_port: int, wms_url: str, status_port: int,
                scanners: int, conveyor_ports: list[int] | None = None,
                sorter_port: int | None = None, amrs: bool = False,
                status_token_file: Path | None = None) -> dict[str, Any]:
    """The demo's gateway config as data: a site with the simulated devices given."""
    from simulators.conveyor_plc import gateway_device

    devices: list[dict[str, Any]] = [
        {"id": f"scan-{i:02d}", "driver": "mqtt", "role": "scanner", "broker": "site",
         "topic": f"site/DC-EAST-1/scanners/scan-{i:02d}/reads", "location": f"INDUCT-{i}"}
        for i in range(1, scanners + 1)
    ]
    devices += [gateway_device(f"conveyor-{i:02d}", port, poll_interval="200ms")
                for i, port in enumerate(conveyor_ports or [], start=1)]
    if sorter_port is not None:
        devices.append({
            "id": "sorter-1", "driver": "opcua", "role": "sorter",
            "endpoint": f"opc.tcp://127.0.0.1:{sorter_port}/", "induct": "INDUCT-1",
            "location": "INDUCT-1",
            "events": [
                {"kind": "divert_confirm", "source": "ns=2;s=Sorter",
                 "type": "ns=2;s=DivertConfirmEventType"},
                {"kind": "scan", "source": f"{_SORTER_MODEL};s=InductReader",
                 "type": f"{_SORTER_MODEL};s=AutoIdScanEventType"},
            ],
            "nodes": [
                {"node": "ns=2;s=Sorter.State", "point": "state", "kind": "status"},
                {"node": "ns=2;s=Sorter.Counters.Total", "point": "counter.total"},
            ],
        })
    if amrs:
        devices.append({"id": "amr-fleet", "driver": "vda5050", "broker": "site",
                        "manufacturer": "SimRobotics"})
    return {
        "site": {"id": "DC-EAST-1"},
        # Delivered events stay an hour, for the container search and `events tail`.
        "store": {"path": store_path, "max_bytes": "256 MiB", "retention": "1h"},
        "brokers": [{"id": "site", "host": "127.0.0.1", "port": broker_port}],
        "devices": devices,
        "sinks": [
            {"id": "wms", "type": "http", "url": wms_url,
             "routes": ["scan", "pick", "pack", "move", "exception"]},
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


async def _demo(args: argparse.Namespace) -> None:
    from simulators.broker import MosquittoBroker, free_port
    from simulators.harness.process import ChildProcess, simulator
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
    children: list[ChildProcess] = []
    conveyor_ports: list[int] = []
    conveyor_control: str | None = None
    sorter_port: int | None = None
    try:
        if args.conveyors:
            conv = simulator("conveyor", [
                "--port", "0", "--control-port", "0", "--count", str(args.conveyors),
                "--tote-rate", "1", "--jam-rate", "0.01", "--jam-clear", "8",
            ], data / "conveyor.log")
            children.append(conv)
            conv.start()
            line = await asyncio.to_thread(conv.wait_for_log_event,
                                           "conveyor_simulator_listening")
            ports = line["ports"]
            conveyor_ports = [int(p) for p in ports] if isinstance(ports, list) else []
            conveyor_control = str(line["control"]) if line.get("control") else None
        if args.sorter:
            sorter_port = free_port()
            sorter = simulator("sorter", [
                "--port", str(sorter_port), "--rate", "2", "--state", str(data / "sorter"),
            ], data / "sorter.log")
            children.append(sorter)
            sorter.start()
            await asyncio.to_thread(sorter.wait_listening, sorter_port)
        if args.amrs:
            amr = simulator("amr", [
                "--port", str(broker.port), "--count", str(args.amrs), "--standalone",
                "--state-interval", "5", "--fail-rate", "0.03",
            ], data / "amr.log")
            children.append(amr)
            amr.start()
    except BaseException:
        for child in children:
            child.stop(5)
        await wms.stop()
        await asyncio.to_thread(broker.stop)
        raise
    token_file, token = write_demo_token(data)
    text = demo_config_text(store_path=data / "buffer.db", broker_port=broker.port,
                            wms_url=wms.url, status_port=args.status_port,
                            scanners=args.scanners, conveyor_ports=conveyor_ports,
                            sorter_port=sorter_port, amrs=bool(args.amrs),
                            status_token_file=token_file)
    await asyncio.to_thread((data / "gateway.toml").write_text, text, encoding="utf-8")
    cfg = parse_config(tomllib.loads(text), data / "gateway.toml")
    gateway = Gateway(cfg)
    gw_task = asyncio.create_task(gateway.run(install_signals=False), name="gateway")
    fleet = ScannerFleet(broker.host, broker.port, count=args.scanners,
                         no_read_rate=0.02, double_read_rate=0.05, client_id="demo-scanners")
    fleet_stop = threading.Event()
    fleet_task: asyncio.Task[int] | None = None
    try:
        ready = asyncio.create_task(gateway.ready.wait())
        # The gateway may fail to start (e.g. the status port is in use): say so at once.
        await asyncio.wait([ready, gw_task], timeout=15, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if gw_task.done():
            gw_task.result()  # raises what stopped it (a StartupError: one line)
        if not gateway.ready.is_set():
            raise TimeoutError("the demo gateway did not become ready within 15 s")
        await asyncio.to_thread(fleet.connect)
        fleet_task = asyncio.create_task(
            asyncio.to_thread(fleet.run, None, args.rate, fleet_stop), name="scanners"
        )
        for text_line in try_this(DemoSite(
                status=f"http://{cfg.status.host}:{cfg.status.port}", token=token,
                config=data / "gateway.toml", wms_ingest=wms.url,
                wms_control=f"http://127.0.0.1:{wms.control_port}",
                broker=f"mqtt://{broker.host}:{broker.port}",
                events_topic=f"wh/{cfg.site.id}/events/#", scanners=args.scanners,
                scanner_rate=args.rate, conveyor_ports=conveyor_ports,
                conveyor_control=conveyor_control,
                sorter_endpoint=f"opc.tcp://127.0.0.1:{sorter_port}/" if sorter_port else None,
                amrs=args.amrs)):
            _say(text_line)
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
        kinds = {d.id: getattr(d, "role", None) or d.driver for d in cfg.devices}
        _say(closing_line(stats["unique"], stats["duplicates"],
                          (r["event"]["device"] for r in wms.events), kinds))
        for child in children:
            await asyncio.to_thread(child.stop, 5)
        await wms.stop()
        await asyncio.to_thread(broker.stop)
        if own_dir:
            shutil.rmtree(data, ignore_errors=True)
