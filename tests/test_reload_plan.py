"""What a reload applies live and what it says needs a restart, key by key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, parse_config
from gateway.reload import plan


def _cfg(tmp_path: Path, extra_sinks: tuple[dict[str, Any], ...] = (), **changes: Any
         ) -> GatewayConfig:
    doc: dict[str, Any] = {
        "site": {"id": "DC-1"}, "store": {"path": "buffer.db"},
        "brokers": [{"id": "site", "host": "127.0.0.1"}],
        "sinks": [{"id": "wms", "type": "http", "url": "http://127.0.0.1:9/e"},
                  {"id": "out", "type": "mqtt", "broker": "site"}],
        "log": {"level": "info"},
    }
    doc["sinks"] += list(extra_sinks)
    for path, value in changes.items():
        table, key = path.split("__")
        if table == "wms":
            doc["sinks"][0][key] = value
        elif table == "out":
            doc["sinks"][1][key] = value
        else:
            doc.setdefault(table, {})[key] = value
    return parse_config(doc, tmp_path / "gateway.toml")


def test_live_and_restart_keys(tmp_path: Path) -> None:
    old = _cfg(tmp_path)
    new = _cfg(tmp_path, log__level="debug", wms__headers={"X-Site": "1"},
               wms__backoff_max="5s", out__prefix="x",
               status__port=9999, store__max_bytes="1 GiB")
    applied, restart = plan(old, new)
    assert sorted(applied) == ["log.level", "sinks[wms].backoff_max",
                               "sinks[wms].headers.X-Site"]
    assert sorted(restart) == ["sinks[out].prefix", "status.port", "store.max_bytes"]


def test_a_sink_waiting_for_a_restart_keeps_its_whole_old_table(tmp_path: Path) -> None:
    """A new header (or token file) must not go to the old URL until the restart."""
    old = _cfg(tmp_path)
    new = _cfg(tmp_path, log__level="debug", wms__headers={"X-Site": "1"},
               wms__url="http://127.0.0.1:9/v2")
    applied, restart = plan(old, new)
    assert applied == ["log.level"]
    assert sorted(restart) == ["sinks[wms].headers.X-Site", "sinks[wms].url"]


def test_an_added_sink_needs_a_restart(tmp_path: Path) -> None:
    old = _cfg(tmp_path)
    new = _cfg(tmp_path, ({"id": "erp", "type": "http", "url": "http://127.0.0.1:9/erp"},))
    assert plan(old, new) == ([], ["sinks[erp]"])
    assert plan(old, old) == ([], [])
