"""The protocols components speak: a running driver, its ingest hand-off, an upstream sink."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from gateway.core.alert import Alert
from gateway.core.errors import IngestError
from gateway.core.events import Signal
from gateway.core.records import IngestDeadLetter, Record, Row, SinkDeadLetter

DeviceT = TypeVar("DeviceT")


class Driver(Protocol):
    """A running driver, as the gateway process sees it."""

    #: Task name, e.g. ``modbus-conveyor-1`` (unique in the process).
    name: str

    async def run(self) -> None:
        """Read devices until cancelled; reconnect on faults, never raise for them."""

    def pause(self) -> None:
        """Stop taking new input (shutdown step 1); what was taken still commits."""

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-device figures for the status API, keyed by device id."""
        ...

    def alerts(self) -> list[Alert]:
        """Problems a site engineer should see now (e.g. a device unavailable)."""
        ...

    def ready(self) -> bool:
        """True when the gateway's own links are up (an MQTT broker connection).

        A field device being unavailable is an alert, not unreadiness: the
        gateway still serves every other device. Polling drivers return True.
        """
        ...


class Sink(Protocol):
    """An upstream destination.

    ``deliver`` returns only once every row is either delivered or
    permanently rejected (returned as dead letters); it retries transient
    failures itself, forever, and is cancellable at any await.
    """

    id: str
    routes: frozenset[str] | None
    batch_max: int

    async def run(self) -> None:
        """Background work (connections); runs until cancelled."""

    async def deliver(self, rows: list[Row]) -> list[SinkDeadLetter]:
        """Deliver ``rows`` (in ``seq`` order); return the permanently rejected ones."""
        ...

    async def close(self) -> None:
        """Release connections."""

    def snapshot(self) -> dict[str, Any]:
        """State for the status API."""
        ...


#: Called with what a driver passed as ``raw``; returns the dead letter's payload and context.
Describe = Callable[[Any], tuple[bytes, Mapping[str, Any]]]


class Handoff(Protocol):
    """Where the ingest pipelines hand their records: the store's group commit.

    ``buffer.service.Committer`` in the gateway; the commissioning dry run
    (``warehouse-gateway try``) puts a stand-in here that keeps nothing.
    """

    @property
    def pending(self) -> int:
        """Units waiting for a commit."""
        ...

    @property
    def saturated(self) -> bool:
        """True when sources should stop reading until ``on_drained`` fires."""
        ...

    def submit(self, records: Sequence[Record], on_commit: Callable[[], None] | None) -> None:
        """Queue one source message's records; ``on_commit`` runs after they commit.

        Never blocks; raises ``buffer.service.Backpressure`` when too much waits.
        """

    async def append(self, records: Sequence[Record]) -> None:
        """Queue records and wait until they are committed."""

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` whenever the pending units fall back after saturation."""


class DeviceIngest(Protocol):
    """One device's ingest pipeline, as its driver sees it (gateway/ingest.py).

    The driver turns protocol input into ``Signal``s; the pipeline feeds them
    to the device's recognizer, turns a failure into an ingest dead letter
    (counted and logged once per device and kind) and hands the records to
    the store, acknowledging the source after they commit. ``raw`` is the
    driver's own handle on the input (an MQTT message...): it is only looked at,
    through the ``describe`` given to ``bind``, when a dead letter is made.
    """

    #: The device id.
    device: str
    #: The points the recognizer reads (``None``: every point).
    inputs: frozenset[str] | None

    def event_fields(self, point: str) -> frozenset[str] | None:
        """The fields of ``point``'s events its recognizer reads (``None``: every field)."""
        ...

    def bind(self, describe: Describe, *, on_saturated: Callable[[], None] | None = None,
             on_refused: Callable[[], None] | None = None) -> None:
        """Set how to describe raw input, and what to do when the store holds back."""

    def accept(self, sig: Signal, raw: Any, ack: Callable[[], None] | None) -> None:
        """Recognize one signal and hand its records off; ``ack`` runs after they commit."""

    def reject(self, err: IngestError, raw: Any, ack: Callable[[], None] | None) -> None:
        """Hand off input that could not become a signal, as an ingest dead letter."""

    def recognize(self, sig: Signal, raw: Any) -> Sequence[Record]:
        """The records of one signal (a dead letter when the recognizer fails)."""
        ...

    def recognize_poll(self, signals: Sequence[Signal], receive_time: float,
                       raw: Any) -> Sequence[Record]:
        """The records of one poll's changed points (a dead letter when the recognizer fails)."""
        ...

    def dead_letter(self, err: IngestError, payload: bytes,
                    context: Mapping[str, Any]) -> IngestDeadLetter:
        """Count bad input and keep it whole as an ingest dead letter."""
        ...

    def hand_off(self, records: Sequence[Record], ack: Callable[[], None] | None) -> bool:
        """Queue records for the next group commit without waiting (``ack`` after commit).

        Returns False when the committer refused them: with ``on_refused``
        bound it was called (the source redelivers), else wait with ``append``.
        """
        ...

    async def append(self, records: Sequence[Record]) -> None:
        """Hand records off and wait until they are committed (or there is room)."""

    @property
    def saturated(self) -> bool:
        """True while the store holds the committer back (stop reading the source)."""
        ...

    def source_key(self, sig: Signal) -> str:
        """The source key the recognizer derives for ``sig`` (to drop re-read input)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """The recognizer's figures and the ingest error counts, for the status API."""
        ...

    def alerts(self) -> list[Alert]:
        """What the recognizer has seen that a site engineer should see now."""
        ...


class Ingest(Protocol):
    """The ingest hand-off of one driver: a pipeline per device it serves."""

    #: Messages for no configured device (acknowledged and dropped).
    unrouted: int

    def device(self, device_id: str) -> DeviceIngest:
        """The pipeline of one device."""
        ...

    def unrouted_message(self, topic: str, driver: str) -> None:
        """Count a message no device claims (the first one is logged)."""

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the store takes input again after holding back."""

    async def run(self) -> None:
        """Write held-back ingest error counts periodically, until cancelled."""


@dataclass(frozen=True, slots=True)
class DriverContext(Generic[DeviceT]):
    """What a driver is built from: who it is, what it reads, where its input goes."""

    #: The site id (part of every event id).
    site: str
    #: The device config models this driver serves (several for one MQTT broker).
    devices: tuple[DeviceT, ...]
    #: The ingest hand-off (one pipeline per device).
    ingest: Ingest
    #: The MQTT broker of MQTT devices (a ``gateway.transport.config.BrokerConfig``).
    broker: Any = None
    #: Wall clock (tests inject one).
    clock: Callable[[], float] = time.time
    #: A commissioning dry run (``warehouse-gateway try``): leave no state at the
    #: source. MQTT drivers connect with a clean session under a client id of
    #: their own, so the gateway's persistent session is never touched.
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink is built from."""

    site: str
    #: Broker configs by id (``gateway.transport.config.BrokerConfig``).
    brokers: Mapping[str, Any] = field(default_factory=dict)
