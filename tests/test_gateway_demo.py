"""``warehouse-gateway demo``: the README's first command brings up the whole site.

Runs the demo as a real process (Mosquitto, the WMS simulator, the simulated
site with its put walls, Modbus conveyor, OPC UA induct reader and sorter,
pack stations and VDA 5050 AMRs, and the gateway reading every device of
``site_devices``) and checks that every device is connected and each kind's
events reach the WMS; then Ctrl-C lets the orders in flight finish, prints the
truth check of the site's ledger against the WMS (clean) and the closing line.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

from demo import DemoProcess, get_json
from waiting import wait_until_sync

from gateway.ops.demo_text import device_kind
from simulators.site import SiteLayout, site_devices

ORDERS = 6


def test_demo_runs_the_whole_site_into_the_wms(tmp_path: Path) -> None:
    proc = DemoProcess(tmp_path, "--orders", str(ORDERS), "--order-rate", "2", "--verify",
                       "--duration", "240")
    out_path = proc.out
    status_port = proc.status_port
    try:
        proc.start()
        control, site_control = proc.wms_control, proc.site_control
        status = f"http://127.0.0.1:{status_port}/api/status"

        def all_connected() -> dict[str, Any] | None:
            devices: dict[str, Any] = get_json(status)["devices"]
            return devices if devices and all(d.get("connected") for d in devices.values()) \
                else None

        devices = wait_until_sync(all_connected, 30, "every demo device connected", 0.3,
                                  ignore=(OSError,))
        # The gateway reads exactly the site's devices, whatever the site holds.
        site = site_devices(SiteLayout(), modbus_port=1, opcua_port=1)
        assert set(devices) == {d["id"] for d in site}
        assert {d["driver"] for d in devices.values()} == {"mqtt", "modbus", "opcua", "vda5050"}

        def complete() -> set[tuple[str, str]] | None:
            page = get_json(f"{control}/events?limit=10000")["events"]
            got = {(r["event"]["device"], r["event"]["type"]) for r in page}
            want = {("conveyor-01", "move"), ("sorter-1", "scan"), ("sorter-1", "move"),
                    ("amr-fleet", "move")}
            every_device = set(devices) <= {dev for dev, _ in got}
            # The put walls book picks and the pack benches packs.
            booked = {"pick", "pack"} <= {t for _, t in got}
            return got if want <= got and every_device and booked else None

        got = wait_until_sync(complete, 90, "events of every device at the WMS", 0.5,
                              ignore=(OSError,))
        assert not {t for _, t in got} - {"scan", "pick", "pack", "move", "exception"}
        assert ("amr-fleet", "pick") not in got  # loading a carton is not an inventory pick
        # The demo classifies the site's codes: a tote is one container on every device.
        events = [r["event"] for r in get_json(f"{control}/events?limit=10000")["events"]]
        tote_scans = [e for e in events
                      if e["type"] == "scan" and e["data"]["code"].startswith("TOTE-")]
        assert tote_scans
        for e in tote_scans:
            assert e["data"]["code_kind"] == "container", e
            assert e["correlation_id"] == f"container:{e['data']['code']}", e
        state = get_json(f"{site_control}/state")
        assert state["orders"] >= 1 and state["ledger_entries"] > 0

        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        sample = re.compile(r'^wh_[a-z_]+(\{[^{}]*\})? -?[0-9][0-9.e+-]*$')
        bad = [line for line in metrics.splitlines()
               if line and not line.startswith("#") and not sample.match(line)]
        assert bad == [], bad
        for dev in devices:
            assert f'wh_device_messages_total{{device="{dev}"}}' in metrics
        wait_until_sync(lambda: get_json(f"{site_control}/state")["orders"] >= ORDERS, 60,
                        "every order made", 0.5, ignore=(OSError,))
    finally:
        # Ctrl-C, as an operator at the terminal would stop it.
        code = proc.stop(200, sig=signal.SIGINT, raise_on_kill=True)
    text = out_path.read_text("utf-8", errors="replace")
    assert "Traceback" not in text
    (line,) = [x for x in text.splitlines() if x.startswith("truth check: ")]
    report = json.loads(line.removeprefix("truth check: "))
    summary = {k: report[k] for k in ("missing", "phantom", "wrong_fields", "out_of_order")}
    assert report["ok"], summary
    assert report["delivered"] == report["expected"] > 0
    assert code == 0, text[-3000:]
    closing = re.search(r"demo stopped: WMS accepted (\d+) unique events \(0 duplicates\): (.*)",
                        text)
    assert closing, text[-2000:]
    assert int(closing.group(1)) >= report["delivered"]
    for kind in {device_kind(d.get("role"), d["driver"]) for d in site}:
        assert re.search(rf"\d+ from {kind}s", closing.group(2)), closing.group(2)
