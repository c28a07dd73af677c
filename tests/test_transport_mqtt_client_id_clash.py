"""Another client with the gateway's MQTT client id is named as such, not "Unspecified error".

Real Mosquitto, real paho clients taking the session over. Mosquitto before
2.0.15 (and any broker towards MQTT 3.1.1) closes the old connection without a
DISCONNECT; newer ones send reason code 0x8E. The Mosquitto tests pass with
either; a minimal loopback MQTT server stands in for a broker that sends 0x8E.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import structlog
from e2e import alert_messages, site, start, wait_until
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from waiting import ManualClock as Clock

from gateway.config import BrokerConfig
from gateway.transport.link import MqttLink
from gateway.transport.takeover import (
    ALERT_HOLD_S,
    SILENT_DROP_WINDOW_S,
    SILENT_DROPS,
    Takeover,
    TakeoverDetector,
)
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.wms import WmsSimulator

CLIENT_ID = "gw-DC-1-scanners"


class Intruder:
    """A real paho client that keeps (re)connecting with a given client id."""

    def __init__(self, broker: MosquittoBroker, client_id: str,
                 protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5) -> None:
        self.connects = 0
        self._lock = threading.Lock()
        c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=client_id, protocol=protocol)
        # Back quickly, as a second gateway would (its backoff restarts at 0.5 s);
        # paho types the delays as int but waits fractions of a second fine.
        c.reconnect_delay_set(min_delay=0.2, max_delay=0.5)  # type: ignore[arg-type]
        c.on_connect = self._on_connect
        self.client = c
        self._broker = broker

    def _on_connect(self, *args: Any) -> None:
        with self._lock:
            self.connects += 1

    def start(self) -> None:
        """Connect and keep the id: reconnects whenever it is taken back."""
        self.client.connect(self._broker.host, self._broker.port, keepalive=30)
        self.client.loop_start()

    def go_away(self) -> None:
        """Disconnect cleanly and stop reconnecting."""
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def intruding(broker: MosquittoBroker, client_id: str,
              protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
              ) -> Iterator[Intruder]:
    """An ``Intruder`` that is gone when the block ends, whatever happened."""
    intruder = Intruder(broker, client_id, protocol)
    intruder.start()
    try:
        yield intruder
    finally:
        with contextlib.suppress(Exception):
            intruder.go_away()


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[MqttLink]:
    """Run the link's connection loop for the block."""
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(10):  # a link that ignores its cancel fails here
                await task


def events(logs: Sequence[MutableMapping[str, Any]], name: str
           ) -> list[MutableMapping[str, Any]]:
    """Captured log entries named ``name``."""
    return [e for e in logs if e["event"] == name]


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311],
                         ids=["intruder-v5", "intruder-v311"])
async def test_clash_is_named_counted_throttled_and_the_link_recovers(
        broker: MosquittoBroker, protocol: MQTTProtocolVersion) -> None:
    clock = Clock()
    cfg = BrokerConfig(id="site", host=broker.host, port=broker.port)
    link = MqttLink(cfg, CLIENT_ID, persistent=True, backoff_initial=0.2, clock=clock)
    with structlog.testing.capture_logs() as logs:
        async with running(link):
            with intruding(broker, CLIENT_ID, protocol):
                # The pair flaps: each reconnect takes the id back from the other.
                await wait_until(lambda: link.takeovers >= SILENT_DROPS + 3, 20,
                                 "repeated take-overs of the link's session")
                error = link.last_error
                alerts = link.alerts()
                assert error is not None
                assert f"same client id '{CLIENT_ID}'" in error, error
                assert "session taken over" in error and "two gateways or clients" in error
                assert any(f"broker site: {error}" in a.message for a in alerts), alerts
                assert "take-over(s) so far" in alerts[-1].message
                # One warning however often it flaps (the clock stands still);
                # only the silent drops before the pattern shows are logged as outages.
                taken = events(logs, "mqtt_session_taken_over")
                assert len(taken) == 1, taken
                assert taken[0]["client_id"] == CLIENT_ID
                assert taken[0]["evidence"] in ("reason_code", "silent_drops")
                # Not one line per take-over (a connect attempt that timed out on a
                # loaded machine is an outage line of its own and is not counted).
                drops = [e for e in events(logs, "mqtt_unavailable")
                         if not str(e.get("error", "")).startswith("TimeoutError")]
                assert len(drops) <= SILENT_DROPS, drops
                # Reconnects are logged only until the pattern shows (the first
                # connect, the drops before it, and at most one more when a drop
                # fell outside the pattern's window): fewer than the take-overs.
                assert len(events(logs, "mqtt_connected")) <= SILENT_DROPS + 2
                assert link.takeovers + 1 > SILENT_DROPS + 2
            # The other client went away: the link reconnects and keeps the id.
            await wait_until(link.connected.is_set, 10, "the link to reconnect")
            count = link.takeovers
            await asyncio.sleep(1.5)
            assert link.connected.is_set() and link.takeovers == count
            # The held-back count is written once the log interval has passed.
            clock.now += 61
            await wait_until(lambda: any(e.get("repeated") for e in
                                         events(logs, "mqtt_session_taken_over")), 5,
                             "the held-back take-overs to be logged")
            flushed = events(logs, "mqtt_session_taken_over")[-1]
            assert flushed["repeated"] >= 1 and flushed["takeovers"] == count
            # A clash that stopped leaves no alert behind once the hold has passed.
            assert link.alerts() and link.last_error is not None
            clock.now += ALERT_HOLD_S
            assert link.alerts() == []
            assert link.last_error is None


