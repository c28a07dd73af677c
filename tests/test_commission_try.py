"""``warehouse-gateway try`` against real servers: it shows, it keeps nothing.

Each test runs the real command as a child process against one of the
project's simulators (the OPC UA sorter, the Modbus conveyor PLC, scanners
over a real Mosquitto) with a config that also names a store and a WMS sink.
What ``try`` prints must be what the gateway would make of the same input
(the same event ids), and afterwards the store file does not exist, the WMS
simulator received nothing and the gateway's own broker session is as it was.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from commission import SITE, TryProcess, run_try, write_config
from e2e import wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_gateway_e2e_conveyor import move_ids
from test_gateway_e2e_opcua import device as sorter_device
from test_gateway_e2e_opcua import expected_ids, scans_logged

from drivers.mqtt.config import ScannerFields
from drivers.mqtt.driver import decode_scanner_read
from gateway.core.events import make_event_id
from gateway.recognizers.scanner import scanner_source_key
from simulators.broker import MosquittoBroker, free_port
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_plc import gateway_device
from simulators.harness.sorter import SorterProcess
from simulators.scanners import ScannerFleet
from simulators.wms import WmsSimulator

TOPIC = "site/DC-EAST-1/scanners/scan-01/reads"
#: The gateway's own client id on the site broker (the default the scanner driver takes).
GATEWAY_CLIENT = f"wh-gw-{SITE}-site"


def expected_scan_id(payload: bytes) -> str:
    """The id the gateway gives a scanner read (decoded and keyed as its driver does)."""
    sig = decode_scanner_read(payload, ScannerFields(), "scan-01", 0.0, 65536)
    return make_event_id(SITE, "scan-01", scanner_source_key(sig))


def assert_nothing_kept(tmp_path: Path, wms: WmsSimulator) -> None:
    assert not (tmp_path / "store").exists(), "try created the store's folder or file"
    assert wms.stats()["requests"] == 0 and wms.events == [], "try sent something upstream"


async def test_try_sorter_prints_the_events_the_gateway_would_make_and_keeps_nothing(
        tmp_path: Path, wms: WmsSimulator) -> None:
    with SorterProcess(tmp_path / "sorter", rate=50, total=30, seed=5) as sorter:
        await asyncio.to_thread(sorter.start)
        await wait_until(lambda: scans_logged(sorter) == 30, 20, "30 items logged")
        config = write_config(tmp_path, [sorter_device(sorter.endpoint)], wms_url=wms.url)
        run = await run_try(config, "--device", "sorter-1", "--duration", "3", "--json")
        want = expected_ids(sorter.read_log())
    assert run.code == 0, run.stderr
    (start,) = run.of("start")
    assert start["stores"] is False and start["driver"] == "opcua"
    assert run.of("connected")
    signals = run.of("signal")
    assert {s["point"] for s in signals} >= {"divert_confirm", "scan", "state"}
    business = {d["event"]["event_id"] for d in run.of("event")
                if d["event"]["type"] in ("move", "scan", "exception")}
    assert business == want, "try makes exactly the events the gateway would"
    for ev in run.of("event"):  # each event names the signal(s) it was made of
        assert ev["signals"] and all(1 <= n <= len(signals) for n in ev["signals"])
    (summary,) = run.of("summary")
    assert summary["signals"] == len(signals) and summary["stopped"] == "--duration 3s elapsed"
    assert_nothing_kept(tmp_path, wms)


async def test_try_conveyor_prints_signals_and_moves_the_plc_recorded(
        tmp_path: Path, wms: WmsSimulator) -> None:
    async with ConveyorSimulator(count=1, tote_rate=6.0, noread_rate=0.0) as sim:
        conv = sim.conveyors[0]
        dev = gateway_device(conv.id, conv.port, poll_interval="100ms",
                             extra={"zones": {"1": "INDUCT-1"}, "timeout": "1s"})
        config = write_config(tmp_path, [dev], wms_url=wms.url)
        run = await run_try(config, "--device", conv.id, "--duration", "4")
        recorded = set(move_ids(conv.plc, conv.id))
    assert run.code == 0, run.stderr
    assert run.lines[0].startswith(f"try {conv.id} (driver modbus, role conveyor, at 127.0.0.1:")
    assert f"{conv.id}: connected" in run.lines
    assert any(" signal state = 6" in t for t in run.lines)  # 6: running
    assert any(" signal tracking[0].tote = " in t for t in run.lines)
    moves = [t.split()[2] for t in run.lines if t.startswith("    -> move ")]
    assert moves, f"no move in {len(run.lines)} lines: {run.lines[-20:]}"
    assert set(moves) <= recorded, "every move shown is one the PLC recorded, by its id"
    assert run.lines[-1].startswith(f"{conv.id}: stopped (--duration 4s elapsed): ")
    assert run.lines[-1].endswith("nothing was stored")
    assert_nothing_kept(tmp_path, wms)


def _client(client_id: str) -> mqtt.Client:
    return mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                       protocol=mqtt.MQTTv5)


def _session(port: int, client_id: str, *, subscribe: str | None) -> tuple[bool, list[bytes]]:
    """Connect as ``client_id`` resuming its session; (session present, messages it got)."""
    c = _client(client_id)
    connected, subscribed = threading.Event(), threading.Event()
    present: list[bool] = []
    got: list[bytes] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        present.append(bool(flags.session_present))
        connected.set()

    c.on_connect = on_connect
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = lambda client, userdata, msg: got.append(bytes(msg.payload))
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    try:
        assert connected.wait(10)
        if subscribe is not None:
            c.subscribe(subscribe, qos=1)
            assert subscribed.wait(10)
        else:
            threading.Event().wait(1.0)  # the queued messages arrive
    finally:
        c.disconnect()
        c.loop_stop()
    return present[0], got


async def test_try_scanner_uses_its_own_clean_session_and_leaves_the_gateways_alone(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    # The gateway's persistent session exists (it ran before and is stopped now).
    await asyncio.to_thread(_session, broker.port, GATEWAY_CLIENT, subscribe=TOPIC)
    config = write_config(tmp_path, [{"id": "scan-01", "driver": "mqtt", "broker": "site",
                                      "topic": TOPIC}],
                          wms_url=wms.url, broker_port=broker.port)
    proc = TryProcess(config, "--device", "scan-01", "--count", "4", "--json")
    fleet = ScannerFleet("127.0.0.1", broker.port, count=1, client_id="scanner-sim-try")
    await proc.start()
    try:
        await proc.until("connected")
        await asyncio.sleep(0.5)  # its subscription is in place
        with fleet:
            reads = await asyncio.to_thread(fleet.publish, 3)
            await asyncio.to_thread(fleet.publish_raw, TOPIC, b'{"code": broken')
        run = await proc.finish()
    finally:
        await proc.kill()
    assert run.code == 0, run.stderr
    signals = run.of("signal")
    assert [s["value"] for s in signals] == [r.code for r in reads]
    events = run.of("event")
    assert [e["event"]["event_id"] for e in events] == [expected_scan_id(r.payload)
                                                        for r in reads]
    (dead,) = run.of("dead_letter")
    assert dead["signals"] == [] and dead["reason"].startswith("not_json:")
    assert dead["payload"] == '{"code": broken' and dead["context"]["topic"] == TOPIC
    assert run.of("summary")[0]["stopped"] == "--count 4 reached"
    assert_nothing_kept(tmp_path, wms)
    # The gateway's session is untouched: still there, holding what was published meanwhile.
    present, queued = await asyncio.to_thread(_session, broker.port, GATEWAY_CLIENT,
                                              subscribe=None)
    assert present, "try replaced the gateway's persistent session"
    assert queued == [r.payload for r in reads] + [b'{"code": broken']


async def test_unknown_device_lists_the_ids_and_an_unreachable_one_fails(
        tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, [{"id": "plc-1", "driver": "modbus", "port": port,
                                      "role": "conveyor", "timeout": "200ms",
                                      "points": [{"name": "heartbeat", "table": "input",
                                                  "address": 0, "role": "heartbeat"}]}])
    run = await run_try(config, "--device", "plc-9")
    assert run.code == 2
    assert "no device 'plc-9' in the config; devices: plc-1" in run.stderr
    run = await run_try(config, "--device", "plc-1", "--connect-timeout", "1")
    assert run.code == 1
    assert f"plc-1: no connection within 1s: cannot connect to 127.0.0.1:{port}" in run.stderr
    run = await run_try(config, "--device", "plc-1", "--browse")
    assert run.code == 2 and "--browse is for opcua devices" in run.stderr
    assert not (tmp_path / "store").exists()


async def test_ctrl_c_ends_the_run_with_its_summary(tmp_path: Path) -> None:
    async with ConveyorSimulator(count=1, tote_rate=2.0, noread_rate=0.0) as sim:
        conv = sim.conveyors[0]
        config = write_config(tmp_path, [gateway_device(conv.id, conv.port,
                                                        poll_interval="100ms")])
        proc = TryProcess(config, "--device", conv.id, "--duration", "120", "--json")
        await proc.start()
        try:
            await proc.until("signal")
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGINT)
            run = await proc.finish(within=10)
        finally:
            await proc.kill()
    assert run.code == 0, run.stderr
    (summary,) = run.of("summary")
    assert summary["stopped"] == "interrupted" and summary["signals"] == len(run.of("signal"))
    assert not (tmp_path / "store").exists()
