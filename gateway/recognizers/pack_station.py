"""Pack stations → ``scan``, ``pack`` and pack exceptions.

A pack bench reads: its pack *task* (the source container, order, carton,
what the container holds ``items [{sku, qty}]``, the expected carton
weight), *scans* (the source container, each item, the carton label), a
*scale* and a *close* confirm (label printer / close button) with the
station's close sequence number. Field names come from ``[devices.station]``
(``gateway.mapping.stations``); a scale on a Modbus register is a polled
point (``messages.scale.point``).

- Every scan → ``scan`` (source key ``read:<read id>@<ms>``, as the scanner
  recognizer); what the code is comes from the site's ``[[site.codes]]``
  (container / carton / sku), else from the pack task (its container and
  carton), else: the first code of a pack is its container, later ones items.
- A container scan opens a pack; item scans add ``qty`` (the scan's, else 1)
  of the sku; a carton scan names the carton; the last scale reading weighs it.
- A close → ``pack`` (container, carton, items, weight_kg, station, order,
  close_seq), event id ``close:<close seq>``. The close's own ``carton``
  field, when mapped, wins over a scanned label.
- Exceptions: a weight further than ``max(tolerance_kg, tolerance_pct %)``
  from the task's ``expected_weight_kg`` → ``overweight`` / ``underweight``
  (``weight:<close seq>``); an item the task does not list →
  ``item_not_in_order`` (``item:<the scan's key>``); a pack with no input for
  ``abandon_after`` (by the time of the station's next message: the
  recognizer reads no clock) → ``pack_abandoned`` (``abandon:<its first
  scan's key>``, at its last input + ``abandon_after``).
- A close with no pack open and no task → dead letter ``no_open_pack``.

Restart: the open pack's scans before a gateway restart are not replayed. A
close that names its pack (``container``, ``items``, ``weight``: the bench's
own record) is booked from itself when no pack of that container is open.
Else: the bench publishes its pack task and scale reading *retained*; a close (or an
item scan) that finds no pack open but the task of a container not yet closed
opens the pack from the task, and such a recovered pack takes its items from
the task (``recovered: true``) — the scans it missed cannot be known.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.core.codes import Identity
from gateway.core.events import Event, Priority, Signal
from gateway.core.records import Record
from gateway.mapping.stations import MISSING
from gateway.recognizers.scanner import scanner_source_key
from gateway.recognizers.station import Message, StationBase, StationReject, as_number, as_text

__all__ = ["PackStationRecognizer"]


@dataclass(slots=True)
class _Task:
    container: str
    order: str | None
    carton: str | None
    items: list[dict[str, Any]] | None
    expected_kg: float | None


@dataclass(slots=True)
class _Pack:
    container: str
    key: str
    last: float
    carton: str | None = None
    items: dict[str, int | float] = field(default_factory=dict)
    recovered: bool = False


@dataclass(slots=True)
class PackStationRecognizer(StationBase):
    """Turns one pack bench's messages into events (see the module doc)."""

    ROLE: ClassVar[str] = "pack_station"
    identity: Identity = field(default_factory=Identity)
    packs: int = 0
    exceptions: int = 0
    scans: int = 0
    values: dict[str, Any] = field(default_factory=dict, repr=False)
    weight_kg: float | None = None
    _tasks: OrderedDict[str, _Task] = field(default_factory=OrderedDict, repr=False)
    _closed: OrderedDict[str, None] = field(default_factory=OrderedDict, repr=False)
    _open: OrderedDict[str, _Pack] = field(default_factory=OrderedDict, repr=False)
    _current: str | None = None
    _latest_task: str | None = None
    #: A close that found nothing open (after a restart, the session's queued close comes
    #: before the retained task): booked when a task of a container not closed arrives.
    _orphan_close: tuple[Message, float] | None = None

    @property
    def inputs(self) -> frozenset[str] | None:
        """Polled points read (None: every point, an MQTT bench)."""
        return self._input.points or None

    def use_identity(self, identity: Identity) -> None:
        """Tell codes apart with the site's ``[[site.codes]]``."""
        self.identity = identity

    # -- feeding ---------------------------------------------------------------------

    def feed(self, sig: Signal) -> list[Record]:
        """Events (or a dead letter) for one bench message."""
        if sig.point != "message":
            return self.feed_poll([sig], sig.receive_time)
        return self._one(sig)

    def feed_poll(self, signals: Sequence[Signal], receive_time: float) -> list[Record]:
        """Events for one poll of a polled bench (the trigger points that changed)."""
        for sig in signals:
            self.values[sig.point] = sig.value
        out: list[Record] = []
        for sig in signals:
            if self._input.kind_of(sig, self.values) is not None:
                out.extend(self._one(sig))
        return out

    def _one(self, sig: Signal) -> list[Record]:
        try:
            msg = self._input.read(sig, self.values)
        except StationReject as err:
            return [self._reject(err, sig)]
        out = self._abandoned(msg.time, sig.receive_time)
        try:
            if msg.kind == "task":
                out += self._task(msg.fields)
            elif msg.kind == "scan":
                out += self._scan(sig, msg)
            elif msg.kind == "scale":
                weight = as_number(msg.fields["weight"], "weight")
                self.weight_kg = None if weight is None else round(
                    weight * self.config.weight_factor, 6)
            else:
                out += self._close(msg, sig.receive_time)
        except StationReject as err:
            out.append(self._reject(err, sig))
        return out

    # -- tasks -----------------------------------------------------------------------

    def _items(self, kind: str, f: Any) -> list[dict[str, Any]] | None:
        """A message's ``items`` as ``[{sku, qty}]`` (None: it has none)."""
        raw_items = f.get("items", MISSING)
        if raw_items in (MISSING, None):
            return None
        if not isinstance(raw_items, list):
            raise StationReject("bad_field", f"items must be a list, got {raw_items!r}")
        sku_key = self.config.messages[kind].fields.get("item_sku", "sku")
        qty_key = self.config.messages[kind].fields.get("item_qty", "qty")
        items = []
        for i, item in enumerate(raw_items):
            if not isinstance(item, dict):
                raise StationReject("bad_field", f"items[{i}] must be an object")
            sku = as_text(item.get(sku_key, MISSING), f"items[{i}].{sku_key}")
            qty = as_number(item.get(qty_key, MISSING), f"items[{i}].{qty_key}")
            items.append({"sku": sku, "qty": 1 if qty is None else qty})
        return items

    def _task_of(self, kind: str, f: Any) -> _Task:
        container = as_text(f["container"], "container")
        assert container is not None
        expected = as_number(f.get("expected_weight_kg", MISSING), "expected_weight_kg")
        return _Task(container=container, order=as_text(f.get("order", MISSING), "order"),
                     carton=as_text(f.get("carton", MISSING), "carton"),
                     items=self._items(kind, f),
                     expected_kg=None if expected is None else float(expected))

    def _task(self, f: Any) -> list[Record]:
        task = self._task_of("task", f)
        container = task.container
        self._tasks[container] = task
        self._tasks.move_to_end(container)
        self._latest_task = container
        self._trim(self._tasks)
        orphan, self._orphan_close = self._orphan_close, None
        if orphan is None or container in self._closed or container in self._open:
            return []
        carton = as_text(orphan[0].fields.get("carton", MISSING), "carton")
        task_carton = self._tasks[container].carton
        if carton is not None and task_carton is not None and carton != task_carton:
            return []
        return self._close(*orphan)

    def _trim(self, d: OrderedDict[str, Any]) -> None:
        while len(d) > self.config.max_open:
            d.popitem(last=False)

    # -- scans -----------------------------------------------------------------------

    def _kind(self, code: str) -> str:
        kind = self.identity.kind(code)
        if kind in ("container", "carton", "sku"):
            return kind
        if kind is not None:
            return "other"
        if code in self._tasks:
            return "container"
        if any(t.carton == code for t in self._tasks.values()):
            return "carton"
        return "sku" if self._current is not None else "container"

    def _scan(self, sig: Signal, msg: Message) -> list[Record]:
        f = msg.fields
        code = as_text(f["code"], "code")
        assert code is not None
        read_id = as_text(f.get("read_id", MISSING), "read_id")
        key = scanner_source_key(Signal(
            device=self.device, point="read", value=code, receive_time=sig.receive_time,
            source_time=msg.source_time, source_seq=read_id, attrs=sig.attrs))
        sym = f.get("symbology", MISSING)
        self.scans += 1
        out: list[Record] = [Event.create(
            site=self.site, device=self.device, type="scan", source_key=key,
            occurred_at=msg.time, observed_at=sig.receive_time, correlation_id=f"code:{code}",
            data={"code": code, "symbology": sym if isinstance(sym, str) else None,
                  "read_id": read_id, "reader": self.device, "location": self.location})]
        kind = self._kind(code)
        if kind == "container":
            self._open[code] = _Pack(container=code, key=key, last=msg.time)
            self._open.move_to_end(code)
            self._trim(self._open)
            self._current = code
            return out
        pack = self._pack_for(msg.time, key)
        if pack is None:
            return out
        pack.last = msg.time
        if kind == "carton":
            pack.carton = code
        elif kind == "sku":
            qty = as_number(f.get("qty", MISSING), "qty")
            pack.items[code] = pack.items.get(code, 0) + (1 if qty is None else qty)
            task = self._tasks.get(pack.container)
            if task is not None and task.items is not None and code not in {
                    i["sku"] for i in task.items}:
                self.exceptions += 1
                out.append(Event.create(
                    site=self.site, device=self.device, type="exception",
                    source_key=f"item:{key}", occurred_at=msg.time,
                    observed_at=sig.receive_time, priority=Priority.EXCEPTION,
                    data={"reason": "item_not_in_order", "sku": code,
                          "container": pack.container, "order": task.order,
                          "station": self.station}))
        return out

    def _pack_for(self, t: float, key: str) -> _Pack | None:
        """The open pack, or one recovered from the task of a container not yet closed."""
        if self._current is not None and self._current in self._open:
            return self._open[self._current]
        latest = self._latest_task
        if latest is None or latest in self._closed:
            return None
        pack = _Pack(container=latest, key=f"task:{latest}", last=t, recovered=True)
        self._open[latest] = pack
        self._current = latest
        return pack

    # -- close and abandonment --------------------------------------------------------

    def _close(self, msg: Message, received: float) -> list[Record]:
        f = msg.fields
        seq = as_text(f["seq"], "seq")
        own = as_text(f.get("container", MISSING), "container")
        pack = self._pack_for(msg.time, f"close:{seq}")
        task = None if pack is None else self._tasks.get(pack.container)
        if own is not None and (pack is None or (pack.recovered and pack.container != own)):
            # The close names its pack (the bench's own record): after a restart that is
            # the source, whatever the gateway remembers.
            if pack is not None:
                del self._open[pack.container]
            task = self._tasks.get(own) or self._task_of("close", f)
            pack = _Pack(container=own, key=f"close:{seq}", last=msg.time, recovered=True)
            self._open[own] = pack
            closed = self._task_of("close", f)
            task = _Task(container=own, order=closed.order or task.order,
                         carton=closed.carton or task.carton,
                         items=closed.items if closed.items is not None else task.items,
                         expected_kg=(closed.expected_kg if closed.expected_kg is not None
                                      else task.expected_kg))
            weight = as_number(f.get("weight", MISSING), "weight")
            if weight is not None:
                self.weight_kg = round(weight * self.config.weight_factor, 6)
        if pack is None:
            self._orphan_close = (msg, received)
            raise StationReject("no_open_pack", f"close {seq!r} with no pack open at the "
                                "station (no source container scanned, no pack task)")
        if pack.recovered and task is not None and task.items is not None:
            items = [dict(i) for i in task.items]
        else:
            items = [{"sku": sku, "qty": qty} for sku, qty in pack.items.items()]
        carton = as_text(f.get("carton", MISSING), "carton") or pack.carton or (
            task.carton if task is not None else None)
        order = task.order if task is not None else None
        data: dict[str, Any] = {
            "container": pack.container, "carton": carton, "items": items,
            "weight_kg": self.weight_kg, "station": self.station, "order": order,
            "close_seq": seq}
        if pack.recovered:
            data["recovered"] = True
        out: list[Record] = [Event.create(
            site=self.site, device=self.device, type="pack", source_key=f"close:{seq}",
            occurred_at=msg.time, observed_at=received, data=data)]
        self.packs += 1
        expected = task.expected_kg if task is not None else None
        if expected is not None and self.weight_kg is not None:
            tolerance = max(self.config.tolerance_kg, expected * self.config.tolerance_pct / 100)
            off = self.weight_kg - expected
            if abs(off) > tolerance:
                self.exceptions += 1
                out.append(Event.create(
                    site=self.site, device=self.device, type="exception",
                    source_key=f"weight:{seq}", occurred_at=msg.time, observed_at=received,
                    priority=Priority.EXCEPTION,
                    data={"reason": "overweight" if off > 0 else "underweight",
                          "container": pack.container, "carton": carton,
                          "weight_kg": self.weight_kg, "expected_weight_kg": expected,
                          "tolerance_kg": round(tolerance, 6), "station": self.station,
                          "order": order}))
        del self._open[pack.container]
        self._current = None
        self._closed[pack.container] = None
        self._trim(self._closed)
        self.weight_kg = None
        return out

    def _abandoned(self, t: float, received: float) -> list[Record]:
        limit = self.config.abandon_after
        out: list[Record] = []
        for container, pack in list(self._open.items()):
            if t - pack.last < limit:
                continue
            del self._open[container]
            if self._current == container:
                self._current = None
            self._closed[container] = None
            task = self._tasks.get(container)
            self.exceptions += 1
            out.append(Event.create(
                site=self.site, device=self.device, type="exception",
                source_key=f"abandon:{pack.key}", occurred_at=pack.last + limit,
                observed_at=received, priority=Priority.EXCEPTION,
                data={"reason": "pack_abandoned", "container": container,
                      "carton": pack.carton, "order": task.order if task else None,
                      "items": [{"sku": s, "qty": q} for s, q in pack.items.items()],
                      "station": self.station, "idle_s": limit}))
        return out

    def figures(self) -> dict[str, Any]:
        """Counts for the status API (``devices.<id>.station``)."""
        return {"station": {"packs": self.packs, "scans": self.scans,
                            "exceptions": self.exceptions, "open_packs": len(self._open),
                            "tasks": len(self._tasks)}}
