"""Pick stations (put walls, pick-to-light, goods-to-person ports) → ``pick`` and ``short_pick``.

A pick station shows the operator a *task* (task id, location, sku, quantity,
the target container, order and line) and publishes the operator's *confirm*
(task id, quantity picked or a quantity adjustment, a short flag, the
device's time). Field names come from ``[devices.station]``
(``gateway.mapping.stations``).

- A confirm of a known task → ``pick`` (location, sku, qty picked,
  qty_requested, container, order, line, station, task_id); a confirm of
  less than the task asked for (or flagged short) also → ``exception`` with
  reason ``short_pick``.
- Event ids: ``task:<task id>:confirm`` and ``task:<task id>:short`` on the
  station's device: a redelivered confirm (QoS 1) yields the same ids; the
  task stays remembered after its confirm, so a repeat is recognized again.
- A confirm that names its task (``sku``, ``qty_requested``, ``container``,
  ``order``, ``line``, ``location``: the station's own record) is booked
  from itself when the task is not known (after a restart, the station may
  have moved on). Else, a confirm of a task this station has not shown → ingest
  dead letter
  ``unknown_task`` naming the task id. The confirm is also kept (up to
  ``max_open``): when its task arrives after all, the pick is booked then,
  with the confirm's time and ids.

Restart: the recognizer's memory is the tasks it has seen. The station
publishes its task *retained* on its task topic; the gateway's MQTT driver
subscribes on every connect, so after a restart the broker hands it the task
again. Messages queued in the gateway's session while it was down come
first: a confirm queued there meets its task a moment later (the dead letter
above stays as the trace of it), see docs/stations.md.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.core.events import Event, Priority, Signal
from gateway.core.records import Record
from gateway.mapping.stations import MISSING
from gateway.recognizers.station import StationBase, StationReject, as_number, as_text

__all__ = ["PickStationRecognizer"]


@dataclass(slots=True)
class _Task:
    location: str | None
    sku: str | None
    qty: int | float | None
    container: str | None
    order: str | None
    line: Any


@dataclass(slots=True)
class PickStationRecognizer(StationBase):
    """Turns one pick station's tasks and confirms into events (see the module doc)."""

    ROLE: ClassVar[str] = "pick_station"
    picks: int = 0
    shorts: int = 0
    unknown_confirms: int = 0
    forgotten_tasks: int = 0
    _tasks: OrderedDict[str, _Task] = field(default_factory=OrderedDict, repr=False)
    #: Confirms of tasks not seen (yet): task id → (fields, time, receive time).
    _orphans: OrderedDict[str, tuple[Any, float, float]] = field(default_factory=OrderedDict,
                                                                  repr=False)
    booked_late: int = 0
    booked_from_confirm: int = 0

    def open_tasks(self) -> int:
        """Tasks remembered (confirmed ones too, for repeats)."""
        return len(self._tasks)

    def feed(self, sig: Signal) -> list[Record]:
        """Events (or a dead letter) for one station message."""
        try:
            msg = self._input.read(sig, {})
            if msg.kind == "task":
                return self._task(msg.fields)
            return self._confirm(msg.fields, msg.time, sig.receive_time)
        except StationReject as err:
            return [self._reject(err, sig)]

    def _task_of(self, f: Any) -> _Task:
        return _Task(location=as_text(f.get("location", MISSING), "location") or self.location,
                     sku=as_text(f.get("sku", MISSING), "sku"),
                     qty=as_number(f.get("qty", MISSING), "qty"),
                     container=as_text(f.get("container", MISSING), "container"),
                     order=as_text(f.get("order", MISSING), "order"),
                     line=_plain(f.get("line", MISSING)))

    def _keep(self, task_id: str, task: _Task) -> None:
        """Remember ``task`` (the newest), forgetting the oldest beyond ``max_open``."""
        tasks = self._tasks
        tasks[task_id] = task
        tasks.move_to_end(task_id)
        while len(tasks) > self.config.max_open:
            tasks.popitem(last=False)
            self.forgotten_tasks += 1

    def _task(self, f: Any) -> list[Record]:
        task_id = as_text(f["task_id"], "task_id")
        assert task_id is not None
        self._keep(task_id, self._task_of(f))
        orphan = self._orphans.pop(task_id, None)
        if orphan is None:
            return []
        self.booked_late += 1
        return self._confirm(*orphan)

    def _confirm(self, f: Any, t: float, received: float) -> list[Record]:
        task_id = as_text(f["task_id"], "task_id")
        task = self._tasks.get(task_id or "")
        if task is None and f.get("sku", MISSING) not in (MISSING, None):
            # The confirm names its task (the station's own record): book it from itself.
            task = self._task_of({**f, "qty": f.get("qty_requested", MISSING)})
            self._keep(task_id or "", task)
            self.booked_from_confirm += 1
        if task is None:
            self.unknown_confirms += 1
            if task_id is not None:
                self._orphans[task_id] = (f, t, received)
                while len(self._orphans) > self.config.max_open:
                    self._orphans.popitem(last=False)
            raise StationReject("unknown_task", f"confirm of task {task_id!r}, which this "
                                "station has not shown (no task message seen)")
        requested = task.qty
        qty = as_number(f.get("qty", MISSING), "qty")
        adjust = as_number(f.get("qty_adjust", MISSING), "qty_adjust")
        if qty is None:
            qty = (requested or 0) + (adjust or 0) if adjust is not None else requested
        flag = f.get("short", MISSING)
        short = (flag is True or flag in (1, "1", "true", "short")) or (
            qty is not None and requested is not None and qty < requested)
        data = {"location": task.location, "sku": task.sku, "qty": qty,
                "qty_requested": requested, "container": task.container, "order": task.order,
                "line": task.line, "station": self.station, "task_id": task_id}
        out: list[Record] = [Event.create(
            site=self.site, device=self.device, type="pick", source_key=f"task:{task_id}:confirm",
            occurred_at=t, observed_at=received, data=data)]
        self.picks += 1
        if short:
            self.shorts += 1
            out.append(Event.create(
                site=self.site, device=self.device, type="exception",
                source_key=f"task:{task_id}:short", occurred_at=t, observed_at=received,
                priority=Priority.EXCEPTION, data={"reason": "short_pick", **data}))
        self._tasks.move_to_end(task_id or "")
        return out

    def figures(self) -> dict[str, Any]:
        """Counts for the status API (``devices.<id>.station``)."""
        return {"station": {"picks": self.picks, "short_picks": self.shorts,
                            "unknown_confirms": self.unknown_confirms,
                            "tasks": len(self._tasks), "forgotten_tasks": self.forgotten_tasks,
                            "booked_late": self.booked_late,
                            "booked_from_confirm": self.booked_from_confirm}}


def _plain(value: Any) -> Any:
    return None if value is MISSING else value
