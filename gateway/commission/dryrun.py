"""The dry run's stand-ins for the store: a pipeline that reports, a hand-off that keeps nothing.

Invariants:

- nothing is stored: ``DryRunHandoff`` replaces the group commit and keeps no
  record; no store file is opened, created or locked;
- every record the device's pipeline makes is reported exactly once, with the
  signals it was made of when it came from ``recognize``/``recognize_poll``
  (``ObservingPipeline``), on its own when it was handed off without them (input
  that could not become a signal);
- the source's acknowledgement runs at once: the dry run's sources keep no
  state for it (an MQTT dry run is a clean session of its own, see
  ``DriverContext.dry_run``), so acknowledging only keeps the flow going.

The pipeline is the gateway's own ``DevicePipeline`` with the device's
recognizer from ``RECOGNIZERS``: what ``try`` prints is what the gateway would
make of the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import IngestError
from gateway.core.events import Signal
from gateway.core.records import IngestDeadLetter, Record
from gateway.ingest import DevicePipeline


@dataclass(frozen=True, slots=True)
class Observation:
    """What one input became: the signals read and the records made of them.

    ``signals`` is empty for input that could not become a signal (its dead
    letter is then the only record).
    """

    device: str
    signals: tuple[Signal, ...]
    records: tuple[Record, ...]


#: Called with every observation, in the order the driver produced them.
Report = Callable[[Observation], None]


class DryRunHandoff:
    """Stands in for the store's committer: reports what it is given, keeps nothing."""

    def __init__(self, report: Report) -> None:
        self._report = report
        # Records already reported with their signals, by identity; each is
        # removed when it is handed off (held, so an id is never reused meanwhile).
        self._shown: dict[int, Record] = {}
        self.submitted = 0

    @property
    def pending(self) -> int:
        """Nothing ever waits: there is no commit."""
        return 0

    @property
    def saturated(self) -> bool:
        """Never: there is no store to fill."""
        return False

    def observed(self, device: str, signals: Sequence[Signal],
                 records: Sequence[Record]) -> None:
        """Report signals with the records the pipeline made of them."""
        for r in records:
            self._shown[id(r)] = r
        if signals or records:
            self._report(Observation(device, tuple(signals), tuple(records)))

    def submit(self, records: Sequence[Record], on_commit: Callable[[], None] | None) -> None:
        """Report the records not reported yet, then acknowledge at once."""
        self._take(records)
        if on_commit is not None:
            on_commit()

    async def append(self, records: Sequence[Record]) -> None:
        """Like ``submit``, for drivers that wait for the commit."""
        self._take(records)

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Never called: the hand-off never saturates."""

    def _take(self, records: Sequence[Record]) -> None:
        self.submitted += len(records)
        alone = [r for r in records if self._shown.pop(id(r), None) is None]
        for r in alone:
            self._report(Observation(r.device, (), (r,)))


class ObservingPipeline(DevicePipeline):
    """The device's own pipeline, reporting each signal with what it became.

    Built by ``DriverIngest`` in place of ``DevicePipeline``; its hand-off
    must be a ``DryRunHandoff``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Whatever DevicePipeline takes: this class only adds the reporting.
        super().__init__(*args, **kwargs)
        handoff = self._committer
        if not isinstance(handoff, DryRunHandoff):
            raise TypeError("an observing pipeline hands off to a DryRunHandoff")
        self._dry = handoff

    def accept(self, sig: Signal, raw: Any, ack: Callable[[], None] | None) -> None:
        """Recognize one signal (reported) and hand its records off."""
        self.hand_off(self.recognize(sig, raw), ack)

    def recognize(self, sig: Signal, raw: Any) -> Sequence[Record]:
        """The records of one signal, reported with it."""
        records = super().recognize(sig, raw)
        self._dry.observed(self.device, (sig,), records)
        return records

    def recognize_poll(self, signals: Sequence[Signal], receive_time: float,
                       raw: Any) -> Sequence[Record]:
        """The records of one poll's changed points, reported with them."""
        records = super().recognize_poll(signals, receive_time, raw)
        self._dry.observed(self.device, signals, records)
        return records

    def dead_letter(self, err: IngestError, payload: bytes,
                    context: Any) -> IngestDeadLetter:
        """Input that could not become a signal, reported as the dead letter it would be."""
        dl = super().dead_letter(err, payload, context)
        self._dry.observed(self.device, (), (dl,))
        return dl
