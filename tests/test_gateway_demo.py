"""``warehouse-gateway demo``: the README's first command brings up a whole site.

Runs the demo as a real process (Mosquitto, WMS, scanners, conveyor PLCs over
Modbus, the OPC UA sorter, VDA 5050 AMRs and the gateway) and checks that every
kind of device is connected and its events reach the WMS, then that Ctrl-C
stops everything cleanly.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

from waiting import wait_until_sync

from simulators.broker import free_port
from simulators.harness.process import ChildProcess, python_module


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_demo_runs_every_device_kind_into_the_wms(tmp_path: Path) -> None:
    status_port = free_port()
    out_path = tmp_path / "demo.out"
    proc = ChildProcess("demo", python_module(
        "gateway", "demo", "--status-port", str(status_port), "--data-dir",
        str(tmp_path / "site"), "--amrs", "3", "--duration", "120"), out_path)
    proc.start()
    try:
        banner = wait_until_sync(
            lambda: re.search(r"stats: http://127\.0\.0\.1:(\d+)/stats",
                              out_path.read_text("utf-8", errors="replace")),
            60, "the demo banner", 0.3, ignore=(OSError,))
        control = f"http://127.0.0.1:{banner.group(1)}"
        status = f"http://127.0.0.1:{status_port}/api/status"

        def all_connected() -> dict[str, Any] | None:
            devices: dict[str, Any] = _get(status)["devices"]
            return devices if devices and all(d.get("connected") for d in devices.values()) \
                else None

        devices = wait_until_sync(all_connected, 30, "every demo device connected", 0.3,
                                  ignore=(OSError,))
        drivers = {d["driver"] for d in devices.values()}
        assert drivers == {"mqtt", "modbus", "opcua", "vda5050"}

        def seen() -> set[tuple[str, str]]:
            page = _get(f"{control}/events?limit=10000")["events"]
            return {(r["event"]["device"], r["event"]["type"]) for r in page}

        def complete() -> set[tuple[str, str]] | None:
            got = seen()
            want = {("scan-01", "scan"), ("conveyor-01", "move"), ("sorter-1", "move"),
                    ("amr-fleet", "move")}
            return got if want <= got else None

        got = wait_until_sync(complete, 60,
                              "scan, conveyor move, sorter move and AMR move at the WMS",
                              0.3, ignore=(OSError,))
        assert ("amr-fleet", "device_status") not in got  # telemetry is not routed to the WMS
        assert ("amr-fleet", "pick") not in got  # loading a tote is not an inventory pick

        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        sample = re.compile(r'^wh_[a-z_]+(\{[^{}]*\})? -?[0-9][0-9.e+-]*$')
        bad = [line for line in metrics.splitlines()
               if line and not line.startswith("#") and not sample.match(line)]
        assert bad == [], bad
        for dev in devices:
            assert f'wh_device_messages_total{{device="{dev}"}}' in metrics
    finally:
        # Ctrl-C, as an operator at the terminal would stop it.
        code = proc.stop(60, sig=signal.SIGINT, raise_on_kill=True)
    text = out_path.read_text("utf-8", errors="replace")
    assert code == 0, text[-3000:]
    assert "demo stopped: WMS accepted" in text
    assert "Traceback" not in text
