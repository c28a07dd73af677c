"""What the MQTT drivers (scanners, VDA 5050 fleets) share: one broker link.

Each runs its ``MqttLink`` with the ingest's log flusher beside it, is ready
while the link is up, stops taking messages on ``pause``, and keeps a message
as a dead letter the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from gateway.core.protocols import Ingest
    from gateway.transport.config import BrokerConfig
    from gateway.transport.link import MqttLink


def session_of(client_id: str, dry_run: bool) -> tuple[str, bool]:
    """The client id and persistence of a driver's broker session.

    The gateway's own session is persistent under its configured client id. A
    commissioning dry run (``DriverContext.dry_run``) takes a clean session
    under an id of its own: it must neither take over the running gateway's
    connection nor leave subscriptions or queued messages in its session.
    """
    if not dry_run:
        return client_id, True
    return f"{client_id}-try-{uuid.uuid4().hex[:8]}", False


class MqttLinkDriver:
    """Base of the drivers that read one MQTT broker."""

    name: str
    broker: BrokerConfig
    link: MqttLink
    ingest: Ingest
    _paused: bool

    def pause(self) -> None:
        """Stop taking messages: QoS 1 ones stay unacknowledged with the broker."""
        self._paused = True

    def _resume(self) -> None:
        """Read the socket again after back-pressure, unless stopping."""
        if not self._paused:
            self.link.resume_reading()

    async def run(self) -> None:
        """Run the broker connection until cancelled."""
        flusher = asyncio.create_task(self.ingest.run(), name=f"{self.name}-log-flush")
        try:
            await self.link.run()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    def ready(self) -> bool:
        """True while the broker connection is up."""
        return self.link.connected.is_set()

    def describe(self, msg: paho.MQTTMessage) -> tuple[bytes, Mapping[str, Any]]:
        """A message as its dead letter keeps it."""
        return bytes(msg.payload), {"topic": msg.topic, "qos": msg.qos,
                                    "retain": bool(msg.retain), "broker": self.broker.id}
