"""VDA 5050 driver: every AMR fleet on one MQTT broker, through one connection.

Subscribes to ``<interface>/<major>/<manufacturer>/<serial>/{state,connection,
order,instantActions}`` for each fleet, decodes each message into a report
(``gateway.recognizers.amr``) and feeds it to the fleet's recognizer.

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

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import structlog

from buffer.service import Committer
from drivers.base import IngestErrors
from drivers.mqtt_flow import hand_over
from drivers.vda5050.config import Vda5050Device
from drivers.vda5050.ingest import INGEST_VIEWS, decode
from gateway.config import BrokerConfig
from gateway.core.errors import IngestError
from gateway.core.records import Record
from gateway.mqtt_link import MqttLink
from gateway.recognizers.amr import BROKEN_STATES, AmrRecognizer

log = structlog.get_logger(__name__)

#: Vehicle → fleet routes cached (cleared whole when full: it is only a cache).
_MAX_ROUTES = 100_000
#: Vehicles named in an alert line.
_ALERT_NAMES = 5


@dataclass(slots=True)
class _Fleet:
    device: Vda5050Device
    recognizer: AmrRecognizer
    messages: Counter[str] = field(default_factory=Counter)
    last_seen: float | None = None


class Vda5050Driver:
    """All VDA 5050 fleets on one broker."""

    def __init__(
        self,
        site: str,
        broker: BrokerConfig,
        devices: Sequence[Vda5050Device],
        committer: Committer,
        *,
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.site = site
        self.broker = broker
        self.name = f"vda5050-{broker.id}"
        self._committer = committer
        self._clock = clock
        self._fleets = [_Fleet(dev, AmrRecognizer(
            site=site, device=dev.id, pick_actions=frozenset(dev.pick_actions),
            drop_actions=frozenset(dev.drop_actions), station_parameter=dev.station_parameter,
            load_parameter=dev.load_parameter, max_vehicles=dev.max_vehicles,
        )) for dev in devices]
        self._routes: dict[tuple[str, str, str, str], _Fleet | None] = {}
        self.errors = IngestErrors()
        self.unrouted = 0
        self._paused = False
        subscriptions = list(dict.fromkeys(t for dev in devices for t in dev.subscriptions()))
        if client_id is None:
            # Never the scanner driver's id on the same broker: one would evict the other.
            client_id = (f"{broker.client_id}-vda5050" if broker.client_id
                         else f"wh-gw-{site}-{broker.id}-vda5050")
        committer.on_drained(self._resume)
        self.link = MqttLink(broker, client_id, persistent=True, manual_ack=True,
                             on_message=self._on_message,
                             subscriptions=[(t, 1) for t in subscriptions])

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

    def _resume(self) -> None:
        if not self._paused:
            self.link.resume_reading()

    def pause(self) -> None:
        """Stop taking messages: QoS 1 ones stay unacknowledged with the broker."""
        self._paused = True

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
            # A subscription no fleet claims (a fleet removed from the config whose
            # subscription lives on in the persistent session).
            if not self.unrouted:
                log.warning("mqtt_message_for_unknown_device", topic=topic, driver=self.name,
                            action="acknowledged and dropped; counted in unrouted_messages")
            self.unrouted += 1
            if ack is not None:
                ack()
            return
        dev = fleet.device
        payload = msg.payload
        records: list[Record]
        try:
            if not shaped:
                raise IngestError("bad_topic", f"{topic!r} is not <interface>/<major>/"
                                  "<manufacturer>/<serial>/<state|connection|order|"
                                  "instantActions>")
            fleet.messages[parts[4]] += 1
            fleet.last_seen = now
            sig = decode(parts[4], payload, parts[2], parts[3], dev.id, now,
                         dev.max_payload_bytes)
            if sig is None:
                records = []
            else:
                before = fleet.recognizer.connection_of(parts[2], parts[3])
                records = list(fleet.recognizer.feed(sig))
                if sig.point == "connection":
                    self._log_connection(dev.id, parts[2], parts[3], before,
                                         fleet.recognizer.connection_of(parts[2], parts[3]))
        except IngestError as err:
            records = [self._dead_letter(dev.id, err, msg)]
        except Exception as err:  # a recognizer bug must not stop ingest
            records = [self._dead_letter(
                dev.id, self.errors.failed(dev.id, err, driver=self.name, topic=topic), msg)]
        if not records:
            if ack is not None:
                ack()
            return
        hand_over(self._committer, link, records, ack, self.name)

    def _dead_letter(self, device: str, err: IngestError, msg: paho.MQTTMessage) -> Record:
        return self.errors.dead_letter(device, err, bytes(msg.payload), {
            "topic": msg.topic, "qos": msg.qos, "retain": bool(msg.retain),
            "broker": self.broker.id,
        })

    def _log_connection(self, device: str, manufacturer: str, serial: str, before: str | None,
                        after: str | None) -> None:
        # One line per change of a vehicle's link, not per message.
        if after in BROKEN_STATES and before not in BROKEN_STATES:
            log.warning("amr_connection_broken", device=device, manufacturer=manufacturer,
                        serial=serial)
        elif before in BROKEN_STATES and after not in BROKEN_STATES:
            log.info("amr_connection_restored", device=device, manufacturer=manufacturer,
                     serial=serial, connection_state=after)

    # -- driver protocol ------------------------------------------------------------------

    async def run(self) -> None:
        """Run the broker connection until cancelled."""
        flusher = asyncio.create_task(self.errors.flush_every(), name=f"{self.name}-log-flush")
        try:
            await self.link.run()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    def ready(self) -> bool:
        """True while the broker connection is up."""
        return self.link.connected.is_set()

    def alerts(self) -> list[str]:
        """The broker unreachable or our client id taken over; broken vehicle links."""
        out = self.link.alerts()
        for fleet in self._fleets:
            broken = fleet.recognizer.broken()
            if broken:
                names = ", ".join(broken[:_ALERT_NAMES])
                extra = len(broken) - _ALERT_NAMES
                more = f" and {extra} more" if extra > 0 else ""
                out.append(f"fleet {fleet.device.id}: {len(broken)} AMR(s) with a broken "
                           f"connection: {names}{more}")
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-fleet figures for the status API."""
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for fleet in self._fleets:
            dev, rec = fleet.device, fleet.recognizer
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
                "vehicles": rec.connection_counts(),
                "connection_broken": rec.broken()[:20],
                "state_gaps": rec.state_gaps,
                "header_resets": rec.header_resets,
                "unclassified_actions": rec.unclassified,
                "evicted_vehicles": rec.evicted_vehicles,
                "ingest_errors": self.errors.for_device(dev.id),
                "last_seen_s_ago": None if seen is None else round(now - seen, 1),
            }
        return out