async def test_a_single_silent_drop_or_a_broker_restart_is_not_a_clash(
        broker: MosquittoBroker) -> None:
    clock = Clock()
    cfg = BrokerConfig(id="site", host=broker.host, port=broker.port)
    link = MqttLink(cfg, CLIENT_ID, persistent=True, backoff_initial=0.2, clock=clock)
    async with running(link):
        # Each restart closes the connection without a reason, as a clash does
        # on Mosquitto 2.0.11. Two quick ones may even be reconnected at the
        # first attempt; a slow one (down longer than the backoff) is not.
        for down_s in (0.0, 0.0, 1.5, 0.0):
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(down_s)
            await asyncio.to_thread(broker.start)
            await wait_until(link.connected.is_set, 15, "the link to reconnect")
        assert link.reconnects >= 4
        assert link.takeovers == 0
        assert link.last_error is None and link.alerts() == []


class TakeoverBroker:
    """A minimal MQTT 5 server that answers as Mosquitto >= 2.0.15 does on a take-over.

    It accepts each CONNECT, then sends the first ``kicks`` connections
    DISCONNECT 0x8E ("Session taken over") and closes them; later
    connections are left alone, as when the other client has gone away.
    """

    def __init__(self, kicks: int) -> None:
        self.kicks = kicks
        self.connects = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TakeoverBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @staticmethod
    async def _packet(reader: asyncio.StreamReader) -> int:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        await reader.readexactly(length)
        return first >> 4

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert await self._packet(reader) == 1  # CONNECT
            self.connects += 1
            writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK: success, no properties
            await writer.drain()
            if self.connects <= self.kicks:
                await asyncio.sleep(0.2)
                writer.write(b"\xe0\x02\x8e\x00")  # DISCONNECT 0x8E, no properties
                await writer.drain()
                return
            while True:
                if await self._packet(reader) == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_reason_code_0x8e_is_named_at_once() -> None:
    clock = Clock()
    with structlog.testing.capture_logs() as logs:
        async with TakeoverBroker(kicks=2) as server:
            cfg = BrokerConfig(id="site", host="127.0.0.1", port=server.port)
            link = MqttLink(cfg, CLIENT_ID, persistent=True, backoff_initial=0.2, clock=clock)
            async with running(link):
                await wait_until(lambda: server.connects >= 3 and link.connected.is_set(), 10,
                                 "two take-overs and a third connection")
                await asyncio.sleep(0.5)
                assert link.connected.is_set() and link.takeovers == 2
                error = link.last_error
                assert error is not None and error.startswith(
                    "the broker closed this connection because another client connected with "
                    f"the same client id '{CLIENT_ID}' (session taken over)"), error
                assert [a.message for a in link.alerts()] == [
                    f"broker site: {link.takeover.alert()}"]
    taken = events(logs, "mqtt_session_taken_over")
    assert [e["evidence"] for e in taken] == ["reason_code"]  # the second is held back
    assert events(logs, "mqtt_unavailable") == []


