"""``systemctl reload`` (SIGHUP) on the real gateway process.

A valid new config applies its live keys at once (an HTTP sink's token file,
the log level) and names the keys that need a restart; a bad one is rejected
with its problems logged and the running config keeps working. Nothing
accepted before, during or after a reload is lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from e2e import connect_fleet, publish, read_ids_by_scanner, site, start, wait_until
from notifysock import NotifySocket

from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.harness.toml import render_toml
from simulators.wms import WmsSimulator


def _at_wms(wms: WmsSimulator) -> int:
    return sum(map(len, read_ids_by_scanner(wms).values()))


async def test_reload_applies_live_keys_names_restart_keys_and_rejects_a_bad_config(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    (tmp_path / "alpha.token").write_text("alpha\n")
    (tmp_path / "beta.token").write_text("beta\n")
    wms.faults.token = "beta"
    setup = site(tmp_path, broker, wms, token_file=tmp_path / "alpha.token")
    gw = GatewayProcess(setup)
    with NotifySocket() as sock:
        gw.env = {**os.environ, "NOTIFY_SOCKET": sock.name}
        await start(gw)
        fleet = connect_fleet(broker)
        try:
            await publish(fleet, 10)
            await wait_until(lambda: gw.status()["sinks"]["wms"]["state"] == "paused_auth",
                             20, "the sink paused on the wrong token")
            assert _at_wms(wms) == 0

            assert '"level": "debug"' not in gw.log_text()  # log.level is info
            doc = setup.document()
            doc["sinks"][0]["token_file"] = tmp_path / "beta.token"
            doc["log"]["level"] = "debug"
            doc["store"]["max_bytes"] = "2 GiB"
            gw.config_path.write_text(render_toml(doc), encoding="utf-8")
            os.kill(gw.pid, signal.SIGHUP)
            done = await asyncio.to_thread(gw.wait_for_log_event, "config_reloaded", 20)
            assert "sinks[wms].token_file" in done["applied"]
            assert "log.level" in done["applied"]
            assert done["needs_restart"] == ["store.max_bytes"]
            needs = gw.log_events("config_reload_needs_restart")
            assert len(needs) == 1 and needs[0]["keys"] == ["store.max_bytes"]
            await wait_until(lambda: _at_wms(wms) == 10, 30, "the 10 held reads at the WMS")
            reloading = sock.with_key("RELOADING")
            assert reloading and int(reloading[0][1]["MONOTONIC_USEC"]) > 0
            await wait_until(lambda: len(sock.with_key("READY")) >= 2, 10, "READY=1 again")
            assert "restart needed to apply: store.max_bytes" in sock.with_key("READY")[-1][1][
                "STATUS"]

            doc["sinks"][0]["batch_max"] = 0
            gw.config_path.write_text(render_toml(doc), encoding="utf-8")
            os.kill(gw.pid, signal.SIGHUP)
            bad = await asyncio.to_thread(gw.wait_for_log_event, "config_reload_rejected", 20)
            assert any(p.startswith("sinks[0].batch_max:") for p in bad["problems"]), bad
            await wait_until(lambda: len(sock.with_key("READY")) >= 3, 10, "READY=1 again")
            assert "REJECTED" in sock.with_key("READY")[-1][1]["STATUS"]

            # The running config still works, token, log level and all: during an
            # outage the sink's retries are logged at debug level.
            await wms.set_outage(True)
            await publish(fleet, 5)
            retry = await asyncio.to_thread(gw.wait_for_log_event, "sink_retry", 20)
            assert retry["level"] == "debug"
            await wms.set_outage(False)
            await wait_until(lambda: _at_wms(wms) == 15, 30, "the 5 new reads at the WMS")
        finally:
            fleet.close()
            assert gw.stop() == 0
    for ids in read_ids_by_scanner(wms).values():
        assert len(ids) == len(set(ids))  # each read once
