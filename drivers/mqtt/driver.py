"""MQTT driver: subscribes to scanner topics and hands their reads to the ingest pipeline.

One connection per broker, with a persistent session (``clean_start=False``
and a session expiry), QoS 1 and manual acknowledgement: a message is
acknowledged only after the records it produced are committed by the store.
While the store is full, messages stay unacknowledged and the broker's
in-flight window (MQTT 5 Receive Maximum) stops further deliveries — the
broker holds the backlog in the session.

A payload that cannot become a signal (too large, not JSON, missing or
mistyped fields) never raises: it becomes an ingest dead letter, kept whole
with its reason, counted, logged throttled per device and kind of error, and is
then acknowledged like any other message.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import structlog

from drivers.mqtt.config import MqttDevice, ScannerFields
from drivers.mqtt_link_driver import MqttLinkDriver, session_of
from gateway.core.alert import Alert
from gateway.core.errors import IngestError
from gateway.core.events import Signal, parse_time
from gateway.core.protocols import DeviceIngest, DriverContext
from gateway.transport.config import BrokerConfig
from gateway.transport.link import MqttLink

log = structlog.get_logger(__name__)

__all__ = ["IngestError", "MqttDriver", "decode_json_message", "decode_scanner_read"]


def _get(doc: dict[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


_MISSING = object()


def _short(value: object) -> str:
    """``repr`` of a field value, cut short (a hostile payload may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


def _check_text(value: object, name: str) -> None:
    """Refuse a string the event cannot carry: JSON allows lone surrogates, UTF-8 does not."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise IngestError("bad_field", f"{name!r} is not valid Unicode text "
                              "(lone surrogate escape)") from None


def _json(payload: bytes | bytearray, max_bytes: int) -> Any:
    if len(payload) > max_bytes:
        raise IngestError("too_large", f"{len(payload)} bytes > limit {max_bytes}")
    try:
        return json.loads(payload)
    except ValueError as err:
        # JSONDecodeError, UnicodeDecodeError, and integers past Python's
        # 4,300-digit conversion limit.
        raise IngestError("not_json", str(err)[:200]) from None
    except RecursionError:
        raise IngestError("not_json", "JSON nested too deeply") from None


def decode_scanner_read(
    payload: bytes | bytearray, fields: ScannerFields, device: str, receive_time: float,
    max_bytes: int,
) -> Signal:
    """Decode one scanner message into a ``read`` signal, or raise ``IngestError``."""
    doc = _json(payload, max_bytes)
    if not isinstance(doc, dict):
        raise IngestError("not_object", f"expected a JSON object, got {type(doc).__name__}")
    code = _get(doc, fields.code)
    if code is _MISSING:
        raise IngestError("missing_field", f"no {fields.code!r} field")
    if not isinstance(code, str | int) or isinstance(code, bool):
        raise IngestError("bad_field",
                          f"{fields.code!r} must be a string, got {_short(code)}")
    _check_text(code, fields.code)
    read_id: str | None = None
    if fields.read_id is not None:
        raw_id = _get(doc, fields.read_id)
        if raw_id is not _MISSING and raw_id is not None:
            if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
                raise IngestError(
                    "bad_field",
                    f"{fields.read_id!r} must be a string or integer, got {_short(raw_id)}",
                )
            _check_text(raw_id, fields.read_id)
            read_id = str(raw_id)
    source_time: float | None = None
    if fields.timestamp is not None:
        raw_ts = _get(doc, fields.timestamp)
        if raw_ts is not _MISSING and raw_ts is not None:
            try:
                source_time = parse_time(raw_ts)
            except ValueError as err:
                raise IngestError("bad_timestamp", f"{fields.timestamp!r}: {err}") from None
    symbology = None
    if fields.symbology is not None:
        sym = _get(doc, fields.symbology)
        symbology = sym if isinstance(sym, str) else None
        _check_text(symbology, fields.symbology)
    attrs: dict[str, Any] = {"symbology": symbology}
    if read_id is None:
        attrs["digest"] = hashlib.sha1(payload, usedforsecurity=False).hexdigest()
    return Signal(device=device, point="read", value=str(code), receive_time=receive_time,
                  source_time=source_time, source_seq=read_id, attrs=attrs)


def decode_json_message(payload: bytes | bytearray, device: str, topic: str,
                        receive_time: float, max_bytes: int) -> Signal:
    """Any JSON message → a generic ``message`` signal for a mapping (value = the document)."""
    doc = _json(payload, max_bytes)
    return Signal(device=device, point="message", value=doc, receive_time=receive_time,
                  attrs={"topic": topic,
                         "digest": hashlib.sha1(payload, usedforsecurity=False).hexdigest()})


@dataclass(slots=True)
class _Route:
    device: MqttDevice
    ingest: DeviceIngest


class MqttDriver(MqttLinkDriver):
    """All MQTT devices on one broker."""

    def __init__(self, ctx: DriverContext[MqttDevice], *, client_id: str | None = None) -> None:
        broker: BrokerConfig = ctx.broker
        devices = ctx.devices
        self.site = site = ctx.site
        self.broker = broker
        self.name = f"driver-{broker.id}"
        self.ingest = ctx.ingest
        self._clock = ctx.clock
        self._exact: dict[str, _Route] = {}
        self._wild: list[tuple[str, _Route]] = []
        for dev in devices:
            route = _Route(dev, ctx.ingest.device(dev.id))
            if "+" in dev.topic or "#" in dev.topic:
                self._wild.append((dev.topic, route))
            else:
                self._exact[dev.topic] = route
        self.messages: Counter[str] = Counter()
        self.last_seen: dict[str, float] = {}
        self._paused = False
        ctx.ingest.on_drained(self._resume)
        client_id, persistent = session_of(
            client_id or broker.client_id or f"wh-gw-{site}-{broker.id}", ctx.dry_run)
        self.link = MqttLink(
            broker,
            client_id,
            persistent=persistent,
            manual_ack=True,
            on_message=self._on_message,
            subscriptions=[(d.topic, 1) for d in devices],
        )
        for route in self._routes():
            route.ingest.bind(self.describe, on_saturated=self.link.pause_reading,
                              on_refused=self.link.drop_connection)

    @property
    def unrouted(self) -> int:
        """Messages for no configured device (acknowledged and dropped)."""
        return self.ingest.unrouted

    def _routes(self) -> list[_Route]:
        return [*self._exact.values(), *(r for _, r in self._wild)]

    def _route(self, topic: str) -> _Route | None:
        route = self._exact.get(topic)
        if route is None:
            for pattern, candidate in self._wild:
                if paho.topic_matches_sub(pattern, topic):
                    return candidate
        return route

    def _on_message(self, msg: paho.MQTTMessage, generation: int) -> None:
        if self._paused:
            return
        now = self._clock()
        route = self._route(msg.topic)
        mid = msg.mid
        link = self.link

        def ack() -> None:
            link.ack(mid, generation)

        if route is None:
            self.ingest.unrouted_message(msg.topic, self.name)
            ack()
            return
        dev = route.device
        self.messages[dev.id] += 1
        self.last_seen[dev.id] = now
        try:
            if dev.generic_signals:
                sig = decode_json_message(msg.payload, dev.id, msg.topic, now,
                                          dev.max_payload_bytes)
            else:
                sig = decode_scanner_read(msg.payload, dev.fields, dev.id, now,
                                          dev.max_payload_bytes)
        except IngestError as err:
            route.ingest.reject(err, msg, ack)
            return
        route.ingest.accept(sig, msg, ack)



    def alerts(self) -> list[Alert]:
        """The broker being unreachable; another client using this client id; skewed clocks."""
        out = self.link.alerts()
        for route in self._routes():
            out.extend(route.ingest.alerts())
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-device figures for the status API."""
        now = self._clock()
        devices = {}
        for route in self._routes():
            dev_id = route.device.id
            seen = self.last_seen.get(dev_id)
            figures = route.ingest.snapshot()
            devices[dev_id] = {
                "driver": "mqtt",
                "role": route.device.role,
                "broker": self.broker.id,
                "topic": route.device.topic,
                "connected": self.link.connected.is_set(),
                "client_id": self.link.client_id,
                "session_takeovers": self.link.takeovers,
                "broker_error": self.link.last_error,
                "messages": self.messages[dev_id],
                "debounced": figures.get("debounced", 0),
                "ingest_errors": figures["ingest_errors"],
                **({"mapping": figures["mapping"]} if "mapping" in figures else {}),
                **({"station": figures["station"]} if "station" in figures else {}),
                "last_seen_s_ago": None if seen is None else round(now - seen, 1),
            }
        return devices
