"""OPC UA driver: one device's subscriptions, its event history, its reconnects.

Session life cycle (one loop, our own — not asyncua's auto-reconnect, so every
step is ours to order and to time out):

1. connect (security, user, all under ``connect_timeout``); resolve node ids,
   build event filters from the server's event types;
2. create one subscription with every event and data-change monitored item;
3. for every event source with ``history = true``: read the server's event
   history from the last event time seen (first connect: ``history_lookback``)
   up to now, page by page. The subscription already runs, so an event is
   either in the history or in the subscription; overlaps are repeats of the
   same physical event (same event id) and are dropped here or by the store.
   A server that keeps no event history for a source (``BadHistoryOperationInvalid``
   and the like, see ``history.NO_HISTORY``) is told once: the source runs
   live-only from then on, logged once and shown as a standing alert;
4. supervise: a status change or a failed health probe ends the session; a
   subscription with no notification and no keep-alive for
   ``watchdog_keepalives`` keep-alive periods is re-created (and history is
   read again, since its events may be lost);
5. on any failure: close within a bounded time, wait a capped, jittered
   backoff, go to 1. The backoff starts over only after a session that stayed
   up for ``backoff_reset_after``: a server that accepts the session and then
   fails it at once is retried ever more slowly, not dozens of times a minute.

Data-change initial values re-sent on a new subscription carry the source
timestamp the value had: the driver drops one whose node, value and source
timestamp it already reported, and its event id would be the same anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.events import get_filter_from_event_type

from drivers.base import Availability
from drivers.opcua import client as opc
from drivers.opcua.config import OpcuaDevice, OpcuaEvents
from drivers.opcua.decode import (
    divert_signal,
    epoch,
    event_signal,
    event_types,
    field_names,
    field_paths,
    json_value,
    micros,
    quality,
    scan_signal,
    select_fields,
)
from drivers.opcua.history import NoEventHistory, read_event_history
from drivers.opcua.subscription import RawSubscription, parse_node_id, subscribe
from gateway.core.aio import raise_if_cancelling
from gateway.core.alert import Alert
from gateway.core.backoff import Backoff
from gateway.core.errors import IngestError
from gateway.core.events import Signal
from gateway.core.protocols import DriverContext
from gateway.core.records import IngestDeadLetter, Record

log = structlog.get_logger(__name__)

#: Event keys remembered to drop history/subscription overlaps before the store.
RECENT_EVENT_KEYS = 8192
_EVENT_HANDLE_BASE = 1
_NODE_HANDLE_BASE = 1_000_000
_CLOSE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class _EventRoute:
    index: int
    cfg: OpcuaEvents
    source: ua.NodeId | None = None
    filter: ua.EventFilter | None = None
    names: list[str] | None = None
    #: The event type and its subtypes (history holds every type a source fired).
    types: frozenset[ua.NodeId] = frozenset()
    #: Every event with a time up to here was received (None: nothing yet).
    synced_until: float | None = None
    seen_until: float | None = None
    catching_up: bool = False
    #: Set when the server said it keeps no event history for the source (its
    #: status name): the source is live-only from then on.
    no_history: str | None = None


@dataclass(slots=True)
class _NodeRoute:
    point: str
    kind: str
    node_text: str
    last: tuple[int, Any] | None = None


class OpcuaDriver:
    """Reads one OPC UA device (a sorter and/or an induct reader)."""

    def __init__(self, ctx: DriverContext[OpcuaDevice]) -> None:
        (device,) = ctx.devices
        self.site = ctx.site
        self.device = device
        self.name = f"opcua-{device.id}"
        opc.quiet_library_logs()
        self.ingest = ctx.ingest
        self.pipe = ctx.ingest.device(device.id)
        self.pipe.bind(self._describe)
        self._clock = ctx.clock
        self.availability = Availability(device.id, "opcua")
        self._backoff = Backoff(device.backoff_initial, device.backoff_max)
        self._events = [_EventRoute(i, e) for i, e in enumerate(device.events)]
        self._by_handle: dict[int, _EventRoute] = {}
        self._nodes: dict[int, _NodeRoute] = {
            _NODE_HANDLE_BASE + i: _NodeRoute(n.point, n.kind, n.node)
            for i, n in enumerate(device.nodes)}
        self._resolved: list[tuple[ua.NodeId, int]] = []
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._paused = False
        self._lost = asyncio.Event()
        self._drained = asyncio.Event()
        ctx.ingest.on_drained(self._drained.set)
        self._sub: RawSubscription | None = None
        self._keepalive_s = device.publishing_interval * device.keepalive_count
        #: When the current session came up (monotonic); None while not up.
        self._up_since: float | None = None
        # Figures for the status API.
        self.notifications = 0
        self.events_received = 0
        self.history_events = 0
        self.repeats_dropped = 0
        self.subscriptions_recreated = 0
        self.sessions = 0
        self.last_seen: float | None = None

    # -- Driver protocol ------------------------------------------------------

    async def run(self) -> None:
        """Keep a session to the device until cancelled."""
        flusher = asyncio.create_task(self.ingest.run(), name=f"{self.name}-log-flush")
        try:
            while True:
                raise_if_cancelling()  # asyncua's wait_for may have swallowed a cancel
                try:
                    await self._session()
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # every device fault: log once, back off, retry
                    self.availability.down(_describe(err), endpoint=self.device.endpoint)
                else:
                    self.availability.down("session ended", endpoint=self.device.endpoint)
                up_since, self._up_since = self._up_since, None
                if (up_since is not None
                        and time.monotonic() - up_since >= self.device.backoff_reset_after):
                    self._backoff.reset()  # a healthy session: retry at once
                await asyncio.sleep(self._backoff.next())
        finally:
            flusher.cancel()

    def pause(self) -> None:
        """Stop taking notifications (they are read again from history next start)."""
        self._paused = True

    def ready(self) -> bool:
        """Always: a device being unavailable is an alert, not gateway unreadiness."""
        return True

    def alerts(self) -> list[Alert]:
        """The device being unreachable; catch-up being off for a server without history."""
        out = []
        subject = f"device:{self.device.id}"
        a = self.availability
        if not a.available:
            out.append(Alert("device_unavailable", subject,
                             f"OPC UA device {self.device.id} unavailable: "
                             f"{a.last_error or 'not connected yet'}",
                             since=a.down_since, detail=a.last_error))
        off = [f"{r.cfg.source}: {r.no_history}" for r in self._events if r.no_history]
        if off:
            out.append(Alert("device_no_history", subject,
                             f"OPC UA device {self.device.id}: catch-up after reconnect is off "
                             f"for this server: it keeps no event history ({'; '.join(off)})"))
        out.extend(self.pipe.alerts())
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-device figures for the status API."""
        now = self._clock()
        figures = self.pipe.snapshot()
        return {self.device.id: {
            "driver": "opcua",
            "role": self.device.role,
            "endpoint": self.device.endpoint,
            "security": f"{self.device.security_policy}/{self.device.security_mode}",
            "connected": self.availability.available,
            "last_error": self.availability.last_error,
            "sessions": self.sessions,
            "outages": self.availability.outages,
            # Notifications and events that reached its recognizer.
            "messages": figures["inputs"],
            "notifications": self.notifications,
            "events_received": self.events_received,
            "history_events": self.history_events,
            "repeats_dropped": self.repeats_dropped,
            "subscriptions_recreated": self.subscriptions_recreated,
            **figures,
            "synced_until": {f"{r.cfg.kind}@{r.cfg.source}": _iso(r.synced_until)
                             for r in self._events},
            "last_seen_s_ago": None if self.last_seen is None else round(now - self.last_seen, 1),
        }}

    # -- session --------------------------------------------------------------

    async def _session(self) -> None:
        dev = self.device
        client = await opc.connect(dev)
        self._lost.clear()
        try:
            async with asyncio.timeout(dev.request_timeout * 4):
                await self._prepare(client)
                starts = self._begin_catch_up()
                await self._subscribe(client)
            self.sessions += 1
            self.availability.up(endpoint=dev.endpoint,
                                 security=f"{dev.security_policy}/{dev.security_mode}")
            self._up_since = time.monotonic()
            await self._catch_up(client, starts)
            await self._supervise(client)
        finally:
            self._sub = None
            await opc.close(client, _CLOSE_TIMEOUT_S)

    async def _prepare(self, client: Client) -> None:
        """Resolve node ids and build the event filters from the server's types."""
        namespaces = await client.get_namespace_array()
        generic = self.device.generic_signals
        if generic or any(r.cfg.kind == "scan" for r in self._events):
            # ScanResult is a structure: its decoder comes from the server's description.
            await client.load_data_type_definitions()
        for route in self._events:
            route.source = parse_node_id(route.cfg.source, namespaces)
            etype = client.get_node(parse_node_id(route.cfg.type, namespaces))
            route.filter = await get_filter_from_event_type([etype])
            if generic:  # only the fields the mapping reads travel and get decoded
                select_fields(route.filter, self.pipe.event_fields(
                    route.cfg.point or route.cfg.kind))
            route.names = (field_paths if generic else field_names)(route.filter.SelectClauses)
            route.types = event_types(route.filter)
            for needed in ("Time",):
                if needed not in route.names:
                    raise ValueError(f"event type {route.cfg.type} has no {needed} field")
        self._resolved = [(parse_node_id(r.node_text, namespaces), h)
                         for h, r in self._nodes.items()]

    async def _subscribe(self, client: Client) -> None:
        """One subscription with every monitored item of the device."""
        events = []
        self._by_handle = {}
        for route in self._events:
            handle = _EVENT_HANDLE_BASE + route.index
            self._by_handle[handle] = route
            assert route.source is not None and route.filter is not None
            events.append((route.source, handle, route.cfg.queue_size, route.filter))
        self._sub, self._keepalive_s = await subscribe(
            client, self.device, self._on_publish, events, self._resolved)

    def _begin_catch_up(self) -> dict[int, float]:
        """Where each historized source's catch-up starts; freezes ``synced_until``.

        Runs before the subscription is created: a live event arriving before
        the history read must not move the resume point past unread history.
        """
        starts = {}
        for route in self._events:
            if route.cfg.history and route.no_history is None:
                route.catching_up = True
                starts[route.index] = (route.synced_until if route.synced_until is not None
                                       else self._clock() - self.device.history_lookback)
        return starts

    async def _catch_up(self, client: Client, starts: dict[int, float]) -> None:
        """Read every historized source's events since the last one seen."""
        for route in self._events:
            if route.index not in starts:
                route.synced_until = route.seen_until
                continue
            start = starts[route.index]
            assert route.source is not None and route.filter is not None
            async for fields_batch in self._history(client, route, start):
                if self._paused:
                    return
                now = self._clock()
                records: list[Record] = []
                for values in fields_batch:
                    if not self._of_type(route, values):
                        continue
                    records.extend(self._event(route, values, now))
                self.history_events += len(fields_batch)
                if records:
                    await self.pipe.append(records)
            route.catching_up = False
            route.synced_until = max(start, route.seen_until or start)

    async def _history(self, client: Client, route: _EventRoute, start: float
                       ) -> AsyncIterator[list[list[ua.Variant]]]:
        """The route's event history pages; none if the server keeps no history for it.

        "No history" is a permanent answer: the route is live-only from then
        on (asking again at every reconnect would only end the session each
        time and repeat the warning).
        """
        assert route.source is not None and route.filter is not None
        dev = self.device
        try:
            async for page in read_event_history(client, route.source, route.filter, start,
                                                 dev.history_page, dev.request_timeout):
                yield page
        except NoEventHistory as err:
            route.no_history = err.status
            log.warning("opcua_history_unavailable", device=self.device.id,
                        source=route.cfg.source, status=err.status,
                        action="catch-up after reconnect is off for this source; "
                               "live events only")

    async def _supervise(self, client: Client) -> None:
        """Return when the session is lost; re-create a silent subscription."""
        while True:
            raise_if_cancelling()
            check = min(1.0, self._keepalive_s / 2)
            try:
                async with asyncio.timeout(check):
                    await self._lost.wait()
                raise opc.ConnectionLost("the server ended the session or the link dropped")
            except TimeoutError:
                pass
            sub = self._sub
            if sub is None or sub.last_publish_at is None:  # between two subscriptions
                continue
            silent = time.monotonic() - sub.last_publish_at
            if silent > self.device.watchdog_keepalives * self._keepalive_s:
                log.warning("opcua_subscription_silent", device=self.device.id,
                            silent_s=round(silent, 1), action="re-creating the subscription")
                self.subscriptions_recreated += 1
                old = sub
                self._sub = None
                async with asyncio.timeout(self.device.request_timeout * 2):
                    starts = self._begin_catch_up()
                    await self._subscribe(client)
                    with contextlib.suppress(Exception):  # the server may have dropped it
                        await old.delete()
                await self._catch_up(client, starts)

    # -- notifications ----------------------------------------------------------

    async def _on_publish(self, result: ua.PublishResult) -> None:
        data = result.NotificationMessage.NotificationData
        if not data or self._paused:
            return
        now = self._clock()
        self.last_seen = now
        records: list[Record] = []
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                self._data_changes(notif.MonitoredItems, now, records)
            elif isinstance(notif, ua.EventNotificationList):
                for ev in notif.Events:
                    route = self._by_handle.get(ev.ClientHandle)
                    if route is not None:
                        records.extend(self._event(route, ev.EventFields, now))
            elif isinstance(notif, ua.StatusChangeNotification) and not notif.Status.is_good():
                log.info("opcua_status_change", device=self.device.id, status=notif.Status.name)
                self._lost.set()
        if records:
            await self._submit(records)

    def _data_changes(self, items: list[ua.MonitoredItemNotification], now: float,
                      out: list[Record]) -> None:
        nodes = self._nodes
        recognize = self.pipe.recognize
        device = self.device.id
        self.notifications += len(items)
        for item in items:
            route = nodes.get(item.ClientHandle)
            if route is None:
                continue
            dv = item.Value
            variant = dv.Value
            raw = None if variant is None else variant.Value
            stamp = dv.SourceTimestamp or dv.ServerTimestamp
            stamp_us = micros(stamp) if stamp is not None else round(now * 1e6)
            key = (stamp_us, raw)
            if route.last == key:
                self.repeats_dropped += 1  # an initial value re-sent after a reconnect
                continue
            route.last = key
            try:
                value = raw if type(raw) in _PLAIN else json_value(raw, route.point)
            except IngestError as err:
                out.append(self._dead_letter(err, route.point, repr(raw).encode(),
                                             {"node": route.node_text, "point": route.point}))
                continue
            sig = Signal(device, route.point, value, now, stamp_us / 1e6, str(stamp_us),
                         quality(dv.StatusCode), {"node": route.node_text, "kind": route.kind})
            out.extend(recognize(sig, sig))

    @staticmethod
    def _of_type(route: _EventRoute, values: list[ua.Variant]) -> bool:
        """Whether a history event is of the route's type (a source may fire others)."""
        assert route.names is not None
        if not route.types or "EventType" not in route.names:
            return True
        return values[route.names.index("EventType")].Value in route.types

    def _event(self, route: _EventRoute, values: list[ua.Variant], now: float) -> list[Record]:
        """One event (from the subscription or from history) → records."""
        assert route.names is not None
        self.events_received += 1
        fields = {name: v.Value for name, v in zip(route.names, values, strict=False)}
        time_s = epoch(fields.get("Time"))
        if time_s is not None and (route.seen_until is None or time_s > route.seen_until):
            route.seen_until = time_s
            if not route.catching_up and route.synced_until is not None:
                route.synced_until = time_s
        try:
            if self.device.generic_signals:
                sig = event_signal(self.device.id, route.cfg.point or route.cfg.kind, fields, now,
                                   {"source": route.cfg.source, "event_type": route.cfg.type})
            elif route.cfg.kind == "divert_confirm":
                sig = divert_signal(self.device.id, fields, now)
            else:
                sig = scan_signal(self.device.id, fields, now)
            key = self.pipe.source_key(sig)
        except IngestError as err:
            payload = repr({k: v for k, v in fields.items() if k not in ("LocalTime",)})
            return [self._dead_letter(err, route.cfg.kind, payload.encode(),
                                      {"source": route.cfg.source, "event_type": route.cfg.type})]
        if key in self._recent:
            self.repeats_dropped += 1
            return []
        self._recent[key] = None
        if len(self._recent) > RECENT_EVENT_KEYS:
            self._recent.popitem(last=False)
        return list(self.pipe.recognize(sig, (route, fields)))

    def _describe(self, raw: Signal | tuple[_EventRoute, dict[str, Any]],
                  ) -> tuple[bytes, Mapping[str, Any]]:
        """What a failed recognition keeps: a data change's value, or an event's fields."""
        if isinstance(raw, Signal):
            return repr(raw.value).encode(), {
                "point": raw.point, "endpoint": self.device.endpoint,
                "node": raw.attrs.get("node")}
        route, fields = raw
        return repr(fields).encode(), {"point": route.cfg.kind, "endpoint": self.device.endpoint,
                                       "source": route.cfg.source}

    def _dead_letter(self, err: IngestError, point: str, payload: bytes,
                     context: dict[str, Any]) -> IngestDeadLetter:
        return self.pipe.dead_letter(err, payload, {"point": point,
                                                    "endpoint": self.device.endpoint, **context})

    async def _submit(self, records: list[Record]) -> None:
        pipe = self.pipe
        if not pipe.hand_off(records, None):
            # Not expected (we stop reading at the high-water mark): wait for room.
            await pipe.append(records)
        if pipe.saturated:
            # Holding the publish loop here stops further publish requests: the
            # server queues (or, for data changes, keeps only the latest values).
            self._drained.clear()
            while pipe.saturated and not self._paused:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._drained.wait()
                self._drained.clear()


_PLAIN = frozenset({bool, int, str, type(None)})


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}" if text != type(err).__name__ else text


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()
