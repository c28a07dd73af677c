"""OpcuaDriver against servers that keep no event history, over loopback.

The server is an asyncua server written here: an object that fires
divert-confirm events (``SubscribeToEvents`` only, no ``HistoryRead`` bit)
and a history service that answers every read with a fixed status — what
third-party servers without event history do. The driver runs in the test's
event loop with a real ``Store``/``Committer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from asyncua import ua
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes
from e2e import wait_until

from buffer.service import Committer, StoreService
from buffer.store import Store
from drivers.opcua.config import OpcuaDevice
from drivers.opcua.driver import OpcuaDriver
from drivers.opcua.history import NoEventHistory, no_history_status
from gateway.build import driver_context
from simulators.broker import free_port

SITE = "S"
DEVICE = "sorter-1"
#: How long the driver is watched for flapping (sessions re-opened).
OBSERVE_S = 5.0
_PROPS = [("TrackingId", ua.VariantType.String), ("ConfirmSeq", ua.VariantType.Int64),
          ("Barcode", ua.VariantType.String), ("Induct", ua.VariantType.String),
          ("Chute", ua.VariantType.String), ("Result", ua.VariantType.String)]


def _nid(idx: int, name: str) -> ua.NodeId:
    return ua.NodeId.from_string(f"ns={idx};s={name}")


class NoHistoryServer:
    """A sorter-like server whose event history read always answers ``status``."""

    def __init__(self, status: int) -> None:
        self.port = free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/"
        self.status = status
        self.server = Server()
        self.sessions = 0
        self.history_reads = 0
        self.fired = 0
        self._gen: Any = None

    async def start(self) -> None:
        """Build the address space and listen."""
        srv = self.server
        await srv.init()
        srv.set_endpoint(self.endpoint)
        idx = await srv.register_namespace("urn:warehouse-gateway:test:no-history")
        assert idx == 2
        etype = await srv.nodes.base_event_type.add_object_type(
            _nid(idx, "DivertConfirmEventType"), "DivertConfirmEventType")
        for prop, vtype in _PROPS:
            await etype.add_property(_nid(idx, f"DivertConfirmEventType.{prop}"), prop,
                                     ua.get_default_value(vtype), varianttype=vtype)
        sorter = await srv.nodes.objects.add_object(_nid(idx, "Sorter"), "Sorter")
        # Events can be subscribed to, but the notifier is not historized.
        await sorter.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
        self._gen = await srv.get_event_generator(etype, sorter.nodeid)
        srv.iserver.history_manager.read_history = self._read_history  # type: ignore[method-assign]
        create = srv.iserver.create_session

        def counted(*args: Any, **kwargs: Any) -> InternalSession:
            if kwargs.get("external"):
                self.sessions += 1
            return create(*args, **kwargs)

        srv.iserver.create_session = counted  # type: ignore[method-assign]
        await srv.start()

    async def stop(self) -> None:
        """Stop listening."""
        await self.server.stop()

    async def _read_history(self, params: ua.HistoryReadParameters
                            ) -> list[ua.HistoryReadResult]:
        self.history_reads += 1
        return [ua.HistoryReadResult(StatusCode=ua.StatusCode(ua.UInt32(self.status)))
                for _ in params.NodesToRead]

    async def fire(self) -> None:
        """One divert confirm (a new tracking id each time)."""
        self.fired += 1
        gen = self._gen
        ev = gen.event
        ev.TrackingId = f"T{self.fired:05d}"
        ev.ConfirmSeq = 1
        ev.Barcode = f"TOTE{self.fired:05d}"
        ev.Induct = "INDUCT-1"
        ev.Chute = "CHUTE-01"
        ev.Result = "diverted"
        await gen.trigger(time_attr=datetime.now(UTC))


class Harness:
    """A store, its committer and one OPC UA driver."""

    def __init__(self, tmp: Path, endpoint: str, **extra: Any) -> None:
        self.service = StoreService(lambda: Store(tmp / "buffer.db", synchronous="NORMAL"))
        self.committer = Committer(self.service)
        raw = {"id": DEVICE, "driver": "opcua", "endpoint": endpoint, "role": "sorter",
               "induct": "INDUCT-1", "backoff_initial": "100ms", "backoff_max": "1s",
               "events": [{"kind": "divert_confirm", "source": "ns=2;s=Sorter",
                           "type": "ns=2;s=DivertConfirmEventType"}]} | extra
        self.device = OpcuaDevice.model_validate(raw)
        self.driver = OpcuaDriver(driver_context(SITE, [self.device], self.committer))
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        store = await self.service.open()
        await self.service.call(store.register_sinks, ["t"])
        self.tasks.append(asyncio.create_task(self.committer.run()))
        self.tasks.append(asyncio.create_task(self.driver.run()))

    async def stop(self) -> None:
        for t in reversed(self.tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.service.close()

    async def events(self) -> list[dict[str, Any]]:
        rows, _ = await self.service.read("t", 0, 100_000, None)
        return [json.loads(r.body) for r in rows]


@pytest.fixture
async def no_history() -> AsyncIterator[NoHistoryServer]:
    server = NoHistoryServer(StatusCodes.BadHistoryOperationInvalid)
    await server.start()
    yield server
    await server.stop()


def logged(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def test_server_without_event_history_runs_live_only_without_flapping(
        tmp_path: Path, no_history: NoHistoryServer) -> None:
    h = Harness(tmp_path, no_history.endpoint)
    drv = h.driver
    try:
        with structlog.testing.capture_logs() as logs:
            await h.start()
            await wait_until(lambda: drv.availability.available, 10, "first session")
            await wait_until(lambda: no_history.history_reads >= 1, 10, "the history read")
            loop = asyncio.get_running_loop()
            until = loop.time() + OBSERVE_S
            while loop.time() < until:  # live events all along the watch
                await no_history.fire()
                await asyncio.sleep(0.1)
            fired = no_history.fired

            async def moves() -> set[str]:
                return {e["data"]["tracking_id"] for e in await h.events()
                        if e["type"] == "move"}

            deadline = time.monotonic() + 10
            while len(await moves()) < fired and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await moves() == {f"T{i:05d}" for i in range(1, fired + 1)}
        assert no_history.sessions == 1, "the driver re-opened its session"
        assert drv.sessions == 1
        assert no_history.history_reads == 1, "history asked for again"
        assert len(logged(logs, "device_connected")) == 1
        assert logged(logs, "device_available") == []
        assert logged(logs, "device_unavailable") == []
        off = logged(logs, "opcua_history_unavailable")
        assert [(e["device"], e["source"], e["status"]) for e in off] == [
            (DEVICE, "ns=2;s=Sorter", "BadHistoryOperationInvalid")]
        assert [a.message for a in drv.alerts()] == [
            f"OPC UA device {DEVICE}: catch-up after reconnect is off for this server: "
            "it keeps no event history (ns=2;s=Sorter: BadHistoryOperationInvalid)"]
        assert drv.availability.available
    finally:
        await h.stop()


async def test_sessions_failing_right_after_connect_back_off_further(tmp_path: Path) -> None:
    # A history failure that is not "no history": every session ends right after it is up.
    server = NoHistoryServer(StatusCodes.BadInternalError)
    await server.start()
    h = Harness(tmp_path, server.endpoint)
    drv = h.driver
    try:
        await h.start()
        await wait_until(lambda: drv.sessions >= 4, 20, "four failed sessions")
        # Each short-lived session counts as a failure: the delay ceiling doubles to the cap
        # (were the backoff reset at every connect, it would stay at backoff_initial * 2).
        assert drv._backoff.ceiling() >= 0.8
        assert not any("catch-up" in a for a in drv.alerts()), "a failure is not 'no history'"
    finally:
        await h.stop()
        await server.stop()


def test_no_history_answers_are_told_apart_from_other_failures() -> None:
    for code in (StatusCodes.BadHistoryOperationInvalid,
                 StatusCodes.BadHistoryOperationUnsupported, StatusCodes.BadNotReadable,
                 StatusCodes.BadServiceUnsupported):
        assert no_history_status(code) == ua.StatusCode(ua.UInt32(code)).name
    others: tuple[int | None, ...] = (
        StatusCodes.Good, StatusCodes.BadTimeout, StatusCodes.BadInternalError,
        StatusCodes.BadTooManyOperations, None)
    for other in others:
        assert no_history_status(other) is None
    assert "BadNotReadable" in str(NoEventHistory("BadNotReadable"))
