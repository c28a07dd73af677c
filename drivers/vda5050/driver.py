"""VDA 5050 driver: every AMR fleet on one MQTT broker, through one connection.

Subscribes to ``<interface>/<major>/<manufacturer>/<serial>/{state,connection,
order,instantActions}`` for each fleet, decodes each message into a report
(``gateway.core.reports``) and hands it to the fleet's ingest pipeline.

The connection is a persistent session with manual acknowledgement, like the
scanner driver's: a QoS 1 message (``connection`` messages, retained last
wills) is acknowledged only after the events it produced are committed, and
reading stops while the store holds the committer back. ``state`` messages
travel at QoS 0 and need no acknowledgement; one that is lost is made up for
by the next (the recognizer diffs states, it does not count on each).

A message that cannot become a report — too large, not JSON, not a valid
VDA 5050 message, the payload's vehicle not the topic's, a topic of the wrong
shape — never stops the driver: it becomes an ingest dead letter, kept whole
with its reason, counted, and logged throttled per fleet and kind of error.
An empty payload (how a retained message is cleared) is ignored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import structlog

from drivers.mqtt_link_driver import MqttLinkDriver, session_of
from drivers.vda5050.config import Vda5050Device
from drivers.vda5050.ingest import INGEST_VIEWS, decode
from gateway.core.alert import Alert
from gateway.core.errors import IngestError
from gateway.core.protocols import DeviceIngest, DriverContext
from gateway.transport.config import BrokerConfig
from gateway.transport.link import MqttLink

log = structlog.get_logger(__name__)

#: Vehicle → fleet routes cached (cleared whole when full: it is only a cache).
_MAX_ROUTES = 100_000


@dataclass(slots=True)
class _Fleet:
    device: Vda5050Device
    ingest: DeviceIngest
    messages: Counter[str] = field(default_factory=Counter)
    last_seen: float | None = None


class Vda5050Driver(MqttLinkDriver):
    """All VDA 5050 fleets on one broker."""

    def __init__(self, ctx: DriverContext[Vda5050Device], *,
                 client_id: str | None = None) -> None:
        broker: BrokerConfig = ctx.broker
        devices = ctx.devices
        self.site = site = ctx.site
        self.broker = broker
        self.name = f"vda5050-{broker.id}"
        self.ingest = ctx.ingest
        self._clock = ctx.clock
        self._fleets = [_Fleet(dev, ctx.ingest.device(dev.id)) for dev in devices]
        self._routes: dict[tuple[str, str, str, str], _Fleet | None] = {}
        self._paused = False
        subscriptions = list(dict.fromkeys(t for dev in devices for t in dev.subscriptions()))
        if client_id is None:
            # Never the scanner driver's id on the same broker: one would evict the other.
            client_id = (f"{broker.client_id}-vda5050" if broker.client_id
                         else f"wh-gw-{site}-{broker.id}-vda5050")
        ctx.ingest.on_drained(self._resume)
        client_id, persistent = session_of(client_id, ctx.dry_run)
        self.link = MqttLink(broker, client_id, persistent=persistent, manual_ack=True,
                             on_message=self._on_message,
                             subscriptions=[(t, 1) for t in subscriptions])
        for fleet in self._fleets:
            fleet.ingest.bind(self.describe, on_saturated=self.link.pause_reading,
                              on_refused=self.link.drop_connection)

    @property
    def unrouted(self) -> int:
        """Messages for no configured fleet (acknowledged and dropped)."""
        return self.ingest.unrouted

    # -- routing --------------------------------------------------------------------------

    def _route(self, parts: list[str]) -> _Fleet | None:
        key = (parts[0], parts[1], parts[2], parts[3])
        try:
            return self._routes[key]
        except KeyError:
            pass
        found = next((f for f in self._fleets
                      if f.device.interface_name == parts[0]
                      and f.device.major_version == parts[1]
                      and f.device.matches(parts[2], parts[3])), None)
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
        self._routes[key] = found
        return found

    def _fleet_of_interface(self, parts: list[str]) -> _Fleet | None:
        return next((f for f in self._fleets if len(parts) >= 2
                     and f.device.interface_name == parts[0]
                     and f.device.major_version == parts[1]), None)

    # -- messages -------------------------------------------------------------------------

    def _on_message(self, msg: paho.MQTTMessage, generation: int) -> None:
        if self._paused:
            return
        now = self._clock()
        link = self.link
        ack: Callable[[], None] | None = None
        if msg.qos:
            mid = msg.mid

            def ack() -> None:
                link.ack(mid, generation)

        topic = msg.topic
        parts = topic.split("/")
        shaped = len(parts) == 5 and parts[4] in INGEST_VIEWS
        fleet = self._route(parts) if shaped else self._fleet_of_interface(parts)
        if fleet is None:
            self.ingest.unrouted_message(topic, self.name)
            if ack is not None:
                ack()
            return
        pipe = fleet.ingest
        if not shaped:
            pipe.reject(IngestError("bad_topic", f"{topic!r} is not <interface>/<major>/"
                                    "<manufacturer>/<serial>/<state|connection|order|"
                                    "instantActions>"), msg, ack)
            return
        dev = fleet.device
        fleet.messages[parts[4]] += 1
        fleet.last_seen = now
        try:
            sig = decode(parts[4], msg.payload, parts[2], parts[3], dev.id, now,
                         dev.max_payload_bytes)
        except IngestError as err:
            pipe.reject(err, msg, ack)
            return
        records = [] if sig is None else pipe.recognize(sig, msg)
        if not records:
            if ack is not None:
                ack()
            return
        pipe.hand_off(records, ack)


    # -- driver protocol ------------------------------------------------------------------


    def alerts(self) -> list[Alert]:
        """The broker unreachable or our client id taken over; broken vehicle links."""
        out = self.link.alerts()
        for fleet in self._fleets:
            out.extend(fleet.ingest.alerts())
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-fleet figures for the status API."""
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for fleet in self._fleets:
            dev = fleet.device
            figures = fleet.ingest.snapshot()
            seen = fleet.last_seen
            out[dev.id] = {
                "driver": "vda5050",
                "role": dev.role,
                "broker": self.broker.id,
                "interface": f"{dev.interface_name}/{dev.major_version}",
                "manufacturer": dev.manufacturer,
                "serial_numbers": len(dev.serial_numbers) or None,
                "connected": self.link.connected.is_set(),
                "client_id": self.link.client_id,
                "session_takeovers": self.link.takeovers,
                "broker_error": self.link.last_error,
                "messages": dict(fleet.messages),
                **figures,
                "last_seen_s_ago": None if seen is None else round(now - seen, 1),
            }
        return out
