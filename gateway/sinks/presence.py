"""Publishes the gateway's presence on an MQTT sink's broker (gateway/core/presence.py).

After every connect: the retained birth (``online``) and every device's
status; then a device's status again whenever it changes. The connection's
last will (set when the link is made) is the retained ``offline`` the broker
publishes when the gateway disappears; ``goodbye`` publishes the clean-stop
``offline`` before the link closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog

from gateway.core.presence import (
    device_payload,
    device_topic,
    gateway_payload,
    gateway_topic,
    will_payload,
)
from gateway.transport.link import LinkDown, MqttLink, PublishRefused

log = structlog.get_logger(__name__)

#: How often device states are compared with what was published.
POLL_S = 1.0

#: Connected state of each device, by id.
DeviceStates = Callable[[], Mapping[str, bool]]


class PresencePublisher:
    """Birth, device status and clean-stop messages of one MQTT connection."""

    def __init__(self, link: MqttLink, prefix: str, site: str, started_at: float,
                 devices: DeviceStates | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.link = link
        self.prefix = prefix
        self.site = site
        self.started_at = started_at
        self._devices = devices
        self._clock = clock
        self._published: dict[str, bool] = {}
        self._since: dict[str, tuple[bool, float]] = {}
        self.births = 0
        self.last_error: str | None = None

    @staticmethod
    def will(prefix: str, site: str, started_at: float) -> tuple[str, bytes, int, bool]:
        """The last will to give the link: retained ``offline`` at QoS 1."""
        return gateway_topic(prefix, site), will_payload(site, started_at), 1, True

    async def _publish(self, topic: str, payload: bytes) -> None:
        await self.link.publish(topic, payload, 1, True)

    async def run(self) -> None:
        """Publish after every connect and on every device change, until cancelled."""
        while True:
            await self.link.connected.wait()
            generation = self.link.generation
            try:
                await self._publish(gateway_topic(self.prefix, self.site),
                                    gateway_payload("online", self.site, self.started_at,
                                                    at=self._clock()))
                self.births += 1
                self._published.clear()
                while self.link.connected.is_set() and self.link.generation == generation:
                    await self._publish_devices()
                    await asyncio.sleep(POLL_S)
            except LinkDown:
                continue  # the next connect publishes everything again
            except PublishRefused as err:
                if self.last_error != str(err):
                    log.warning("mqtt_presence_refused", broker=self.link.broker.id,
                                error=str(err))
                self.last_error = str(err)
                await asyncio.sleep(POLL_S * 10)

    async def _publish_devices(self) -> None:
        if self._devices is None:
            return
        now = self._clock()
        for device, connected in self._devices().items():
            seen = self._since.get(device)
            if seen is None or seen[0] != connected:
                self._since[device] = (connected, now)
            if self._published.get(device) == connected:
                continue
            since = self._since[device][1]
            await self._publish(device_topic(self.prefix, self.site, device),
                                device_payload(self.site, device, connected, since))
            self._published[device] = connected

    async def goodbye(self) -> None:
        """The clean-stop ``offline`` (retained), if the link is up; waits for its PUBACK."""
        if not self.link.connected.is_set():
            return
        now = self._clock()
        if self._devices is not None:
            # Devices are not read once the gateway is gone: say so, or they stay "up".
            for device in self._devices():
                await self._publish(device_topic(self.prefix, self.site, device),
                                    device_payload(self.site, device, False, now))
        await self._publish(gateway_topic(self.prefix, self.site),
                            gateway_payload("offline", self.site, self.started_at, at=now,
                                            reason="stopped"))
