"""The whole simulated site: orders, put walls, conveyor, sorter, pack stations, AMRs.

One tote and one carton per order, and each keeps its code on every device:

1. an order with 1-3 lines arrives; its tote (``TOTE-000001``...) goes to a
   put-wall station, which shows each line as a task on MQTT (retained: the
   task on display) and publishes the operator's confirm (a short pick
   confirms less than asked for);
2. the tote rides the Modbus conveyor (``simulators.conveyor_plc``: the
   tracking ring records every move, with the tote's code);
3. leaving the conveyor it reaches the sorter's induct reader (OPC UA scan
   event) and the sorter confirms its divert to the chute of its pack station
   (a no-read goes round and is inducted again, a full chute recirculates it);
4. at the pack station the bench shows the pack task (retained: the tote, its
   order and carton, what the tote holds, the expected weight), the scanner
   reads the tote, each item (with its quantity) and the carton label
   (``CARTON-000001``...), the scale weighs the carton (retained) and the
   label printer confirms the close with the station's close sequence (MQTT);
5. an AMR (VDA 5050) picks the carton up at the pack station and drops it at
   a dock door.

Every happening is written to the ledger (``simulators.site.ledger``) as it
happens, with the device id and device-native key the gateway's event id
derives from. Faults come from rates (``SiteOptions``) or on request
(``Site.fault``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from gateway.config import BrokerConfig
from gateway.core.events import format_time, parse_time
from gateway.transport.link import MqttLink
from simulators.amr_vehicle import AmrOptions
from simulators.conveyor import ConveyorSimulator, SimulatedConveyor, _Injection
from simulators.conveyor_plc import ConveyorPlc, Fault, Move
from simulators.site.amr import AmrDispatcher
from simulators.site.config import (
    ABANDON_AFTER_S,
    CONVEYOR,
    INDUCT,
    MANUFACTURER,
    READER,
    SORTER,
    SiteLayout,
)
from simulators.site.ledger import Entry, Ledger
from simulators.sorter import SorterSimulation
from simulators.sorter_server import READER as READER_SOURCE
from simulators.sorter_server import SorterServer
from simulators.sorter_state import SorterState, to_datetime

__all__ = ["Order", "Site", "SiteOptions"]

log = structlog.get_logger(__name__)
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Moves remembered for marking them lost when the ring overwrites them unread.
_MOVES_KEPT = 256
#: Least seconds between two scans of one code at one pack station (the gateway's
#: default debounce is 0.5 s).
_RESCAN_S = 0.6
#: An item no order holds (the ``item_not_in_order`` fault scans it).
_STRAY_SKU = "SKU-9999"


@dataclass(frozen=True)
class SiteOptions:
    """How the site runs: where, how fast, which faults at which rates."""

    layout: SiteLayout = field(default_factory=SiteLayout)
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    modbus_port: int = 0
    opcua_port: int = 0
    ledger: Path | None = None
    state_dir: Path | None = None
    #: Orders per second, and how many in all (None: until stopped).
    order_rate: float = 0.5
    orders: int | None = None
    pick_s: float = 0.3
    #: Conveyor speed (mm/s): a tote spends 1000 / speed seconds in each 1 m zone.
    conveyor_speed: int = 2000
    transfer_s: float = 1.0
    travel_s: float = 0.5
    scan_gap_s: float = 0.25
    recirculate_s: float = 2.0
    amr_speed: float = 4.0
    amr_action_s: float = 0.5
    amr_rest_s: float = 2.0
    amr_state_interval: float = 1.0
    no_read_rate: float = 0.0
    short_pick_rate: float = 0.0
    overweight_rate: float = 0.0
    underweight_rate: float = 0.0
    #: Random conveyor jams per second, each cleared after ``jam_clear_s``.
    jam_rate: float = 0.0
    jam_clear_s: float = 3.0
    #: Random chute-full spells per second, each ``chute_full_s`` long.
    chute_full_rate: float = 0.0
    chute_full_s: float = 3.0
    #: Random AMR emergency stops per second, each released after 2 s.
    estop_rate: float = 0.0
    #: Make no orders until ``fault("start_orders")`` (e.g. once the gateway is up).
    hold_orders: bool = False
    seed: int = 1


@dataclass(slots=True)
class Order:
    """One customer order: its lines, its tote, its pack station and carton."""

    id: str
    lines: list[tuple[int, str, int]]
    tote: str
    station: int
    carton: str
    picked: dict[int, int] = field(default_factory=dict)


class Site:
    """The running site (an async context manager)."""

    def __init__(self, opts: SiteOptions) -> None:
        self.opts = opts
        self.layout = opts.layout
        self.rng = random.Random(opts.seed)
        self.ledger = Ledger(opts.ledger, self.layout.site)
        self.link = MqttLink(BrokerConfig(id="site", host=opts.broker_host, port=opts.broker_port),
                             f"site-sim-{self.layout.site}", persistent=False,
                             backoff_initial=0.2, backoff_max=2.0)
        self.conveyors = ConveyorSimulator(count=1, port=opts.modbus_port, control_port=None,
                                           zones=self.layout.zones, tote_rate=0.0,
                                           noread_rate=0.0, seed=opts.seed)
        self.plc.feed = deque()
        self.plc.listener = self
        self.plc.speed_setpoint = opts.conveyor_speed
        self.sorter_state = SorterState(opts.state_dir / "sorter" if opts.state_dir else None)
        self.opcua_port = opts.opcua_port
        self.sorter_up = asyncio.Event()
        self._sorter_lock = asyncio.Lock()
        self.sorter: SorterSimulation | None = None
        amr_opts = AmrOptions(host=opts.broker_host, port=opts.broker_port,
                              manufacturer=MANUFACTURER, state_interval=opts.amr_state_interval,
                              speed=opts.amr_speed, action_time=opts.amr_action_s)
        self.amrs = AmrDispatcher(self.layout, self.ledger, amr_opts, rest_s=opts.amr_rest_s,
                                  seed=opts.seed, link_publish=self._publish_now)
        self.orders: dict[str, Order] = {}
        self.made = 0
        self.making = opts.orders is None or opts.orders > 0
        self._go = asyncio.Event()
        if not opts.hold_orders:
            self._go.set()
        self._order_q: asyncio.Queue[Order] = asyncio.Queue()
        self._induct_q: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        self._pack_q = [asyncio.Queue[str]() for _ in range(self.layout.pack_stations)]
        self._last_scan: dict[tuple[int, str], float] = {}
        self._read_ids = dict.fromkeys(range(1, self.layout.pack_stations + 1), 1)
        # Task ids and close sequences are event ids upstream: a site started again must
        # not reuse them, so they count on from the start time in ms.
        serial = int(time.time() * 1000)
        self._tasks_made = serial
        self._moves: dict[tuple[int, int], Entry] = {}
        self._closes = dict.fromkeys(range(1, self.layout.pack_stations + 1), serial)
        self._pending = {"no_read": 0, "short_pick": 0, "overweight": 0, "underweight": 0,
                         "abandoned_pack": 0, "item_not_in_order": 0}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._link_task: asyncio.Task[None] | None = None

    @property
    def conveyor(self) -> SimulatedConveyor:
        """The conveyor PLC and its Modbus server."""
        return self.conveyors[1]

    @property
    def plc(self) -> ConveyorPlc:
        """The conveyor's PLC program."""
        return self.conveyors[1].plc

    @property
    def modbus_port(self) -> int:
        """Port of the conveyor's Modbus server."""
        return self.conveyor.port

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start every device and the flow."""
        self._link_task = asyncio.create_task(self.link.run(), name="site-mqtt")
        async with asyncio.timeout(15):
            await self.link.connected.wait()
        await self.conveyors.start()
        await self._start_sorter()
        for n in range(1, self.layout.amrs + 1):
            self.amrs.add(self.layout.amr(n))
        self._spawn(self._make_orders(), "orders")
        for n in range(1, self.layout.put_walls + 1):
            self._spawn(self._put_wall(n), f"put-wall-{n}")
        self._spawn(self._sort(), "sorter")
        for n in range(1, self.layout.pack_stations + 1):
            self._spawn(self._pack(n), f"pack-{n}")
        self._spawn(self.amrs.run(), "amr-dispatch")
        self._spawn(self._random_faults(), "faults")
        log.info("site_started", modbus_port=self.modbus_port, opcua_port=self.opcua_port,
                 ledger=str(self.opts.ledger))

    async def stop(self) -> None:
        """Stop the flow and every device."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.amrs.stop()
        await self.conveyors.stop()
        if self.sorter is not None and self.sorter_up.is_set():
            await self.sorter.server.stop()
        self.sorter_state.close()
        if self._link_task is not None:
            self._link_task.cancel()
            await asyncio.gather(self._link_task, return_exceptions=True)
        self.ledger.close()

    async def __aenter__(self) -> Site:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"site-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("site_task_failed", task=task.get_name(), error=repr(task.exception()))

    def _later(self, delay: float, fn: Callable[[], object]) -> None:
        asyncio.get_running_loop().call_later(delay, fn)

    def _publish_now(self, topic: str, payload: bytes) -> None:
        self._spawn(self._publish(topic, payload), "publish")

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 1, waiting out a broker away (the device keeps it until sent)."""
        while True:
            await self.link.connected.wait()
            try:
                await self.link.publish(topic, payload, 1, retain)
                return
            except Exception as err:
                log.warning("site_publish_retry", topic=topic, error=str(err))
                await asyncio.sleep(0.2)

    # -- state ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What the site did so far (for the control API)."""
        return {"orders": self.made, "making": self.making, "delivered": self.amrs.delivered,
                "idle": self.idle(), "ledger_entries": len(self.ledger.entries),
                "amrs_busy": self.amrs.busy(),
                "sorter_up": self.sorter_up.is_set(), "conveyor": self.plc.state_dict(),
                "amrs": {s: {"connected": v.link.connected.is_set(), "order": v.order_id,
                             "busy": not v.idle.is_set(), "loaded": bool(v.loads)}
                         for s, v in self.amrs.vehicles.items()}}

    def idle(self) -> bool:
        """Every order made so far has reached its dock door."""
        return not self.making and self.amrs.delivered >= self.made

    # -- orders and put walls -------------------------------------------------------

    async def _make_orders(self) -> None:
        opts, rng = self.opts, self.rng
        await self._go.wait()
        started = time.monotonic()
        while opts.orders is None or self.made < opts.orders:
            if not self.making:
                await asyncio.sleep(0.2)
                continue
            delay = started + self.made / opts.order_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.made += 1
            n = self.made
            skus = rng.sample(range(1, 1000), rng.randint(1, 3))
            order = Order(id=f"ORD-{n:06d}", tote=f"TOTE-{n:06d}", carton=f"CARTON-{n:06d}",
                          station=(n - 1) % self.layout.pack_stations + 1,
                          lines=[(i, f"SKU-{s:04d}", rng.randint(1, 3))
                                 for i, s in enumerate(skus, start=1)])
            self.orders[order.tote] = order
            self._order_q.put_nowait(order)
        self.making = False

    def _take(self, fault: str, rate: float) -> bool:
        if self._pending[fault] > 0:
            self._pending[fault] -= 1
            return True
        return bool(rate) and self.rng.random() < rate

    async def _put_wall(self, n: int) -> None:
        station = self.layout.put_wall(n)
        location = f"PUT-{n:02d}"
        while True:
            order = await self._order_q.get()
            for line, sku, qty in order.lines:
                self._tasks_made += 1
                task_id = f"{station}-{self._tasks_made}"
                # Retained: the task on display; a gateway restarting reads it again.
                await self._publish(self.layout.station_topic(station, "task"), _dumps({
                    "task_id": task_id, "order": order.id, "line": line, "sku": sku,
                    "qty": qty, "location": location, "container": order.tote,
                    "timestamp": format_time(time.time())}).encode(), retain=True)
                await asyncio.sleep(self.opts.pick_s)
                short = self._take("short_pick", self.opts.short_pick_rate)
                picked = qty - 1 if short else qty
                order.picked[line] = picked
                t = time.time()
                stamp = format_time(t)
                # The confirm names its task too (the station's record of it).
                await self._publish(self.layout.station_topic(station, "confirm"), _dumps({
                    "task_id": task_id, "qty": picked, "short": short, "timestamp": stamp,
                    "qty_requested": qty, "sku": sku, "order": order.id, "line": line,
                    "location": location, "container": order.tote}).encode())
                common = {"container": order.tote, "order": order.id, "line": line,
                          "sku": sku, "location": location, "station": station,
                          "task_id": task_id}
                self.ledger.record("pick_confirm", "pick", station, f"task:{task_id}:confirm",
                                   parse_time(stamp), container=order.tote,
                                   fields={**common, "qty": picked, "qty_requested": qty},
                                   order=order.id, line=line, sku=sku, qty=picked)
                if short:
                    self.ledger.record("short_pick", "exception", station,
                                       f"task:{task_id}:short", parse_time(stamp),
                                       container=order.tote,
                                       fields={"reason": "short_pick", **common, "qty": picked,
                                               "qty_requested": qty}, order=order.id)
            assert self.plc.feed is not None
            self.plc.feed.append(order.tote)

    # -- conveyor (the PLC program tells) -------------------------------------------

    @staticmethod
    def _zone(n: int) -> str | None:
        return f"Z{n:02d}" if n > 0 else None

    def moved(self, plc: ConveyorPlc, move: Move) -> None:
        """A move in the tracking ring: ledger it; a tote leaving goes to the sorter."""
        entry = self.ledger.record(
            "conveyor_move", "move", CONVEYOR, f"trk:{move.boot}:{move.seq}", time.time(),
            container=move.tote,
            fields={"container": move.tote, "from": self._zone(move.from_zone),
                    "to": self._zone(move.to_zone), "seq": move.seq, "boot": move.boot},
            order=self._order_of(move.tote))
        self._moves[(move.boot, move.seq)] = entry
        if len(self._moves) > _MOVES_KEPT:
            del self._moves[next(iter(self._moves))]
        if move.to_zone == 0:
            self._later(self.opts.transfer_s,
                        lambda: self._induct_q.put_nowait((move.tote, None)))

    def overwritten(self, plc: ConveyorPlc, move: Move) -> None:
        """A move overwritten in the ring before any read: the device lost it."""
        entry = self._moves.get((move.boot, move.seq))
        if entry is not None:
            self.ledger.mark_lost(entry, "ring_overrun")

    def _fault_fields(self, fault: Fault, reason: str) -> dict[str, Any]:
        return {"reason": reason, "zone": self._zone(fault.zone), "zone_number": fault.zone,
                "fault_code": fault.code, "fault_count": fault.count, "boot": fault.boot}

    def faulted(self, plc: ConveyorPlc, fault: Fault) -> None:
        """A jam: ledger it."""
        self.ledger.record("conveyor_jam", "exception", CONVEYOR,
                           f"fault:{fault.boot}:{fault.count}", time.time(), container=None,
                           fields=self._fault_fields(fault, "jam"))

    def cleared(self, plc: ConveyorPlc, fault: Fault) -> None:
        """A jam cleared: ledger it."""
        self.ledger.record("conveyor_jam_cleared", "exception", CONVEYOR,
                           f"fault_cleared:{fault.boot}:{fault.count}", time.time(),
                           container=None, fields=self._fault_fields(fault, "jam_cleared"))

    def _order_of(self, tote: str) -> str | None:
        order = self.orders.get(tote)
        return None if order is None else order.id

    # -- sorter ---------------------------------------------------------------------

    def _sorter_server(self) -> SorterServer:
        return SorterServer(self.sorter_state, host="127.0.0.1", port=self.opcua_port,
                            chutes=[self.layout.chute(n)
                                    for n in range(1, self.layout.pack_stations + 1)],
                            reader_name=READER)

    async def _start_sorter(self) -> None:
        if not self.opcua_port:
            from simulators.broker import free_port

            self.opcua_port = free_port()
        server = self._sorter_server()
        await server.start()
        if self.sorter is None:
            self.sorter = SorterSimulation(server, self.sorter_state, seed=self.opts.seed,
                                           induct=INDUCT)
        else:
            self.sorter.server = server
            for chute, full in self.sorter.full.items():
                if full:
                    await self.sorter.set_full(chute, True)
        await self.sorter.start()
        self.sorter_up.set()

    async def restart_sorter(self, down_s: float) -> dict[str, Any]:
        """The OPC UA server goes away (connections dropped) and comes back after ``down_s``."""
        async with self._sorter_lock:
            self.sorter_up.clear()
            assert self.sorter is not None
            await self.sorter.server.stop()
        log.info("site_sorter_down", down_s=down_s)
        self._spawn(self._sorter_back(down_s), "sorter-restart")
        return {"restarting": SORTER, "down_s": down_s}

    async def _sorter_back(self, down_s: float) -> None:
        await asyncio.sleep(down_s)
        async with self._sorter_lock:
            await self._start_sorter()
        log.info("site_sorter_up")

    async def _sort(self) -> None:
        while True:
            tote, tracking = await self._induct_q.get()
            while True:
                await self.sorter_up.wait()
                async with self._sorter_lock:
                    if self.sorter_up.is_set():
                        await self._sort_one(tote, tracking)
                        break
            await asyncio.sleep(0.05)  # the sorter's pitch

    async def _sort_one(self, tote: str, tracking: str | None) -> None:
        sim = self.sorter
        assert sim is not None
        order = self.orders[tote]
        now_us = time.time_ns() // 1000
        records = []
        no_read = False
        if tracking is None:
            tracking = sim.next_tracking_id()
            no_read = self._take("no_read", self.opts.no_read_rate)
            records.append(sim.scan_record("" if no_read else tote, now_us))
        chute = self.layout.chute(order.station)
        if no_read:
            result, barcode, to = "no-read", "", None
        elif sim.full.get(chute):
            result, barcode, to = "chute-full", tote, chute
        else:
            result, barcode, to = "diverted", tote, chute
        records.append(sim.confirm_record(tracking, barcode, result, to, now_us))
        for rec in await sim.fire_records(records):
            self._ledger_sorter(rec.source, rec.time_us, rec.fields, tote, order)
        if result == "no-read":
            self._later(self.opts.recirculate_s, lambda: self._induct_q.put_nowait((tote, None)))
        elif result == "chute-full":
            self._later(self.opts.recirculate_s,
                        lambda: self._induct_q.put_nowait((tote, tracking)))
        else:
            self._later(self.opts.travel_s,
                        lambda: self._pack_q[order.station - 1].put_nowait(tote))

    def _ledger_sorter(self, source: str, time_us: int, f: dict[str, Any], tote: str,
                       order: Order) -> None:
        t = (to_datetime(time_us) - _EPOCH).total_seconds()
        if source == READER_SOURCE:
            key = f"scan:{f['device_name']}:{f['scan_id']}@{round(t * 1000)}"
            common = {"reader": f["device_name"], "read_id": str(f["scan_id"]),
                      "location": INDUCT}
            if f["code"]:
                self.ledger.record("induct_scan", "scan", SORTER, key, t, container=tote,
                                   fields={"code": tote, "symbology": "CODE128", **common},
                                   order=order.id)
            else:
                self.ledger.record("induct_no_read", "exception", SORTER, key, t,
                                   container=tote, fields={"reason": "no_read", **common},
                                   order=order.id)
            return
        key = f"divert:{f['tracking_id']}:{f['confirm_seq']}"
        common = {"container": f["barcode"] or None, "from": INDUCT,
                  "tracking_id": f["tracking_id"], "confirm_seq": f["confirm_seq"],
                  "sorter": SORTER}
        if f["result"] == "diverted":
            self.ledger.record("divert", "move", SORTER, key, t, container=tote,
                               fields={**common, "to": f["chute"]}, order=order.id)
        else:
            self.ledger.record("divert_exception", "exception", SORTER, key, t, container=tote,
                               fields={"reason": f["result"].replace("-", "_"), **common,
                                       "chute": f["chute"]}, order=order.id)

    # -- pack stations --------------------------------------------------------------

    async def _scan(self, n: int, code: str, container: str | None, order: Order,
                    qty: int | None = None) -> tuple[str, float]:
        """One bench scan (published and ledgered); returns its source key and time."""
        # An operator scanning the same code again right away is a double read to any
        # fixed-mount filter: scan a repeated SKU only after the debounce window.
        last = self._last_scan.get((n, code))
        if last is not None and (wait := last + _RESCAN_S - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        self._last_scan[(n, code)] = time.monotonic()
        if len(self._last_scan) > 4096:
            self._last_scan.clear()
        read_id = self._read_ids[n]
        self._read_ids[n] = read_id + 1
        stamp = format_time(time.time())
        extra = "" if qty is None else f',"qty":{qty}'
        payload = (f'{{"code":"{code}","read_id":{read_id},"timestamp":"{stamp}",'
                   f'"symbology":"CODE128"{extra}}}').encode()
        device = self.layout.pack_station(n)
        t = parse_time(stamp)
        key = f"read:{read_id}@{round(t * 1000)}"
        self.ledger.record("pack_scan", "scan", device, key, t,
                           container=container,
                           fields={"code": code, "symbology": "CODE128", "read_id": str(read_id),
                                   "reader": device, "location": self.layout.pack_location(n)},
                           order=order.id)
        await self._publish(self.layout.scanner_topic(n), payload)
        return key, t

    async def _pack(self, n: int) -> None:
        station = self.layout.pack_station(n)
        while True:
            tote = await self._pack_q[n - 1].get()
            order = self.orders[tote]
            items: list[dict[str, Any]] = [{"sku": sku, "qty": order.picked.get(line, 0)}
                                           for line, sku, _ in order.lines]
            expected = round(0.3 + 0.4 * sum(order.picked.get(line, 0)
                                             for line, _, _ in order.lines), 3)
            # Retained: the pack task on display; a gateway restarting reads it again.
            await self._publish(self.layout.pack_topic(n, "task"), _dumps({
                "container": tote, "order": order.id, "carton": order.carton, "items": items,
                "expected_weight_kg": expected,
                "timestamp": format_time(time.time())}).encode(), retain=True)
            if self._take("abandoned_pack", 0.0):
                await self._abandon(n, tote, order, items)
            await self._pack_one(n, station, tote, order, items, expected)

    async def _pack_items(self, n: int, tote: str, order: Order,
                          items: list[dict[str, Any]]) -> tuple[str, float]:
        """Scan the tote and its items; returns the tote scan's key and the last scan's time."""
        gap = self.opts.scan_gap_s
        first, t = await self._scan(n, tote, tote, order)
        for item in items:
            await asyncio.sleep(gap)
            _, t = await self._scan(n, item["sku"], None, order, qty=int(item["qty"]))
        return first, t

    async def _abandon(self, n: int, tote: str, order: Order,
                       items: list[dict[str, Any]]) -> None:
        """The operator scans the tote and its items, then walks away; packs it again later."""
        station = self.layout.pack_station(n)
        first, last = await self._pack_items(n, tote, order, items)
        await asyncio.sleep(ABANDON_AFTER_S + 0.5)
        # The bench's next message (the tote scanned again) tells the gateway.
        self.ledger.record("pack_abandoned", "exception", station, f"abandon:{first}",
                           last + ABANDON_AFTER_S, container=tote,
                           fields={"reason": "pack_abandoned", "container": tote,
                                   "order": order.id, "items": items, "station": station},
                           order=order.id)

    async def _pack_one(self, n: int, station: str, tote: str, order: Order,
                        items: list[dict[str, Any]], expected: float) -> None:
        gap = self.opts.scan_gap_s
        await self._pack_items(n, tote, order, items)
        weight = expected
        if self._take("item_not_in_order", 0.0):
            await asyncio.sleep(gap)
            key, t = await self._scan(n, _STRAY_SKU, None, order, qty=1)
            self.ledger.record("item_not_in_order", "exception", station, f"item:{key}", t,
                               container=tote,
                               fields={"reason": "item_not_in_order", "sku": _STRAY_SKU,
                                       "container": tote, "order": order.id,
                                       "station": station}, order=order.id)
            items = [*items, {"sku": _STRAY_SKU, "qty": 1}]
            weight = round(weight + 0.1, 3)  # a light item: within the tolerance
        await asyncio.sleep(gap)
        await self._scan(n, order.carton, order.carton, order)
        reason = None
        if self._take("overweight", self.opts.overweight_rate):
            weight, reason = round(weight + 5.0, 3), "overweight"
        elif self._take("underweight", self.opts.underweight_rate):
            weight, reason = round(max(0.0, expected - 1.0), 3), "underweight"
        await self._publish(self.layout.scale_topic(n), _dumps(
            {"weight_kg": weight, "timestamp": format_time(time.time())}).encode(), retain=True)
        await asyncio.sleep(gap / 2)
        self._closes[n] += 1
        seq = self._closes[n]
        stamp = format_time(time.time())
        t = parse_time(stamp)
        # The label printer's close record names the whole pack, as the bench knows it.
        await self._publish(self.layout.pack_topic(n, "close"), _dumps(
            {"close_seq": seq, "carton": order.carton, "container": tote, "order": order.id,
             "items": items, "weight_kg": weight, "expected_weight_kg": expected,
             "timestamp": stamp}).encode())
        fields = {"container": tote, "carton": order.carton, "items": items,
                  "weight_kg": weight, "station": station, "order": order.id,
                  "close_seq": str(seq)}
        self.ledger.record("pack_close", "pack", station, f"close:{seq}", t,
                           container=order.carton, fields=fields, order=order.id)
        if reason is not None:
            self.ledger.record(f"pack_{reason}", "exception", station, f"weight:{seq}", t,
                               container=order.carton,
                               fields={"reason": reason, "container": tote,
                                       "carton": order.carton, "weight_kg": weight,
                                       "expected_weight_kg": expected, "station": station,
                                       "order": order.id},
                               order=order.id)
        await asyncio.sleep(gap)
        self.amrs.cartons.put_nowait((order.carton, n, order.id))

    # -- faults ---------------------------------------------------------------------

    async def _random_faults(self) -> None:
        opts, rng = self.opts, self.rng
        while True:
            await asyncio.sleep(1.0)
            if opts.jam_rate and rng.random() < opts.jam_rate:
                self.jam(rng.randint(1, self.layout.zones), opts.jam_clear_s)
            if opts.chute_full_rate and rng.random() < opts.chute_full_rate:
                await self.chute_full(rng.randint(1, self.layout.pack_stations),
                                      opts.chute_full_s)
            if opts.estop_rate and rng.random() < opts.estop_rate and self.amrs.vehicles:
                self.amrs.estop(2.0)

    def jam(self, zone: int, seconds: float) -> dict[str, Any]:
        """Jam a conveyor zone; it is cleared after ``seconds``."""
        raised = self.plc.jam(zone)
        if raised:
            self._later(seconds, self.plc.clear)
        return {"raised": raised, "zone": zone, "seconds": seconds}

    async def chute_full(self, station: int, seconds: float) -> dict[str, Any]:
        """The chute of a pack station reports full for ``seconds``."""
        sim = self.sorter
        assert sim is not None
        chute = self.layout.chute(station)
        if self.sorter_up.is_set():
            await sim.set_full(chute, True)
        else:
            sim.full[chute] = True

        def empty() -> None:
            if self.sorter_up.is_set():
                self._spawn(sim.set_full(chute, False), "chute-empty")
            else:
                sim.full[chute] = False

        self._later(seconds, empty)
        return {"chute": chute, "seconds": seconds}

    async def fault(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Inject the fault ``name`` (see ``FAULTS``); raises KeyError/ValueError on bad input."""
        if name in self._pending:
            count = int(body.get("count", 1))
            if count < 0:
                raise ValueError("count must be >= 0")
            self._pending[name] += count
            return {name: self._pending[name]}
        if name == "jam":
            return self.jam(int(body.get("zone", 1)), float(body.get("seconds", 3.0)))
        if name == "chute_full":
            return await self.chute_full(int(body.get("station", 1)),
                                         float(body.get("seconds", 3.0)))
        if name == "amr_estop":
            return self.amrs.estop(float(body.get("seconds", 2.0)))
        if name == "amr_field_violation":
            return self.amrs.field_violation(float(body.get("seconds", 2.0)))
        if name == "amr_fatal":
            return self.amrs.fatal(float(body.get("seconds", 2.0)),
                                   str(body.get("error_type", "driveFault")))
        if name == "amr_battery_low":
            return self.amrs.battery_low(float(body.get("seconds", 3.0)),
                                         float(body.get("level", 15.0)))
        if name == "amr_hold":
            return self.amrs.hold(float(body.get("seconds", 5.0)))
        if name == "amr_kill":
            return self.amrs.kill(float(body.get("down_s", 2.0)))
        if name == "conveyor_restart":
            return self.conveyors.restart_later(1, str(body.get("mode", "warm")),
                                                float(body.get("down_s", 1.0)))
        if name == "sorter_restart":
            return await self.restart_sorter(float(body.get("down_s", 2.0)))
        if name == "ring_overrun":
            # Every Modbus answer stalls for the spell: the ring overwrites unread moves.
            seconds = float(body.get("seconds", 5.0))
            self.conveyor.slow = _Injection(delay_s=seconds, count=-1)

            def resume() -> None:
                self.conveyor.slow = _Injection()

            self._later(seconds, resume)
            return {"stalled_s": seconds}
        if name == "start_orders":
            self._go.set()
            return {"orders": self.made}
        if name == "stop_orders":
            self.making = False
            return {"orders": self.made}
        raise KeyError(f"unknown fault {name!r}; expected one of {', '.join(FAULTS)}")


#: Faults the control API and the site accept.
FAULTS = ("no_read", "short_pick", "overweight", "underweight", "abandoned_pack",
          "item_not_in_order", "jam", "chute_full", "amr_estop", "amr_hold",
          "amr_kill", "amr_field_violation", "amr_fatal", "amr_battery_low",
          "conveyor_restart", "sorter_restart", "ring_overrun", "start_orders", "stop_orders")
