"""One paho MQTT client driven by the asyncio event loop (no network thread).

paho's receive path is about half the CPU of aiomqtt's, and it lets us
acknowledge QoS 1 messages manually, after the store commits. The socket is
registered with the event loop (``add_reader``/``add_writer``), so every paho
callback runs on the loop thread. Only the blocking TCP connect runs on a
worker thread; socket callbacks it triggers are marshalled back to the loop.

Acknowledgements are tied to a connection *generation*: a packet id from a
previous connection must never be acknowledged on a new one (it would ack a
different message). A message whose connection died before its ack is simply
redelivered by the broker; the store deduplicates it by event id.

Every drop is shown to a ``TakeoverDetector`` (gateway/transport/takeover.py), so
that another client using the same client id is named as such in the log,
``last_error`` and the alerts instead of a bare "Unspecified error".
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.core.aio import raise_if_cancelling
from gateway.core.alert import Alert
from gateway.core.backoff import Backoff
from gateway.core.config import read_secret
from gateway.core.throttle import LogThrottle
from gateway.core.tls import INSECURE_WARNING, client_context, describe_tls_error
from gateway.transport.config import BrokerConfig
from gateway.transport.takeover import Takeover, TakeoverDetector

log = structlog.get_logger(__name__)

#: A flapping client-id clash reconnects every second; its lines are held to
#: one per key and interval (with ``repeated=N``).
_CLASH_LOG_INTERVAL_S = 60.0

#: Bytes read from the kernel at once; paho asks for 1-2 bytes at a time.
_RECV_CHUNK = 256 * 1024


class _TlsSocket:
    """An ``SSLSocket`` that remembers the TLS error a read ended with.

    paho turns a failed read into a bare "connection lost"; with TLS 1.3 a
    broker refusing the client's certificate says so only in an alert read
    after the handshake, and that alert is what the operator needs to see.
    """

    __slots__ = ("_sock", "error")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.error: ssl.SSLError | None = None

    def recv(self, n: int) -> bytes:
        try:
            data: bytes = self._sock.recv(n)
        except (ssl.SSLWantReadError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise  # no data yet, or the peer went away: not a TLS problem
        except ssl.SSLError as err:
            self.error = err
            raise
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _BufferedSocket:
    """A user-space read buffer in front of paho's socket.

    paho reads a packet with three or four ``recv`` calls (type byte, length
    bytes, body); at tens of thousands of messages a second those system calls
    cost as much as the rest of the receive path. This wrapper reads up to
    ``_RECV_CHUNK`` at once and serves paho's small reads from memory. Every
    other socket method is delegated. Not used for TLS (paho relies on
    ``SSLSocket.pending``).
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            data: bytes = self._sock.recv(_RECV_CHUNK)  # BlockingIOError reaches paho
            if not data:
                return data
            self._buf, self._pos = data, 0
        end = self._pos + n
        out = self._buf[self._pos:end]
        self._pos = end
        return out

    def buffered(self) -> bool:
        """True while bytes already read from the kernel wait in the buffer."""
        return self._pos < len(self._buf)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _install_fast_properties() -> None:
    """Make paho's MQTT 5 ``Properties`` cheap to create for every PUBLISH.

    paho builds two dictionaries and a list of 27 entries for each instance,
    and ``unpack`` first runs ``clear`` (27 ``hasattr`` calls) — about 20 µs
    per received message, a fifth of the gateway's ingest CPU. The subclass
    shares those tables at class level; behaviour is otherwise unchanged.
    Installed only into the module that decodes packets, and only when paho
    still has the shape this relies on.
    """
    from paho.mqtt import _packet, properties

    base = properties.Properties
    if getattr(_packet, "Properties", None) is not base:
        return
    template = base(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if not all(hasattr(template, a) for a in ("names", "types", "properties")):
        return

    class FastProperties(base):  # type: ignore[misc, valid-type]
        names = template.names
        types = template.types
        properties = template.properties

        def __init__(self, packetType: int) -> None:
            object.__setattr__(self, "packetType", packetType)

        def clear(self) -> None:
            d = self.__dict__
            for key in [k for k in d if k != "packetType"]:
                del d[key]

        def isEmpty(self) -> bool:
            return len(self.__dict__) <= 1

    setattr(_packet, "Properties", FastProperties)  # noqa: B010


_install_fast_properties()

MessageHandler = Callable[[paho.MQTTMessage, int], None]


class LinkDown(Exception):
    """The broker connection is down (or went down before a PUBACK arrived)."""


class PublishRefused(Exception):
    """The broker answered a publish with a failure reason code (e.g. not authorized)."""


class MqttLink:
    """A reconnecting MQTT v5 connection owned by the event loop."""

    def __init__(
        self,
        broker: BrokerConfig,
        client_id: str,
        *,
        persistent: bool,
        manual_ack: bool = False,
        on_message: MessageHandler | None = None,
        subscriptions: list[tuple[str, int]] | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self._persistent = persistent
        self._subscriptions = subscriptions or []
        self._on_message = on_message
        self._backoff = Backoff(backoff_initial, backoff_max)
        self.generation = 0
        self.connected = asyncio.Event()
        self._down = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._misc: asyncio.Task[None] | None = None
        self._pubacks: dict[int, asyncio.Future[None]] = {}
        self._reading_paused = False
        self._sock: Any = None
        self._reported_down = False
        self._down_is_takeover = False
        self._last_error: str | None = None
        self.messages_received = 0
        self.reconnects = 0
        #: Wall time the connection was lost or a connect first failed (None: up or never tried).
        self.down_since: float | None = None
        self.takeover = TakeoverDetector(client_id, broker.keepalive, clock)
        self._throttle = LogThrottle(log, _CLASH_LOG_INTERVAL_S, clock)

        c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
        )
        c.max_inflight_messages_set(max(20, broker.receive_maximum))
        c.max_queued_messages_set(0)
        if broker.username is not None:
            password = (
                read_secret(broker.password_file, "password") if broker.password_file else None
            )
            c.username_pw_set(broker.username, password)
        self._tls_error: ssl.SSLError | None = None
        if broker.tls:
            c.tls_set_context(client_context(broker))
            if broker.insecure:
                log.warning("mqtt_tls_insecure", broker=broker.id, client_id=client_id,
                            warning=INSECURE_WARNING)
        if will is not None:
            topic, payload, qos, retain = will
            c.will_set(topic, payload, qos, retain)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._handle_message
        c.on_publish = self._on_publish
        c.on_socket_open = self._socket_open
        c.on_socket_close = self._socket_close
        c.on_socket_register_write = self._register_write
        c.on_socket_unregister_write = self._unregister_write
        self.client = c

    # -- socket plumbing (all on the loop thread) ------------------------------------

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        if self._loop_thread == threading.get_ident():
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Runs before paho reads anything from this socket (see the class docstrings).
        sock = _TlsSocket(sock) if self.broker.tls else _BufferedSocket(sock)
        client._sock = sock
        self._in_loop(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        self._reading_paused = False
        self._loop.add_reader(sock, self._readable)
        if self._misc is None or self._misc.done():
            self._misc = self._loop.create_task(
                self._misc_loop(), name=f"mqtt-misc-{self.client_id}"
            )

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_socket, sock)

    def _remove_socket(self, sock: Any) -> None:
        assert self._loop is not None
        if isinstance(sock, _TlsSocket) and sock.error is not None:
            self._tls_error = sock.error
        if sock is self._sock:
            self._sock = None
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(Exception):
            self._loop.add_writer(sock, self._writable)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(Exception):
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        c = self.client
        # Read every complete packet the socket holds before yielding to the loop:
        # one selector round trip per packet would double the receive cost.
        for _ in range(512):
            if c._sock is None or self._reading_paused:
                return
            rc = c._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return
            if rc > 0:
                c._loop_rc_handle(rc)
                return
        # Stopped with bytes still buffered: the socket will not signal them.
        sock = c._sock
        if isinstance(sock, _BufferedSocket) and sock.buffered() and self._loop is not None:
            self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        self.client.loop_write()

    async def _misc_loop(self) -> None:
        # A periodic tick (keepalive PINGREQ, ping timeouts), not a wait on a condition.
        while self.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._throttle.flush()  # counts held back during a take-over flap
            await asyncio.sleep(1.0)

    def pause_reading(self) -> None:
        """Stop reading the socket: TCP flow control then holds the broker back.

        The broker's own in-flight window cannot be relied on (Mosquitto 2.0
        releases its whole offline queue once the first messages are acked).
        """
        if not self._reading_paused and self._sock is not None and self._loop is not None:
            self._reading_paused = True
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        """Read again after ``pause_reading``."""
        if self._reading_paused and self._sock is not None and self._loop is not None:
            self._reading_paused = False
            self._loop.add_reader(self._sock, self._readable)
            # Packets may already sit in paho's buffer: the socket may not signal.
            self._loop.call_soon(self._readable)

    def drop_connection(self) -> None:
        """Close the connection; the broker redelivers what was not acknowledged."""
        if self._sock is not None:
            self._close_socket()
            self._on_disconnect(self.client, None, None, "dropped by gateway", None)

    # -- callbacks ------------------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"connect refused: {reason}"
            self.takeover.connect_failed()
            return
        self.generation += 1
        self._tls_error = None  # a TLS error of an earlier socket is not this one's
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos)
        self.last_error = None
        self._down_is_takeover = False
        found = self.takeover.connected()
        if found is not None:
            self._report_takeover(found)
        fields = {"broker": self.broker.id, "client_id": self.client_id,
                  "session_present": bool(flags.session_present)}
        if self.takeover.recent():
            # Reconnects of a take-over flap: one line a minute, with the count.
            self._throttle.log("info", "mqtt_connected", ("connected",), **fields)
        else:
            log.info("mqtt_connected", **fields)
        self._reported_down = False
        self.down_since = None
        self._down.clear()
        self.connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        was_up = self.connected.is_set()
        self.connected.clear()
        self._down.set()
        sock = client._sock
        tls_error = sock.error if isinstance(sock, _TlsSocket) else self._tls_error
        self._tls_error = None
        tls = describe_tls_error(tls_error, self._peer) if tls_error is not None else None
        self.last_error = tls or f"disconnected: {self._describe(flags, reason)}"
        if was_up:
            self._classify_drop(flags, reason)
        for fut in self._pubacks.values():
            if not fut.done():
                fut.set_exception(LinkDown(f"broker {self.broker.id}: connection lost"))
        self._pubacks.clear()

    @staticmethod
    def _describe(flags: Any, reason: Any) -> str:
        if (flags is not None and not flags.is_disconnect_packet_from_server
                and getattr(reason, "value", None) == 128):
            # paho's word for a socket that closed without a DISCONNECT packet.
            return "connection closed by the broker or the network without a reason code"
        return str(reason)

    def _classify_drop(self, flags: Any, reason: Any) -> None:
        found = self.takeover.dropped(
            from_server=bool(flags is not None and flags.is_disconnect_packet_from_server),
            reason_code=getattr(reason, "value", None),
            by_us=flags is None,  # drop_connection passes no flags
        )
        if found is not None:
            self._report_takeover(found)
        elif not (self.takeover.silent_drop_pending() and self.takeover.recent()):
            return
        # A take-over, or the next silent drop of a flap already recognised: the
        # take-over line stands for this outage's mqtt_unavailable, unless a
        # connect attempt then fails (see run).
        self.last_error = self.takeover.message()
        self._reported_down = True
        self._down_is_takeover = True

    def _report_takeover(self, found: Takeover) -> None:
        self._throttle.log("warning", "mqtt_session_taken_over", ("taken_over",),
                           broker=self.broker.id, client_id=self.client_id,
                           takeovers=self.takeover.takeovers, evidence=found.evidence,
                           error=found.message)

    @property
    def _peer(self) -> str:
        return f"broker {self.broker.id} ({self.broker.host}:{self.broker.port})"

    @property
    def last_error(self) -> str | None:
        """Why the link is or was last down; a recent client-id clash while up."""
        return self._last_error or self.takeover.message()

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._last_error = value

    @property
    def takeovers(self) -> int:
        """Connection losses attributed to another client using this client id."""
        return self.takeover.takeovers

    def alerts(self) -> list[Alert]:
        """Status-page alerts: the broker unavailable, a recent client-id clash."""
        out: list[Alert] = []
        if self.broker.tls and self.broker.insecure:
            out.append(Alert("insecure_transport", f"broker:{self.broker.id}",
                             f"broker {self.broker.id}: {INSECURE_WARNING}"))
        clash = self.takeover.alert()
        subject = f"broker:{self.broker.id}"
        # Down because of the take-over itself: the clash alert says it all.
        down_for_the_clash = clash is not None and self._last_error == self.takeover.message()
        if not self.connected.is_set() and not down_for_the_clash:
            out.append(Alert("broker_unavailable", subject,
                             f"broker {self.broker.id} unavailable: {self.last_error}",
                             detail=self.last_error))
        if clash is not None:
            out.append(Alert("mqtt_client_id_clash", f"mqtt-client:{self.client_id}",
                             f"broker {self.broker.id}: {clash}",
                             figures={"client_id": self.client_id,
                                      "takeovers": self.takeover.takeovers}))
        return out

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.messages_received += 1
        if self._on_message is not None:
            self._on_message(msg, self.generation)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        fut = self._pubacks.pop(mid, None)
        if fut is not None and not fut.done():
            if reason.is_failure:
                fut.set_exception(
                    PublishRefused(f"broker {self.broker.id} refused publish: {reason}")
                )
            else:
                fut.set_result(None)

    # -- public API -----------------------------------------------------------------

    def ack(self, mid: int, generation: int) -> None:
        """Acknowledge a QoS 1 message, unless its connection has since died."""
        if generation == self.generation and self.connected.is_set():
            self.client.ack(mid, 1)

    def publish(self, topic: str, payload: bytes, qos: int = 1,
                retain: bool = False) -> asyncio.Future[None]:
        """Publish; the future resolves on PUBACK (QoS 1) or fails with ``LinkDown``."""
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        if not self.connected.is_set():
            fut.set_exception(LinkDown(f"broker {self.broker.id} is not connected"))
            return fut
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            fut.set_exception(LinkDown(f"publish failed: {paho.error_string(info.rc)}"))
        elif qos == 0:
            fut.set_result(None)
        else:
            self._pubacks[info.mid] = fut
        return fut

    async def run(self) -> None:
        """Connect, and reconnect with capped jittered backoff, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._persistent:
            props.SessionExpiryInterval = int(self.broker.session_expiry)
        props.ReceiveMaximum = self.broker.receive_maximum
        try:
            while True:
                raise_if_cancelling()
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can
                    # swallow a cancellation that comes with the result.
                    async with asyncio.timeout(15):
                        await self._loop.run_in_executor(None, self._connect_blocking, props)
                        await self.connected.wait()
                    self._backoff.reset()
                    await self._down.wait()
                    self.reconnects += 1
                except (OSError, TimeoutError) as err:
                    self.last_error = (describe_tls_error(err, self._peer)
                                       or f"{type(err).__name__}: {err}")
                    self.takeover.connect_failed()
                    if self._down_is_takeover:
                        # Not the other client after all: the broker is away.
                        self._down_is_takeover = self._reported_down = False
                if self.down_since is None:
                    self.down_since = time.time()
                if not self._reported_down:
                    log.warning("mqtt_unavailable", broker=self.broker.id,
                                client_id=self.client_id, error=self.last_error)
                    self._reported_down = True
                self._close_socket()
                await asyncio.sleep(self._backoff.next())
        finally:
            was_up = self.connected.is_set()
            self.connected.clear()
            with contextlib.suppress(Exception):
                self.client.disconnect()
                if was_up:
                    # paho only queues the DISCONNECT (the loop writes it): send it
                    # now, or the broker sees a lost connection and fires the will.
                    self.client.loop_write()
            self._close_socket()
            if self._misc is not None:
                self._misc.cancel()

    def _connect_blocking(self, props: Properties) -> None:
        self._down.clear()
        self.client.connect(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive,
            clean_start=not self._persistent,
            properties=props,
        )

    def _close_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            self._remove_socket(sock)
            with contextlib.suppress(Exception):
                self.client._sock_close()
