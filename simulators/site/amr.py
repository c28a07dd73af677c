"""The site's AMRs: VDA 5050 vehicles carrying cartons from pack stations to dock doors.

The vehicles are ``simulators.amr_vehicle.Vehicle`` s; this module adds what
the site needs: each terminal action is written to the ledger with the
timestamp of the first state that shows it (that state's header time is the
event's ``occurred_at``), the last will of the current connection is kept (an
AMR killed mid-run makes the broker publish exactly that message), and the
conditions a state shows while they last — an emergency stop, a protective
field violation (``safetyState``), a FATAL error (``errors``), a battery
below ``BATTERY_LOW`` until it is back to ``BATTERY_CLEAR`` — are written
to the ledger when the first state shows them raised and cleared.
``AmrDispatcher`` is the master control: one carton per order, pickup at the
pack station, drop at a dock door; the drop is the carton's ``move``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from gateway.core.events import format_time, parse_time
from simulators.amr_vehicle import MAP_ID, AmrOptions, Vehicle
from simulators.site.config import AMR_FLEET, BATTERY_CLEAR, BATTERY_LOW, SiteLayout
from simulators.site.ledger import Ledger

__all__ = ["AmrDispatcher", "SiteVehicle", "site_map"]

log = structlog.get_logger(__name__)
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def site_map(layout: SiteLayout) -> dict[str, tuple[float, float]]:
    """Positions (m) of the pack stations (west wall) and dock doors (east wall)."""
    spots = {layout.pack_location(n): (0.0, 2.0 * n) for n in range(1, layout.pack_stations + 1)}
    spots.update({layout.dock(n): (12.0, 2.0 * n) for n in range(1, layout.docks + 1)})
    return spots


class SiteVehicle(Vehicle):
    """A vehicle that reports its terminal actions and its last will to the site."""

    def __init__(self, opts: AmrOptions, serial: str, rng: random.Random, start: str,
                 on_terminal: Callable[[SiteVehicle, dict[str, Any], dict[str, Any]], None]
                 ) -> None:
        #: The last will the broker holds for the current connection.
        self.will_payload = b""
        self._next_will = b""
        self.estop = False
        self.field_violation = False
        #: A battery_low fault holds the charge down (no charging at the dock meanwhile).
        self.draining = False
        #: The FATAL error shown while set (its ``errorType``).
        self.fatal: str | None = None
        #: Conditions the last published state showed: name → (ledger fields of the raise).
        self.shown: dict[str, dict[str, Any]] = {}
        self.on_condition: Callable[[SiteVehicle, str, dict[str, Any] | None,
                                     dict[str, Any]], None] | None = None
        self._on_terminal = on_terminal
        self._told: set[tuple[str, str]] = set()
        super().__init__(opts, serial, rng, start=start)

    def _connection(self, state: str) -> bytes:
        payload = super()._connection(state)
        if state == "CONNECTIONBROKEN":
            self._next_will = payload
        return payload

    def _online(self) -> None:
        # The will composed before this CONNECT is the one the broker now holds;
        # the one composed here goes with the next connection.
        self.will_payload = self._next_will
        super()._online()

    def state(self) -> dict[str, Any]:
        """The state message, with the e-stop, field violation and FATAL error while they last."""
        st = super().state()
        st["safetyState"] = {"eStop": "MANUAL" if self.estop else "NONE",
                             "fieldViolation": self.field_violation}
        if self.fatal is not None:
            st["errors"] = [*st["errors"], {
                "errorType": self.fatal, "errorLevel": "FATAL",
                "errorDescription": f"{self.fatal} at {self.last_node}",
                "errorReferences": [{"referenceKey": "nodeId", "referenceValue": "drive"}]}]
        return st

    def conditions(self, st: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The conditions ``st`` shows (as the gateway reads them), with their fields."""
        out: dict[str, dict[str, Any]] = {}
        if st["safetyState"]["eStop"] != "NONE":
            out["estop"] = {"reason": "amr_estop", "estop": st["safetyState"]["eStop"]}
        if st["safetyState"]["fieldViolation"]:
            out["field_violation"] = {"reason": "amr_field_violation"}
        for e in st["errors"]:
            if e.get("errorLevel") == "FATAL":
                refs = ",".join(f"{r['referenceKey']}={r['referenceValue']}"
                                for r in sorted(e.get("errorReferences") or [],
                                                key=lambda r: (r["referenceKey"],
                                                               str(r["referenceValue"]))))
                name = f"fatal:{e['errorType']}" + (f"[{refs}]" if refs else "")
                out[name] = {"reason": "amr_fatal_error", "error_type": e["errorType"]}
        charge = st["batteryState"]["batteryCharge"]
        if charge < BATTERY_LOW or ("battery_low" in self.shown and charge < BATTERY_CLEAR):
            out["battery_low"] = {"reason": "amr_battery_low", "battery_charge": charge}
        return out

    def publish_state(self) -> None:
        """Publish the state now (QoS 0); the first state showing an action terminal tells."""
        if not self.link.connected.is_set():
            return
        st = self.state()
        for action in st["actionStates"]:
            key = (st["orderId"], action["actionId"])
            if action["actionStatus"] in ("FINISHED", "FAILED") and key not in self._told:
                self._told.add(key)
                self._on_terminal(self, action, st)
        now = self.conditions(st)
        if now or self.shown:
            for name in [*now, *self.shown]:
                raised, was = now.get(name), self.shown.get(name)
                if (raised is None) != (was is None) and self.on_condition is not None:
                    self.on_condition(self, name, raised, st)
            self.shown = {n: self.shown.get(n, f) for n, f in now.items()}
        self.link.publish(f"{self.prefix}/state", _dumps(st).encode(), 0)
        self.published["state"] += 1
        self._last_state = time.monotonic()

    def kill(self) -> None:
        """Die where it stands: the socket closes without DISCONNECT (the broker sends the will)."""
        self._stopping = True
        self.link.drop_connection()
        for t in [*self._tasks, *([self._order_task] if self._order_task else [])]:
            t.cancel()


