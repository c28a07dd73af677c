"""The watchdog pings only while the gateway makes progress (a real NOTIFY_SOCKET).

The gateway runs in this test's event loop, so the test can wedge that loop
(a blocking call, as a bug would) and block the store's thread (as a disk
that stops answering would). A WMS outage is not a reason to be restarted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e import connect_fleet, publish, read_ids_by_scanner, site, wait_until
from notifysock import NotifySocket, longest_gap

from gateway.app import Gateway
from gateway.config import load_config
from simulators.broker import MosquittoBroker
from simulators.wms import WmsSimulator

INTERVAL_S = 2.0  # WATCHDOG_USEC: pings every second


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> NotifySocket:
    sock = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", sock.name)
    monkeypatch.setenv("WATCHDOG_USEC", str(int(INTERVAL_S * 1e6)))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return sock


@pytest.fixture
async def gateway(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator,
                  notify: NotifySocket) -> AsyncIterator[Gateway]:
    setup = site(tmp_path, broker, wms)
    path = tmp_path / "gateway.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(setup.render(), encoding="utf-8")
    gw = Gateway(load_config(path), config_path=path)
    task = asyncio.create_task(gw.run(install_signals=False))
    await wait_until(gw.ready.is_set, 20, "the gateway to be ready")
    try:
        yield gw
    finally:
        gw.stop()
        await asyncio.wait_for(task, 30)
        notify.close()


async def _reads(broker: MosquittoBroker, n: int) -> None:
    fleet = connect_fleet(broker, client_id=f"scanners-{time.monotonic_ns()}")
    try:
        await publish(fleet, n)
    finally:
        fleet.close()


async def test_healthy_pings_and_a_wedged_loop_stops_them(
        gateway: Gateway, notify: NotifySocket, broker: MosquittoBroker) -> None:
    start = time.monotonic()
    await _reads(broker, 20)
    await asyncio.sleep(3.5)
    healthy = notify.pings(start)
    assert len(healthy) >= 3, healthy
    assert longest_gap(healthy, start + 1.0, time.monotonic()) < INTERVAL_S
    assert gateway.watchdog is not None and gateway.watchdog.stops == []

    wedged_at = time.monotonic()
    time.sleep(3.0)  # noqa: ASYNC251 - the bug under test: a blocking call on the loop
    await asyncio.sleep(2.5)
    gap = longest_gap(notify.pings(wedged_at - 1.0), wedged_at, time.monotonic())
    assert gap >= 3.0  # nothing while the loop was blocked
    assert any("event loop was blocked" in r for r in gateway.watchdog.stops)
    # The loop turns again: so do the pings.
    assert notify.pings(wedged_at + 3.5)


async def test_a_stuck_committer_stops_the_pings_and_loses_nothing(
        gateway: Gateway, notify: NotifySocket, broker: MosquittoBroker,
        wms: WmsSimulator) -> None:
    release = threading.Event()
    blocked = asyncio.create_task(gateway.service.call(release.wait, 60))  # the store thread
    try:
        stuck_at = time.monotonic()
        await _reads(broker, 8)
        await wait_until(lambda: gateway.watchdog is not None and gateway.watchdog.stops,
                         15, "the watchdog to stop pinging")
        assert gateway.watchdog is not None
        assert "store committer is stuck" in gateway.watchdog.stops[0]
        assert gateway.committer.pending > 0
        stopped = time.monotonic()
        await asyncio.sleep(2.5)
        assert notify.pings(stopped + 0.1) == []  # none while it stays stuck
    finally:
        release.set()
        await blocked
    await wait_until(lambda: notify.pings(time.monotonic() - 0.5), 10, "pings to resume")
    await wait_until(lambda: sum(map(len, read_ids_by_scanner(wms).values())) == 8, 20,
                     "the 8 reads at the WMS")
    assert stuck_at < stopped


async def test_a_wms_outage_does_not_stop_the_pings(
        gateway: Gateway, notify: NotifySocket, broker: MosquittoBroker,
        wms: WmsSimulator) -> None:
    await wms.set_outage(True)
    start = time.monotonic()
    await _reads(broker, 12)

    def backing_off() -> bool:
        sink = gateway.snapshot().sinks["wms"]
        return sink.state in ("backoff", "failing") and (sink.backlog_events or 0) > 0

    await wait_until(backing_off, 15, "the WMS sink backing off with a backlog")
    await asyncio.sleep(3 * INTERVAL_S)
    pings = notify.pings(start)
    assert longest_gap(pings, start + 1.0, time.monotonic()) < INTERVAL_S, pings
    assert gateway.watchdog is not None and gateway.watchdog.stops == []
    await wms.set_outage(False)
    await wait_until(lambda: sum(map(len, read_ids_by_scanner(wms).values())) == 12, 30,
                     "the 12 reads at the WMS once it is back")
