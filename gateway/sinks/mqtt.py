"""MQTT sink: events published at QoS 1 to ``<prefix>/<site>/events/<type>``.

The cursor advances only after every event of a batch has its PUBACK. At most
``window`` publishes are unacknowledged at once (paho's QoS 1 publisher
degrades badly with many queued). A connection lost mid-batch republishes
what was not acknowledged: delivery is at-least-once, and subscribers
deduplicate by ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import structlog

from gateway.config import MqttSinkConfig
from gateway.core.backoff import Backoff
from gateway.core.records import Row, SinkDeadLetter
from gateway.core.tls import INSECURE_WARNING
from gateway.sinks.presence import DeviceStates, PresencePublisher
from gateway.transport.config import BrokerConfig
from gateway.transport.link import LinkDown, MqttLink

log = structlog.get_logger(__name__)

#: Budget of the clean-stop presence messages and of closing the link.
_GOODBYE_S = 2.0


class MqttSink:
    """Publishes events to MQTT subscribers."""

    def __init__(self, cfg: MqttSinkConfig, broker: BrokerConfig, site: str, *,
                 started_at: float | None = None, devices: DeviceStates | None = None) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.routes = frozenset(cfg.routes) if cfg.routes is not None else None
        self.batch_max = cfg.batch_max
        self.site = site
        started = started_at or time.time()
        will = PresencePublisher.will(cfg.prefix, site, started) if cfg.presence else None
        self.link = MqttLink(broker, f"wh-gw-{site}-sink-{cfg.id}", persistent=False,
                             will=will)
        self.presence = (PresencePublisher(self.link, cfg.prefix, site, started, devices)
                         if cfg.presence else None)
        self._backoff = Backoff(0.2, 10.0)
        self.delivered = 0
        self.republished = 0
        self.refused = 0
        self.last_refusal: str | None = None
        self.last_success: float | None = None
        #: Wall time publishes began to be refused (None: not refused).
        self.refused_since: float | None = None

    def topic(self, row: Row) -> str:
        """Topic of one event."""
        return f"{self.cfg.prefix}/{self.site}/events/{row.type}"

    async def run(self) -> None:
        """Keep the broker connection up (and the gateway's presence on it)."""
        if self.presence is None:
            await self.link.run()
            return
        link = asyncio.create_task(self.link.run(), name=f"mqtt-link-sink-{self.id}")
        presence = asyncio.create_task(self.presence.run(), name=f"mqtt-presence-{self.id}")
        try:
            done, _ = await asyncio.wait({link, presence}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            presence.cancel()
            # The clean-stop "offline" goes out while the link is still up.
            with contextlib.suppress(Exception, TimeoutError):
                async with asyncio.timeout(_GOODBYE_S):
                    await self.presence.goodbye()
            link.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_GOODBYE_S):
                    await asyncio.gather(link, presence, return_exceptions=True)

    async def close(self) -> None:
        """Nothing to close beyond the link, which ``run`` owns."""

    async def deliver(self, rows: list[Row]) -> list[SinkDeadLetter]:
        """Publish every row and wait for all PUBACKs; republish on connection loss."""
        pending = rows
        while pending:
            await self.link.connected.wait()
            inflight: deque[tuple[Row, asyncio.Future[None]]] = deque()
            failed: list[Row] = []
            for row in pending:
                while len(inflight) >= self.cfg.window:
                    await asyncio.wait([inflight[0][1]])
                    self._settle(inflight.popleft(), failed)
                    if failed:
                        break
                if failed:
                    break
                fut = self.link.publish(self.topic(row), row.body, 1, self.cfg.retain)
                inflight.append((row, fut))
            while inflight:
                await asyncio.wait([inflight[0][1]])
                self._settle(inflight.popleft(), failed)
            if failed:
                if self.last_refusal is not None and self.refused_since is None:
                    self.refused_since = time.time()
                if self.last_refusal is not None:
                    log.warning("mqtt_sink_publish_refused", sink=self.id,
                                error=self.last_refusal, retrying=len(failed))
                # Republish from the first failure on, in order.
                first = failed[0].seq
                done = sum(1 for r in pending if r.seq < first)
                self.delivered += done
                self.republished += len(pending) - done
                pending = [r for r in pending if r.seq >= first]
                await asyncio.sleep(self._backoff.next())
                continue
            self.delivered += len(pending)
            self.last_refusal = None
            self.refused_since = None
            self._backoff.reset()
            self.last_success = time.time()
            pending = []
        return []

    def _settle(self, item: tuple[Row, asyncio.Future[None]], failed: list[Row]) -> None:
        row, fut = item
        if not fut.done():
            fut.cancel()
            failed.append(row)
            return
        if fut.cancelled() or fut.exception() is not None:
            exc = None if fut.cancelled() else fut.exception()
            if exc is not None and not isinstance(exc, LinkDown):
                self.refused += 1
                self.last_refusal = str(exc)
            failed.append(row)

    def snapshot(self) -> dict[str, Any]:
        """State for the status API."""
        clash = self.link.takeover.alert()
        return {
            "type": "mqtt",
            "broker": self.cfg.broker,
            "state": (
                "disconnected" if not self.link.connected.is_set()
                else "refused" if self.last_refusal is not None else "ok"
            ),
            "alert": "; ".join(a for a in (
                None if self.last_refusal is None
                else f"broker refuses publishes: {self.last_refusal}",
                clash,
                INSECURE_WARNING if self.link.broker.tls and self.link.broker.insecure else None,
            ) if a) or None,
            "refused": self.refused,
            "client_id": self.link.client_id,
            "session_takeovers": self.link.takeovers,
            "delivered": self.delivered,
            "republished": self.republished,
            "last_error": self.link.last_error or self.last_refusal,
            "last_success": self.last_success,
            # Since when the broker is away (or refuses publishes): the page's "down since"
            # and the sink-unavailable alert's since, as for the HTTP sink.
            "down_since": self.link.down_since or self.refused_since,
        }