class AmrDispatcher:
    """The master control: cartons in, one order per carton to an idle vehicle."""

    def __init__(self, layout: SiteLayout, ledger: Ledger, opts: AmrOptions, *,
                 rest_s: float, seed: int, link_publish: Callable[[str, bytes], Any]) -> None:
        self.layout = layout
        self.ledger = ledger
        self.opts = opts
        self.rest_s = rest_s
        self.rng = random.Random(seed)
        self._publish = link_publish
        self.map = site_map(layout)
        self.vehicles: dict[str, SiteVehicle] = {}
        self.idle: deque[str] = deque()
        self._has_idle = asyncio.Event()
        self.cartons: asyncio.Queue[tuple[str, int, str | None]] = asyncio.Queue()
        self.orders = 0
        self.delivered = 0
        self._dock = 0
        self._held_until = 0.0
        self._carrying: dict[str, tuple[str, str, str]] = {}  # serial -> carton, from, to
        self._picked: dict[str, tuple[str, float]] = {}  # serial -> pick action id, time
        #: Open conditions: (serial, name) -> source key of the raise.
        self._raised: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- vehicles -------------------------------------------------------------------

    def add(self, serial: str) -> SiteVehicle:
        """Create, start and make available vehicle ``serial`` (at the first dock)."""
        v = SiteVehicle(self.opts, serial, random.Random(self.rng.random()),
                        self.layout.dock(1), self._terminal)
        v.on_condition = self._condition
        old = self.vehicles.get(serial)
        if old is not None:
            # Revived: what its last state showed is what a reader still holds open.
            v.shown = old.shown
        v.x, v.y = self.map[self.layout.dock(1)]
        self.vehicles[serial] = v
        v.start()
        self._release(serial)
        return v

    def _release(self, serial: str) -> None:
        self.idle.append(serial)
        self._has_idle.set()

    async def _take_idle(self) -> SiteVehicle:
        while True:
            while not self.idle:
                self._has_idle.clear()
                await self._has_idle.wait()
            serial = self.idle.popleft()
            v = self.vehicles.get(serial)
            if v is not None and v.link.connected.is_set():
                return v
            if v is not None:  # not connected yet: try again shortly
                self._later(0.2, lambda s=serial: self._release(s))  # type: ignore[misc]

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(delay, fn)

    def kill(self, down_s: float) -> dict[str, Any]:
        """Kill the next idle vehicle (power lost where it parks); back after ``down_s``."""
        task = asyncio.create_task(self._kill(down_s), name="amr-kill")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"killing": "the next idle vehicle", "down_s": down_s}

    async def _kill(self, down_s: float) -> None:
        v = await self._take_idle()
        will = json.loads(v.will_payload)
        ms = round(parse_time(will["timestamp"]) * 1000)
        key = f"connection:{will['manufacturer']}/{v.serial}/{will['headerId']}@{ms}:broken"
        v.kill()
        self.ledger.record(
            "amr_connection_broken", "exception", AMR_FLEET, key, time.time(), container=None,
            fields={"reason": "amr_connection_broken", "connection_state": "CONNECTIONBROKEN",
                    "amr": v.serial, "manufacturer": will["manufacturer"],
                    "header_id": will["headerId"], "order_id": v.order_id or None},
            amr=v.serial)
        log.info("site_amr_killed", amr=v.serial, down_s=down_s)
        await self._revive(v.serial, down_s)

    async def _revive(self, serial: str, down_s: float) -> None:
        await asyncio.sleep(down_s)
        old = self.vehicles[serial]
        with contextlib.suppress(Exception):
            await asyncio.gather(*old._tasks, return_exceptions=True)
        self.add(serial)
        log.info("site_amr_revived", amr=serial)

    def _pick_vehicle(self) -> SiteVehicle:
        connected = sorted(s for s, v in self.vehicles.items() if v.link.connected.is_set())
        return self.vehicles[self.rng.choice(connected or sorted(self.vehicles))]

    def _spell(self, what: str, seconds: float, on: Callable[[SiteVehicle], None],
               off: Callable[[SiteVehicle], None]) -> dict[str, Any]:
        """A condition on one vehicle for ``seconds`` (its states tell the ledger)."""
        v = self._pick_vehicle()
        on(v)
        v.publish_state()

        def end() -> None:
            off(v)
            v.publish_state()

        self._later(seconds, end)
        return {what: v.serial, "seconds": seconds}

    def estop(self, seconds: float) -> dict[str, Any]:
        """Press the emergency stop of a vehicle for ``seconds``."""
        return self._spell("estop", seconds, lambda v: setattr(v, "estop", True),
                           lambda v: setattr(v, "estop", False))

    def field_violation(self, seconds: float) -> dict[str, Any]:
        """Someone walks into a vehicle's protective field for ``seconds``."""
        return self._spell("field_violation", seconds,
                           lambda v: setattr(v, "field_violation", True),
                           lambda v: setattr(v, "field_violation", False))

    def fatal(self, seconds: float, error_type: str = "driveFault") -> dict[str, Any]:
        """A FATAL error on a vehicle for ``seconds`` (then reset by the operator)."""
        return self._spell("fatal", seconds, lambda v: setattr(v, "fatal", error_type),
                           lambda v: setattr(v, "fatal", None))

    def battery_low(self, seconds: float, level: float = BATTERY_LOW - 5.0) -> dict[str, Any]:
        """A vehicle's battery drains to ``level`` percent; charged after ``seconds``."""
        if not 0.0 <= level < BATTERY_LOW:
            raise ValueError(f"level must be in [0, {BATTERY_LOW:g}) percent, got {level:g}")
        charged: dict[str, float] = {}

        def drain(v: SiteVehicle) -> None:
            charged[v.serial] = max(v.battery, BATTERY_CLEAR + 10.0)
            v.battery = level
            v.draining = True

        def charge(v: SiteVehicle) -> None:
            v.battery = charged[v.serial]
            v.draining = False

        return self._spell("battery_low", seconds, drain, charge)

    def _condition(self, v: SiteVehicle, name: str, raised: dict[str, Any] | None,
                   st: dict[str, Any]) -> None:
        """The first state showing a condition raised (``raised``) or cleared: ledger it."""
        t = parse_time(st["timestamp"])
        base = {"amr": v.serial, "vehicle": v.serial, "manufacturer": st["manufacturer"],
                "header_id": st["headerId"]}
        kind = "amr_fatal_error" if name.startswith("fatal:") else f"amr_{name}"
        if raised is not None:
            key = f"amr:{st['manufacturer']}/{v.serial}/{name}@{round(t * 1000)}"
            self._raised[(v.serial, name)] = key
            self.ledger.record(kind, "exception", AMR_FLEET, key, t, container=None,
                               fields={**base, **raised}, amr=v.serial)
            return
        key = self._raised.pop((v.serial, name), "")
        fields = {**base, "reason": f"{kind}_cleared"}
        if name == "battery_low":
            fields["battery_charge"] = st["batteryState"]["batteryCharge"]
        self.ledger.record(kind, "exception", AMR_FLEET, f"{key}:cleared", t, container=None,
                           fields=fields, amr=v.serial)

    # -- orders ---------------------------------------------------------------------

    def _order(self, v: SiteVehicle, carton: str, pack: str, dock: str) -> dict[str, Any]:
        self.orders += 1
        order_id = f"ORD-{v.serial}-{self.orders:06d}"
        stops = [(v.last_node, None), (pack, "pick"), (dock, "drop")]
        nodes, edges = [], []
        for i, (node_id, action) in enumerate(stops):
            x, y = self.map.get(node_id, (v.x, v.y))
            actions = [] if action is None else [{
                "actionType": action, "actionId": f"{order_id}-{action}", "blockingType": "HARD",
                "actionParameters": [{"key": "loadId", "value": carton},
                                     {"key": "stationName", "value": node_id}]}]
            nodes.append({"nodeId": node_id, "sequenceId": 2 * i, "released": True,
                          "nodePosition": {"x": x, "y": y, "mapId": MAP_ID}, "actions": actions})
            if i:
                prev = stops[i - 1][0]
                edges.append({"edgeId": f"{prev}>{node_id}", "sequenceId": 2 * i - 1,
                              "released": True, "startNodeId": prev, "endNodeId": node_id,
                              "actions": []})
        return {**v.header("order"), "orderId": order_id, "orderUpdateId": 0, "nodes": nodes,
                "edges": edges}

    def hold(self, seconds: float) -> dict[str, Any]:
        """Send no new orders for ``seconds`` (a master control's hold)."""
        self._held_until = max(self._held_until, time.monotonic() + seconds)
        return {"held_s": seconds, "busy": self.busy()}

    def busy(self) -> int:
        """Vehicles running an order now."""
        return sum(not v.idle.is_set() for v in self.vehicles.values())

    async def run(self) -> None:
        """Dispatch cartons forever."""
        while True:
            carton, station, _order = await self.cartons.get()
            while (wait := self._held_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            v = await self._take_idle()
            self._dock = self._dock % self.layout.docks + 1
            pack, dock = self.layout.pack_location(station), self.layout.dock(self._dock)
            msg = self._order(v, carton, pack, dock)
            self._carrying[v.serial] = (carton, pack, dock)
            # QoS 1: the gateway's persistent session holds the order while it is away.
            self._publish(f"{v.prefix}/order", _dumps(msg).encode())
            task = asyncio.create_task(self._watch(v, msg["orderId"]), name=f"watch-{v.serial}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _watch(self, v: SiteVehicle, order_id: str) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while v.order_id != order_id:
                    await asyncio.sleep(0.05)
        await v.idle.wait()
        if v.battery < BATTERY_CLEAR + 10.0 and not v.draining:
            # Charged at the dock between orders, before it could run low on its own.
            v.battery = 100.0
            v.publish_state()
        await asyncio.sleep(self.rest_s)
        if self.vehicles.get(v.serial) is v:
            self._release(v.serial)

    def _terminal(self, v: SiteVehicle, action: dict[str, Any], st: dict[str, Any]) -> None:
        carrying = self._carrying.get(v.serial)
        if carrying is None:
            return
        carton, pack, dock = carrying
        kind = action["actionType"]
        key = f"action:{st['manufacturer']}/{v.serial}/{st['orderId']}/{action['actionId']}"
        t = parse_time(st["timestamp"])
        base = {"vehicle": v.serial, "manufacturer": st["manufacturer"],
                "order_id": st["orderId"], "action_id": action["actionId"], "action_type": kind}
        if action["actionStatus"] == "FAILED":
            self.ledger.record("amr_action_failed", "exception", AMR_FLEET, f"{key}:failed", t,
                               container=carton,
                               fields={"reason": "amr_action_failed", "amr": v.serial,
                                       "container": carton, **base}, amr=v.serial)
        elif kind == "pick":
            # The start of the carton's move: nothing upstream, the drop carries it.
            self._picked[v.serial] = (action["actionId"], t)
        elif kind == "drop":
            pick_id, picked = self._picked.pop(v.serial, (None, None))
            self.ledger.record("amr_drop", "move", AMR_FLEET, key, t, container=carton,
                               fields={"container": carton, "from": pack, "to": dock,
                                       "picked_at": None if picked is None
                                       else format_time(picked),
                                       "pick_action_id": pick_id, **base}, amr=v.serial)
            self.delivered += 1

    async def stop(self) -> None:
        """Stop every vehicle (orderly: OFFLINE, no will) and the watchers."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(v.stop() for v in self.vehicles.values()),
                             return_exceptions=True)
