"""The ingest pipeline, the role registry and config-as-plugin building.

- a recognizer failure becomes an ingest dead letter in the real store,
  counted and logged once per device and error type, and the source is
  acknowledged only after the commit;
- every role a driver declares has a recognizer, and ``check`` rejects any
  other role naming the key;
- a Modbus-only gateway is built without loading paho or aiohttp.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest
import structlog
from test_config import assert_one_line_names, run_check

from buffer.service import Committer, StoreService
from buffer.store import Store
from drivers.mqtt.config import MqttDevice
from gateway.config import Device
from gateway.core.events import Signal
from gateway.core.records import IngestDeadLetter
from gateway.ingest import RECOGNIZERS, DriverIngest
from simulators.conveyor_plc import gateway_device_toml

ROOT = Path(__file__).resolve().parent.parent


class _Unprintable:
    """A signal value whose ``str`` fails: the scanner recognizer raises on it."""

    def __str__(self) -> str:
        raise ValueError("cannot print this code")


def _scanner(device_id: str) -> MqttDevice:
    return MqttDevice(id=device_id, driver="mqtt", broker="site", topic=f"scan/{device_id}")


async def test_recognizer_failure_is_one_dead_letter_logged_once_and_acked_after_commit(
    tmp_path: Path,
) -> None:
    service = StoreService(lambda: Store(tmp_path / "buffer.db", synchronous="NORMAL"))
    committer = Committer(service)
    ingest = DriverIngest("S", [_scanner("scan-01"), _scanner("scan-02")], committer, "mqtt")
    acked: list[int] = []
    store = await service.open()
    await service.call(store.register_sinks, ["t"])
    try:
        with structlog.testing.capture_logs() as logs:
            for device in ("scan-01", "scan-01", "scan-01", "scan-02"):
                pipe = ingest.device(device)
                pipe.bind(lambda raw: (raw, {"topic": "scan/x"}))
                sig = Signal(device, "read", _Unprintable(), 1.8e9, source_seq="7")
                pipe.accept(sig, b'{"code": "?"}', lambda: acked.append(1))
            # Nothing is acknowledged before the store has committed it.
            assert acked == []
            task = asyncio.create_task(committer.run())
            async with asyncio.timeout(10):
                await committer.flushed()
                while len(acked) < 4:
                    await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        letters = await service.call(store.dead_letters, kind="ingest")
    finally:
        await service.close()
    assert len(letters) == 4
    assert {dl.device for dl in letters} == {"scan-01", "scan-02"}
    assert all(dl.reason.startswith("recognizer_error: ValueError") for dl in letters)
    assert {bytes(dl.body) for dl in letters} == {b'{"code": "?"}'}
    assert all(dl.context == {"topic": "scan/x"} for dl in letters)
    failed = [e for e in logs if e["event"] == "recognizer_failed"]
    # One line per device and error type at once; the repeats are only counted.
    assert [e["device"] for e in failed] == ["scan-01", "scan-02"]
    assert ingest.device("scan-01").snapshot()["ingest_errors"] == {"recognizer_error": 3}
    assert ingest.device("scan-02").snapshot()["ingest_errors"] == {"recognizer_error": 1}


def test_a_message_for_no_device_is_counted_and_logged_once(tmp_path: Path) -> None:
    service = StoreService(lambda: Store(tmp_path / "buffer.db"))
    ingest = DriverIngest("S", [_scanner("scan-01")], Committer(service), "mqtt")
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            ingest.unrouted_message("scan/gone", "driver-site")
    assert ingest.unrouted == 5
    assert [e["event"] for e in logs] == ["mqtt_message_for_unknown_device"]


def test_every_role_a_driver_declares_has_a_recognizer() -> None:
    models = typing.get_args(typing.get_args(Device)[0])
    assert {m.KIND for m in models} == {"mqtt", "modbus", "opcua", "vda5050"}
    declared = {(m.KIND, role) for m in models for role in m.ROLES}
    assert declared == set(RECOGNIZERS)
    assert ("modbus", "conveyor") in declared and ("opcua", "scanner") in declared


@pytest.mark.parametrize(
    ("device", "role", "expected"),
    [
        (0, "conveyor", "role 'conveyor' is not one the mqtt driver can feed; "
                        "expected one of 'scanner', 'pick_station', 'pack_station'"),
        (2, "amr", "role 'amr' is not one the modbus driver can feed; expected one of "
                   "'conveyor', 'pack_station'"),
    ],
)
def test_check_rejects_a_role_the_driver_cannot_feed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: int, role: str, expected: str,
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(textwrap.dedent("""
        [site]
        id = "S"
        [store]
        path = "buffer.db"
        [[brokers]]
        id = "site"
        [[devices]]
        id = "scan-1"
        driver = "mqtt"
        broker = "site"
        topic = "scan/1"
        [[devices]]
        id = "fleet"
        driver = "vda5050"
        broker = "site"
    """) + gateway_device_toml("conveyor-01", 1502))
    text = path.read_text()
    if device == 0:
        text = text.replace('driver = "mqtt"\n', f'driver = "mqtt"\nrole = "{role}"\n')
    else:
        text = text.replace('role = "conveyor"', f'role = "{role}"')
    path.write_text(text)
    code, out, err = run_check(path, capsys)
    assert code == 2 and out == ""
    assert_one_line_names(err, path, f"devices[{device}].role: {expected}")


def test_modbus_only_gateway_loads_neither_paho_nor_aiohttp(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(textwrap.dedent("""
        [site]
        id = "S"
        [store]
        path = "buffer.db"
        [status]
        enabled = false
    """) + gateway_device_toml("conveyor-01", 1502))
    script = textwrap.dedent(f"""
        import json, sys
        from gateway.app import Gateway
        from gateway.config import load_config
        gw = Gateway(load_config({str(config)!r}))
        loaded = sorted({{m.split(".")[0] for m in sys.modules}}
                        & {{"paho", "aiohttp", "pymodbus", "asyncua"}})
        print(json.dumps({{"drivers": [d.name for d in gw.drivers], "loaded": loaded}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    # The Modbus driver was built (so pymodbus is there), and nothing else.
    assert result == {"drivers": ["modbus-conveyor-01"], "loaded": ["pymodbus"]}


def test_dead_letter_keeps_what_describe_gives(tmp_path: Path) -> None:
    service = StoreService(lambda: Store(tmp_path / "buffer.db"))
    pipe = DriverIngest("S", [_scanner("scan-01")], Committer(service), "mqtt").device("scan-01")
    letter = pipe.recognize(Signal("scan-01", "read", _Unprintable(), 1.8e9),
                            (b"raw", {"topic": "scan/scan-01", "qos": 1}))
    assert len(letter) == 1 and isinstance(letter[0], IngestDeadLetter)
    assert letter[0].payload == b"raw" and letter[0].context == {"topic": "scan/scan-01",
                                                                 "qos": 1}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_drivers_speak_protocols_only() -> None:
    allowed = ("drivers", "gateway.core", "gateway.transport")
    ours = ("drivers", "gateway", "buffer", "simulators", "bench")
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "drivers").rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in ours
        and not any(name == a or name.startswith(a + ".") for a in allowed)
    }
    assert wrong == set()
