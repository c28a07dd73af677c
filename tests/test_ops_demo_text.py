"""What the demo prints: the "try this" block and the closing line (pure functions of
where the demo's parts listen), and its status token file."""

from __future__ import annotations

import stat
from pathlib import Path

from gateway.ops.auth import parse_tokens
from gateway.ops.demo_text import (
    DemoSite,
    closing_line,
    device_kind,
    try_this,
    write_demo_token,
)


def test_try_this_names_every_url_and_ready_commands(tmp_path: Path) -> None:
    site = DemoSite(status="http://127.0.0.1:8080", token="TKN", config=tmp_path / "gw.toml",
                    wms_ingest="http://127.0.0.1:9001/api/events",
                    wms_control="http://127.0.0.1:9002", broker="mqtt://127.0.0.1:1883",
                    events_topic="wh/S/events/#", site_control="http://127.0.0.1:9100",
                    ledger=tmp_path / "ledger.jsonl",
                    devices={"conveyor-01": "conveyor", "sorter-1": "sorter",
                             "pack-01": "pack_station", "pack-02": "pack_station",
                             "amr-fleet": "amr"},
                    modbus_port=502, opcua_port=4840)
    text = "\n".join(try_this(site))
    for url in ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/api/status",
                "http://127.0.0.1:8080/metrics", "http://127.0.0.1:8080/api/dead-letters",
                "http://127.0.0.1:8080/api/reconciliation", "http://127.0.0.1:8080/api/audit",
                "http://127.0.0.1:9001/api/events", "stats: http://127.0.0.1:9002/stats",
                "http://127.0.0.1:9002/control/faults", "http://127.0.0.1:9100/state",
                "http://127.0.0.1:9100/ledger", "opc.tcp://127.0.0.1:4840/",
                "mqtt://127.0.0.1:1883", "127.0.0.1:502", str(tmp_path / "ledger.jsonl")):
        assert url in text, url
    assert "status token     TKN" in text
    assert "devices          5: 1 amr, 1 conveyor, 2 pack_station, 1 sorter" in text
    # The ready commands: WMS down, the site's faults, rejects of codes ending in 5, a replay.
    assert "curl -s -X POST http://127.0.0.1:9002/control/outage -d '{\"seconds\": 60}'" in text
    for fault in ("jam", "no_read", "chute_full", "short_pick", "overweight", "amr_estop"):
        assert f"curl -s -X POST http://127.0.0.1:9100/faults/{fault} -d '{{" in text, fault
    assert "http://127.0.0.1:9100/faults/jam -d '{\"zone\": 2, \"seconds\": 30}'" in text
    assert ("-d '{\"reject_pattern\": \"5$\", \"reject_field\": \"data.code\"}'") in text
    assert ("-H 'Authorization: Bearer TKN' http://127.0.0.1:8080/api/dead-letters/replay"
            in text)
    assert f"warehouse-gateway report --config {tmp_path / 'gw.toml'}" in text
    # Without the site's control API or a token, their lines are left out rather than wrong.
    bare = "\n".join(try_this(DemoSite(status="http://h:1", token=None, config=tmp_path / "c",
                                       wms_ingest="i", wms_control="http://c:2", broker="b",
                                       events_topic="t")))
    assert "/faults/" not in bare and "Bearer" not in bare
    assert "status token     " not in bare and "devices   " not in bare


def test_device_kind_is_the_role_else_the_driver() -> None:
    assert device_kind("conveyor", "modbus") == "conveyor"
    assert device_kind(None, "vda5050") == "amr"
    assert device_kind(None, "mqtt") == "mqtt"


def test_closing_line_counts_events_per_device_kind() -> None:
    kinds = {"scan-01": "scanner", "scan-02": "scanner", "conveyor-01": "conveyor",
             "sorter-1": "sorter", "amr-fleet": "amr"}
    devices = ["scan-01"] * 5 + ["scan-02"] * 2 + ["conveyor-01"] * 9 + ["amr-fleet"] + ["x"]
    assert closing_line(18, 1, devices, kinds) == (
        "demo stopped: WMS accepted 18 unique events (1 duplicates): 9 from conveyors, "
        "7 from scanners, 1 from amrs, 1 from others")
    assert closing_line(0, 0, [], kinds).endswith(": none")


def test_demo_token_file_is_private_and_named(tmp_path: Path) -> None:
    path, token = write_demo_token(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_tokens(path.read_text()) == [("demo", token)]
    assert len(token) >= 16
