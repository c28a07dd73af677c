"""A broker crash (SIGKILL) while it holds the gateway's backlog loses nothing it had saved.

Real Mosquitto with the project's configuration (persistence, autosave every
second), a real gateway process with its persistent session, real QoS 1
scanner reads, the WMS simulator.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from e2e import connect_fleet, delivered, publish, site, start, wait_until

from gateway.core.events import make_event_id, parse_time
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.scanners import PublishedRead
from simulators.wms import WmsSimulator

SITE = "DC-EAST-1"


def event_ids(reads: list[PublishedRead]) -> set[str]:
    """The event ids the gateway derives from these (plain, single) reads."""
    return {make_event_id(SITE, r.scanner,
                          f"read:{r.read_id}@{round(parse_time(r.timestamp) * 1000)}")
            for r in reads}


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


async def wait_for_saves_after_now(broker: MosquittoBroker, saves: int = 2,
                                   timeout: float = 15.0) -> None:  # noqa: ASYNC109
    """Wait until the broker has written its database ``saves`` more times.

    The first save seen may have started before now; the second one started
    after the first ended, so it holds everything acknowledged before now.
    """
    last, seen = _mtime(broker.persistence_file), 0

    async def saved() -> bool:
        nonlocal last, seen
        now = await asyncio.to_thread(_mtime, broker.persistence_file)
        if now != last:
            last, seen = now, seen + 1
        return seen >= saves

    await wait_until(saved, timeout, f"the broker to save its database {saves} times", 0.05,
                     state=lambda: f"{seen} saves seen")


async def _crash_with_backlog(tmp_path: Path, wms: WmsSimulator, total: int) -> None:
    broker = MosquittoBroker(tmp_path / "mosquitto")
    await asyncio.to_thread(broker.start)
    try:
        with GatewayProcess(site(tmp_path, broker, wms)) as gw:
            # Create the gateway's persistent session and subscriptions, then stop it.
            await start(gw)
            assert await asyncio.to_thread(gw.stop) == 0
            # Reads the broker acknowledges (PUBACK) and queues for the stopped gateway.
            fleet = connect_fleet(broker, count=4)
            reads = await publish(fleet, total)
            fleet.close()
            assert len(reads) == total and {r.kind for r in reads} == {"read"}
            await wait_for_saves_after_now(broker)
            pid, port = broker.pid, broker.port
            await asyncio.to_thread(broker.kill)
            # Same port, same persistence directory: the broker restores the session.
            await asyncio.to_thread(broker.restart)
            assert broker.pid is not None and broker.pid != pid and broker.port == port
            await start(gw)
            connected = gw.log_events("mqtt_connected")
            assert connected[-1]["session_present"] is True, connected[-1]
            want = event_ids(reads)
            await wait_until(lambda: wms.stats()["unique"] >= total, 30,
                             f"{total} reads at the WMS")
            await delivered(gw)  # nothing left to send: anything extra would be here
            stats = wms.stats()
            assert wms.accepted_ids() == want, (
                f"{len(want - wms.accepted_ids())} reads lost, "
                f"{len(wms.accepted_ids() - want)} phantom events")
            assert stats["unique"] == total
            assert stats["duplicates"] == 0
    finally:
        await asyncio.to_thread(broker.stop)


async def test_broker_sigkill_with_a_queued_backlog_loses_no_acknowledged_read(
        tmp_path: Path, wms: WmsSimulator) -> None:
    await _crash_with_backlog(tmp_path, wms, total=3000)


@pytest.mark.soak
async def test_soak_broker_sigkill_with_a_large_queued_backlog(
        tmp_path: Path, wms: WmsSimulator) -> None:
    await _crash_with_backlog(tmp_path, wms, total=30_000)
