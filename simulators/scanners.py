"""Barcode scanner fleet: publishes reads over MQTT as fixed-mount scanners do.

Each read is one JSON payload at QoS 1 on ``{topic_prefix}/{scanner}/reads``::

    {"code": "TOTE-000123", "read_id": 17,
     "timestamp": "2026-11-23T10:15:02.350Z", "symbology": "CODE128"}

``read_id`` grows per scanner and can start anywhere, so a restarted simulator
continues where the last one stopped. Besides good reads the fleet produces
the field's imperfections on request: no-reads (code ``NOREAD``), physical
double reads (the same code again 20-80 ms later under a new ``read_id``) and
QoS 1 redeliveries (the same payload bytes twice).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import heapq
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["PublishedRead", "ReadKind", "ScannerFleet", "add_arguments", "run", "run_scanners"]

log = structlog.get_logger(__name__)

ReadKind = Literal["read", "no_read", "double", "redelivery"]

NO_READ_CODE = "NOREAD"
SYMBOLOGY = "CODE128"
_CONNECT_TIMEOUT_S = 10.0
_DOUBLE_DELAY_S = (0.020, 0.080)
_PROGRESS_LOG_S = 10.0


@dataclass(frozen=True, slots=True)
class PublishedRead:
    """One message the fleet published (and the broker acknowledged)."""

    scanner: str
    topic: str
    read_id: int
    code: str
    timestamp: str
    payload: bytes
    kind: ReadKind


def _iso_ms(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


class ScannerFleet:
    """A fleet of scanners ``scan-01``, ``scan-02``, ... sharing one MQTT connection.

    Publishing is blocking and goes through a bounded window of unacknowledged
    messages: paho's QoS 1 publisher slows down badly when many messages are
    queued inside it at once.
    """

    def __init__(
        self,
        host: str,
        port: int,
        count: int = 4,
        topic_prefix: str = "site/DC-EAST-1/scanners",
        seed: int = 1,
        client_id: str = "scanner-sim",
        start_read_id: int = 1,
        no_read_rate: float = 0.0,
        double_read_rate: float = 0.0,
        redeliver_rate: float = 0.0,
        window: int = 200,
        tote_pool: int = 1_000_000,
        ack_timeout: float | None = 30.0,
    ) -> None:
        if count < 1 or window < 1 or tote_pool < 1:
            raise ValueError("count, window and tote_pool must be >= 1")
        self.host = host
        self.port = port
        self.topic_prefix = topic_prefix.rstrip("/")
        self.scanners = [f"scan-{i:02d}" for i in range(1, count + 1)]
        self.no_read_rate = no_read_rate
        self.double_read_rate = double_read_rate
        self.redeliver_rate = redeliver_rate
        self.window = window
        self.ack_timeout = ack_timeout
        self.published = 0
        """Messages handed to the broker so far, all kinds (acknowledged once
        :meth:`publish` or :meth:`run` has returned)."""
        self._rng = random.Random(seed)
        self._tote_pool = tote_pool
        # Codes run through the pool in order from a seeded start: random draws
        # would soon repeat a code at one scanner within the gateway's debounce
        # window during a flood, and it would rightly drop that as a double read.
        self._next_tote = self._rng.randrange(tote_pool)
        self._next_read_id = dict.fromkeys(self.scanners, start_read_id)
        self._turn = 0
        self._topics = {s: f"{self.topic_prefix}/{s}/reads" for s in self.scanners}
        self._stamp_ms = -1
        self._stamp = ""
        # Publishing state, guarded by _cond: messages sent but not yet
        # acknowledged (_inflight, at most _limit) and messages waiting for
        # room in the window (_outbox, at most `window`).
        self._cond = threading.Condition()
        self._limit = window
        self._low_water = window // 2
        self._inflight = 0
        self._acked = 0
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._failed: list[tuple[int, str]] = []
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        # paho's own in-flight limit makes every PUBACK scan all outgoing
        # messages (O(window) per ack); unlimited skips that, and our window
        # is the limit instead.
        self._client.max_inflight_messages_set(0)
        # Reconnect quickly after a broker restart: tests and demos restart it.
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish

    @property
    def next_read_ids(self) -> dict[str, int]:
        """The read id each scanner uses next (pass as ``start_read_id`` to resume)."""
        return dict(self._next_read_id)

    # -- connection --------------------------------------------------------

    def connect(self) -> None:
        """Connect and start paho's network thread; wait for CONNACK (10 s)."""
        self._connected.clear()
        self._connect_error = None
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(_CONNECT_TIMEOUT_S) or self._connect_error:
            self._client.loop_stop()
            reason = self._connect_error or "no CONNACK within 10 s"
            raise ConnectionError(
                f"scanner fleet cannot connect to {self.host}:{self.port}: {reason}"
            )
        log.info("scanners_connected", host=self.host, port=self.port, scanners=len(self.scanners))

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> ScannerFleet:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connect_error = str(reason_code)
        else:
            # Sending more than the broker's Receive Maximum is a protocol error.
            receive_max = getattr(properties, "ReceiveMaximum", None)
            with self._cond:
                self._limit = min(self.window, receive_max or self.window)
        self._connected.set()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        # Runs in paho's network thread with its outgoing-message lock held.
        # The caller's thread never holds our condition while calling into
        # paho, so taking it here (and publishing under it) cannot deadlock.
        with self._cond:
            self._inflight -= 1
            self._acked += 1
            if reason_code.is_failure:
                self._failed.append((mid, str(reason_code)))
            # Refill the window from here: handing every PUBACK back to the
            # caller's thread makes the two threads fight over the GIL and
            # halves the flood rate.
            outbox = self._outbox
            while outbox and self._inflight < self._limit:
                topic, payload = outbox.popleft()
                self._inflight += 1
                client.publish(topic, payload, qos=1)
            # Wake the producer in bursts (outbox half empty), not per PUBACK.
            if len(outbox) <= self._low_water:
                self._cond.notify_all()

    # -- publishing --------------------------------------------------------

    def _send(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 in order, within the window (does not wait for PUBACK)."""
        with self._cond:
            self._wait(lambda: len(self._outbox) < self.window)
            # Publish here only when nothing waits in the outbox, or this
            # message would overtake older ones.
            direct = not self._outbox and self._inflight < self._limit
            if direct:
                self._inflight += 1
            else:
                self._outbox.append((topic, payload))
        if direct:
            self._client.publish(topic, payload, qos=1)
        self.published += 1

    def _wait(self, done: Callable[[], bool]) -> None:
        # Caller holds self._cond.
        while not done():
            acked = self._acked
            # Times out only when no PUBACK at all came for ack_timeout (None:
            # wait forever, e.g. across a long broker outage).
            if not self._cond.wait(self.ack_timeout) and self._acked == acked:
                raise TimeoutError(
                    f"no PUBACK for {self.ack_timeout} s ({self._inflight} in flight, "
                    f"{len(self._outbox)} waiting)"
                )
        if self._failed:
            failed, self._failed = self._failed, []
            raise RuntimeError(f"broker refused {len(failed)} message(s), first: {failed[0]}")

    def flush(self) -> None:
        """Block until every published message is acknowledged."""
        with self._cond:
            self._wait(lambda: not self._outbox and self._inflight == 0)

    def publish_raw(self, topic: str, payload: bytes) -> None:
        """Publish one message at QoS 1 and wait for its PUBACK."""
        self._send(topic, payload)
        self.flush()

    def _make_read(self, scanner: str, code: str, kind: ReadKind) -> PublishedRead:
        read_id = self._next_read_id[scanner]
        self._next_read_id[scanner] = read_id + 1
        ms = time.time_ns() // 1_000_000
        if ms != self._stamp_ms:
            # A flood makes many reads per millisecond: format each one once.
            self._stamp_ms, self._stamp = ms, _iso_ms(ms)
        timestamp = self._stamp
        # Formatted by hand because this is the hot path of a flood; codes
        # come from our own pool (or NOREAD) and need no JSON escaping.
        payload = (
            f'{{"code":"{code}","read_id":{read_id},'
            f'"timestamp":"{timestamp}","symbology":"{SYMBOLOGY}"}}'
        ).encode()
        topic = self._topics[scanner]
        return PublishedRead(scanner, topic, read_id, code, timestamp, payload, kind)

    def _next_code(self) -> str:
        code = f"TOTE-{self._next_tote:06d}"
        self._next_tote = (self._next_tote + 1) % self._tote_pool
        return code

    def run(
        self,
        total: int | None = None,
        rate: float | None = None,
        stop: threading.Event | None = None,
        on_read: Callable[[PublishedRead], None] | None = None,
    ) -> int:
        """Publish scan attempts until ``total`` are done or ``stop`` is set.

        ``total`` counts scan attempts (reads and no-reads); double reads and
        redeliveries come on top. ``rate`` is attempts per second across the
        fleet (``None``: as fast as the window allows). Waits for every PUBACK
        and returns the number of messages published.
        """
        rng = self._rng
        doubles: list[tuple[float, int, str, str]] = []  # (due, tiebreak, scanner, code)
        started = time.monotonic()
        first = self.published
        attempt = 0

        def emit(read: PublishedRead) -> None:
            self._send(read.topic, read.payload)
            if on_read is not None:
                on_read(read)
            if self.redeliver_rate and rng.random() < self.redeliver_rate:
                self._send(read.topic, read.payload)
                if on_read is not None:
                    on_read(dataclasses.replace(read, kind="redelivery"))

        def emit_due_doubles(now: float) -> None:
            while doubles and doubles[0][0] <= now:
                _, _, scanner, code = heapq.heappop(doubles)
                emit(self._make_read(scanner, code, "double"))

        while (total is None or attempt < total) and not (stop is not None and stop.is_set()):
            if rate is not None:
                due = started + attempt / rate
                if time.monotonic() - due > 1.0:
                    # Held up (broker away, window full): carry on at the
                    # rate from now rather than burst to catch up.
                    started = time.monotonic() - attempt / rate
                    due = started + attempt / rate
                while (now := time.monotonic()) < due:
                    emit_due_doubles(now)
                    wait = min(due, doubles[0][0]) if doubles else due
                    if stop is not None:
                        if stop.wait(max(0.0, wait - now)):
                            break
                    else:
                        time.sleep(max(0.0, wait - now))
                if stop is not None and stop.is_set():
                    break
            emit_due_doubles(time.monotonic())
            scanner = self.scanners[self._turn]
            self._turn = (self._turn + 1) % len(self.scanners)
            attempt += 1
            if self.no_read_rate and rng.random() < self.no_read_rate:
                emit(self._make_read(scanner, NO_READ_CODE, "no_read"))
                continue
            read = self._make_read(scanner, self._next_code(), "read")
            emit(read)
            if self.double_read_rate and rng.random() < self.double_read_rate:
                delay = rng.uniform(*_DOUBLE_DELAY_S)
                heapq.heappush(doubles, (time.monotonic() + delay, attempt, scanner, read.code))

        # A double read still pending is a physical event that has happened:
        # send it at its time even when stopping.
        while doubles:
            time.sleep(max(0.0, doubles[0][0] - time.monotonic()))
            emit_due_doubles(time.monotonic())
        self.flush()
        return self.published - first

    def publish(self, total: int, rate: float | None = None) -> list[PublishedRead]:
        """Publish ``total`` scan attempts round-robin over the scanners.

        Blocks until every message is acknowledged; returns all published
        messages (including double reads and redeliveries) in order.
        """
        out: list[PublishedRead] = []
        self.run(total=total, rate=rate, on_read=out.append)
        return out


# -- command line ----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``scanners`` sub-command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--count", type=int, default=4, help="number of scanners")
    parser.add_argument("--rate", type=float, default=5.0, help="reads per second, whole fleet")
    parser.add_argument("--total", type=int, default=None, help="stop after N reads")
    parser.add_argument("--topic-prefix", default="site/DC-EAST-1/scanners")
    parser.add_argument("--no-read-rate", type=float, default=0.0)
    parser.add_argument("--double-read-rate", type=float, default=0.0)
    parser.add_argument("--redeliver-rate", type=float, default=0.0)
    parser.add_argument("--start-read-id", type=int, default=1)
    parser.add_argument("--client-id", default="scanner-sim")
    parser.add_argument("--seed", type=int, default=1)


async def run_scanners(args: argparse.Namespace) -> None:
    """Publish at ``args.rate`` until ``args.total`` or SIGINT/SIGTERM."""
    fleet = ScannerFleet(
        args.host,
        args.port,
        count=args.count,
        topic_prefix=args.topic_prefix,
        seed=args.seed,
        client_id=args.client_id,
        start_read_id=args.start_read_id,
        no_read_rate=args.no_read_rate,
        double_read_rate=args.double_read_rate,
        redeliver_rate=args.redeliver_rate,
        # Runs unattended for days: wait out broker restarts, however long.
        ack_timeout=None,
    )
    await asyncio.to_thread(fleet.connect)
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rate = args.rate if args.rate and args.rate > 0 else None
    worker = asyncio.create_task(
        asyncio.to_thread(fleet.run, args.total, rate, stop), name="scanner-publisher"
    )
    try:
        while not worker.done():
            await asyncio.wait({worker}, timeout=_PROGRESS_LOG_S)
            log.info("scanners_published", published=fleet.published)
        await worker
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await worker
        await asyncio.to_thread(fleet.close)
    log.info("scanners_done", published=fleet.published, next_read_ids=fleet.next_read_ids)


def run(args: argparse.Namespace) -> int:
    """Run the ``scanners`` sub-command; return the exit code."""
    asyncio.run(run_scanners(args))
    return 0
