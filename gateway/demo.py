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
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from importlib import resources
from pathlib import Path

import structlog

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.logs import configure_logging

log = structlog.get_logger(__name__)


SORTER_DEVICE = """
[[devices]]
id = "sorter-1"
driver = "opcua"
role = "sorter"
endpoint = "opc.tcp://127.0.0.1:{port}/"
induct = "INDUCT-1"
location = "INDUCT-1"

[[devices.events]]
kind = "divert_confirm"
source = "ns=2;s=Sorter"
type = "ns=2;s=DivertConfirmEventType"

[[devices.events]]
kind = "scan"
source = "nsu=urn:warehouse-gateway:sorter-sim:model;s=InductReader"
type = "nsu=urn:warehouse-gateway:sorter-sim:model;s=AutoIdScanEventType"

[[devices.nodes]]
node = "ns=2;s=Sorter.State"
point = "state"
kind = "status"

[[devices.nodes]]
node = "ns=2;s=Sorter.Counters.Total"
point = "counter.total"
"""

AMR_DEVICE = """
[[devices]]
id = "amr-fleet"
driver = "vda5050"
broker = "site"
manufacturer = "SimRobotics"
"""


def demo_config_text(*, store_path: Path, broker_port: int, wms_url: str, status_port: int,
                     scanners: int, conveyor_ports: list[int] | None = None,
                     sorter_port: int | None = None, amrs: bool = False) -> str:
    """The demo's config file, with the simulated devices appended."""
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
    if conveyor_ports:
        from simulators.conveyor_plc import gateway_device_toml

        for i, port in enumerate(conveyor_ports, start=1):
            text += "\n" + gateway_device_toml(f"conveyor-{i:02d}", port, poll_interval="200ms")
    if sorter_port is not None:
        text += SORTER_DEVICE.replace("{port}", str(sorter_port))
    if amrs:
        text += AMR_DEVICE
    return text


class ChildSimulator:
    """``python -m simulators <name>`` as a child process with its own log file."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "simulators", name, *args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)

    def wait_for_line(self, event: str, timeout: float = 30.0) -> dict[str, object]:
        """The first JSON log line whose ``event`` is ``event``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} simulator exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            with contextlib.suppress(OSError):
                for line in self.log_path.read_text("utf-8", errors="replace").splitlines():
                    with contextlib.suppress(ValueError):
                        doc = json.loads(line)
                        if isinstance(doc, dict) and doc.get("event") == event:
                            return doc
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} simulator did not log {event!r}; see {self.log_path}")

    def wait_listening(self, port: int, timeout: float = 30.0) -> None:
        """Wait until ``port`` on loopback accepts connections."""
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} simulator exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} simulator not listening on {port}; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of the demo sub-command."""
    configure_logging("info", "auto")
    if args.data_dir is not None:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    from gateway.app import StartupError
    from gateway.cli import EXIT_FAILED, STARTUP_EXIT_CODES

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
    children: list[ChildSimulator] = []
    conveyor_ports: list[int] = []
    sorter_port: int | None = None
    try:
        if args.conveyors:
            conv = ChildSimulator("conveyor", [
                "--port", "0", "--control-port", "0", "--count", str(args.conveyors),
                "--tote-rate", "1", "--jam-rate", "0.01", "--jam-clear", "8",
            ], data / "conveyor.log")
            children.append(conv)
            line = await asyncio.to_thread(conv.wait_for_line, "conveyor_simulator_listening")
            ports = line["ports"]
            conveyor_ports = [int(p) for p in ports] if isinstance(ports, list) else []
        if args.sorter:
            sorter_port = free_port()
            sorter = ChildSimulator("sorter", [
                "--port", str(sorter_port), "--rate", "2", "--state", str(data / "sorter"),
            ], data / "sorter.log")
            children.append(sorter)
            await asyncio.to_thread(sorter.wait_listening, sorter_port)
        if args.amrs:
            children.append(ChildSimulator("amr", [
                "--port", str(broker.port), "--count", str(args.amrs), "--standalone",
                "--state-interval", "5", "--fail-rate", "0.03",
            ], data / "amr.log"))
    except BaseException:
        for child in children:
            child.stop()
        await wms.stop()
        await asyncio.to_thread(broker.stop)
        raise
    text = demo_config_text(store_path=data / "buffer.db", broker_port=broker.port,
                            wms_url=wms.url, status_port=args.status_port,
                            scanners=args.scanners, conveyor_ports=conveyor_ports,
                            sorter_port=sorter_port, amrs=bool(args.amrs))
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
        if conveyor_ports:
            _say(f"  conveyors       {len(conveyor_ports)} Modbus TCP PLCs on 127.0.0.1:"
                 f"{','.join(map(str, conveyor_ports))}")
        if sorter_port is not None:
            _say(f"  sorter          OPC UA opc.tcp://127.0.0.1:{sorter_port}/")
        if args.amrs:
            _say(f"  AMRs            {args.amrs} VDA 5050 vehicles on the broker (uagv/v2/...)")
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
        for child in children:
            await asyncio.to_thread(child.stop)
        await wms.stop()
        await asyncio.to_thread(broker.stop)
        if own_dir:
            shutil.rmtree(data, ignore_errors=True)
