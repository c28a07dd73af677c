"""Helpers for end-to-end tests that run the gateway as a real process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from waiting import wait_until

from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.scanners import PublishedRead, ScannerFleet
from simulators.wms import WmsSimulator

__all__ = ["connect_fleet", "delivered", "publish", "read_ids_by_scanner", "site", "start",
           "wait_until", "wms_ids"]


def site(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator | None,
         **kw: Any) -> GatewaySetup:
    """A gateway config for this test's broker and WMS."""
    return GatewaySetup(workdir=tmp_path / "gw", broker_port=broker.port,
                      wms_url=wms.url if wms is not None else None, **kw)


async def start(gw: GatewayProcess) -> None:
    """Start the gateway process without blocking the test's event loop."""
    await asyncio.to_thread(gw.start)


async def delivered(gw: GatewayProcess, sink: str = "wms", timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Wait until the gateway has nothing left to send to ``sink``.

    The positive signal that replaces "sleep, then check nothing extra came":
    with the sink's backlog empty (every stored event acknowledged) no late
    retry, duplicate or phantom can still be on its way to the WMS.
    """
    def empty() -> bool:
        return gw.status()["sinks"][sink]["backlog_events"] == 0

    await wait_until(empty, timeout, f"the gateway's backlog for sink {sink} to empty", 0.2)


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


def alert_messages(status: dict[str, Any]) -> list[str]:
    """The messages of ``/api/status`` → ``alerts``."""
    return [a["message"] for a in status["alerts"]]