def test_detector_reason_code_is_certain_silent_drops_need_a_pattern() -> None:
    clock = Clock()
    d = TakeoverDetector("gw-a", keepalive=30, clock=clock)
    assert d.connected() is None
    found = d.dropped(from_server=True, reason_code=142)
    assert found is not None and found.evidence == "reason_code" and d.takeovers == 1

    def silent_drop_and_reconnect() -> Takeover | None:
        clock.now += 1
        assert d.dropped(from_server=False, reason_code=128) is None
        return d.connected()

    # Silent drops, each reconnected at once: too few are nothing, then a clash.
    assert d.connected() is None
    for _ in range(SILENT_DROPS - 1):
        assert silent_drop_and_reconnect() is None
    third = silent_drop_and_reconnect()
    assert third is not None and third.evidence == "silent_drops"
    assert "same client id 'gw-a'" in third.message
    assert d.takeovers == 1 + SILENT_DROPS  # earlier silent drops counted once recognised
    assert silent_drop_and_reconnect() is not None
    assert d.takeovers == 2 + SILENT_DROPS
    # A failed connect after a silent drop (broker away) clears the evidence.
    clock.now += SILENT_DROP_WINDOW_S + 1
    for _ in range(SILENT_DROPS):
        clock.now += 1
        d.dropped(from_server=False, reason_code=128)
        d.connect_failed()
        assert d.connected() is None
    # A drop after a connection older than the keepalive is a timeout's signature.
    for _ in range(SILENT_DROPS):
        clock.now += 31
        assert d.dropped(from_server=False, reason_code=128) is None
        assert d.connected() is None
    # Other reason codes from the broker, and our own drops, are not take-overs.
    assert d.dropped(from_server=True, reason_code=139) is None
    d.connected()
    assert d.dropped(from_server=False, reason_code=128, by_us=True) is None
    assert d.takeovers == 2 + SILENT_DROPS
    # The alert is held for a while after the last take-over, then cleared.
    assert d.alert() is not None
    clock.now += ALERT_HOLD_S
    assert d.alert() is None
    d.connected()
    d.dropped(from_server=True, reason_code=142)
    alert = d.alert()
    assert alert is not None and f"{3 + SILENT_DROPS} take-over(s) so far" in alert
    clock.now += ALERT_HOLD_S
    assert d.alert() is None and d.message() is None


async def test_gateway_status_names_the_clash_of_drivers_and_sink(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    fleet = {"id": "amr-fleet", "driver": "vda5050", "broker": "site", "manufacturer": "ACME"}
    cfg = site(tmp_path, broker, wms, scanners=1, mqtt_sink=True, devices=[fleet])
    ids = {"scanner": "wh-gw-DC-EAST-1-site", "vda5050": "wh-gw-DC-EAST-1-site-vda5050",
           "sink": "wh-gw-DC-EAST-1-sink-mqtt-out"}
    with GatewayProcess(cfg) as gw:
        await start(gw)
        with contextlib.ExitStack() as stack:
            for cid in ids.values():
                stack.enter_context(intruding(broker, cid))

            def all_taken_over() -> bool:
                s = gw.status()
                return bool(s["devices"]["scan-01"]["session_takeovers"] >= 2
                        and s["devices"]["amr-fleet"]["session_takeovers"] >= 2
                        and s["sinks"]["mqtt-out"]["session_takeovers"] >= 2)

            await wait_until(all_taken_over, 30, "take-overs of all three connections")
            status = await asyncio.to_thread(gw.status)
            metrics = await asyncio.to_thread(gw.metrics)
        for cid in ids.values():
            assert any(f"same client id '{cid}'" in a for a in alert_messages(status)), (
                cid, status["alerts"])
            assert f'wh_mqtt_session_takeovers_total{{client_id="{cid}"}}' in metrics
        for dev in ("scan-01", "amr-fleet"):
            snap = status["devices"][dev]
            assert "session taken over" in snap["broker_error"], snap
        sink = status["sinks"]["mqtt-out"]
        assert f"same client id '{ids['sink']}'" in sink["alert"]
        assert "session taken over" in sink["last_error"]
        # A line per connection, not per flap.
        lines = await asyncio.to_thread(gw.log_events, "mqtt_session_taken_over")
        assert sorted(e["client_id"] for e in lines) == sorted(ids.values())
        # The intruders are gone: every connection comes back and stays.
        await wait_until(lambda: gw.status()["ready"], 15, "the gateway ready again")
