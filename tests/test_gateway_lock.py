"""One gateway per store: the second process on a store exits at once (exit code 3)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import connect_fleet, publish, site, start, wait_until

from buffer.lock import StoreLock, StoreLocked, lock_path_for
from gateway.cli import EXIT_STORE_LOCKED
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.wms import WmsSimulator

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_lock_names_the_holder_and_is_released(tmp_path: Path) -> None:
    store = tmp_path / "data" / "buffer.db"
    first = StoreLock(store)
    first.acquire()
    assert lock_path_for(store) == tmp_path / "data" / "buffer.db.lock"
    assert first.path.read_text().strip() == str(os.getpid())
    second = StoreLock(store)
    with pytest.raises(StoreLocked) as err:
        second.acquire()
    assert err.value.pid == os.getpid()
    assert str(store) in str(err.value) and f"PID {os.getpid()}" in str(err.value)
    assert not second.held
    first.release()
    second.acquire()  # free again once released
    assert second.held
    second.release()


async def test_second_gateway_on_one_store_exits_naming_the_holder(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    cfg = site(tmp_path, broker, wms, scanners=2)
    store = cfg.workdir / "buffer.db"
    with GatewayProcess(cfg) as first:
        await start(first)
        assert first.proc is not None
        fleet = connect_fleet(broker, count=2)
        await publish(fleet, 200)
        await wait_until(lambda: wms.stats()["unique"] >= 200, 20, "200 events at the WMS")

        # Same store, its own status port: refused before touching store or broker.
        other = dataclasses.replace(cfg, status_port=0)
        with GatewayProcess(other, name="second") as second:
            second.start(wait_ready=False)
            assert second.proc is not None
            code = await asyncio.to_thread(second.proc.wait, 10)
            assert code == EXIT_STORE_LOCKED == 3
            out = [ln for ln in second.log_path.read_text().splitlines() if ln.strip()]
            assert len(out) == 1, out
            assert f"PID {first.proc.pid}" in out[0]
            assert str(store) in out[0]
            assert out[0].startswith("error: store ")

        # The first one is unaffected and keeps delivering.
        await publish(fleet, 200)
        fleet.close()
        await wait_until(lambda: wms.stats()["unique"] >= 400, 20, "400 events at the WMS")
        assert first.proc.poll() is None
        assert wms.stats()["duplicates"] == 0
        assert not first.log_events("gateway_failed")

        # Operator commands do not take the lock.
        stats = await asyncio.to_thread(cli, "store", "stats", "--db", str(store))
        assert stats.returncode == 0, stats.stderr
        assert "events" in json.loads(stats.stdout)
        stats = await asyncio.to_thread(cli, "store", "stats", "--config",
                                        str(first.config_path))
        assert stats.returncode == 0, stats.stderr
        assert lock_path_for(store).read_text().strip() == str(first.proc.pid)
        assert await asyncio.to_thread(first.stop) == 0

    # Once the first has stopped, the store is free for the next gateway.
    with GatewayProcess(dataclasses.replace(cfg, status_port=0), name="third") as third:
        await start(third)
        assert await asyncio.to_thread(third.stop) == 0
