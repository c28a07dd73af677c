"""Helpers for end-to-end tests that run the gateway as a real process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.scanners import PublishedRead, ScannerFleet
from simulators.wms import WmsSimulator


async def wait_until(cond: Callable[[], bool], timeout: float, what: str,  # noqa: ASYNC109
                     interval: float = 0.1) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def site(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator | None,
         **kw: Any) -> GatewaySetup:
    """A gateway config for this test's broker and WMS."""
    return GatewaySetup(workdir=tmp_path / "gw", broker_port=broker.port,
                      wms_url=wms.url if wms is not None else None, **kw)


async def start(gw: GatewayProcess) -> None:
    """Start the gateway process without blocking the test's event loop."""
    await asyncio.to_thread(gw.start)


async def publish(fleet: ScannerFleet, total: int, rate: float | None = None
                  ) -> list[PublishedRead]:
    """Publish scanner reads from a worker thread."""
    return await asyncio.to_thread(fleet.publish, total, rate)


def connect_fleet(broker: MosquittoBroker, **kw: Any) -> ScannerFleet:
    """A connected scanner fleet."""
    fleet = ScannerFleet(broker.host, broker.port, **kw)
    fleet.connect()
    return fleet


def wms_ids(wms: WmsSimulator) -> set[str]:
    """Event ids the WMS accepted."""
    return wms.accepted_ids()


def read_ids_by_scanner(wms: WmsSimulator) -> dict[str, list[int]]:
    """Read ids per scanner in the order the WMS accepted them."""
    out: dict[str, list[int]] = {}
    for rec in wms.events:
        ev = rec["event"]
        if ev["type"] == "scan":
            out.setdefault(ev["device"], []).append(int(ev["data"]["read_id"]))
    return out
