"""The protocols components speak: a running driver, an upstream sink."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.core.records import Row, SinkDeadLetter


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

    def alerts(self) -> list[str]:
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
