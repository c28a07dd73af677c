"""One simulated AMR speaking VDA 5050 2.1.0 over its own MQTT connection.

The vehicle drives between the stations of a small warehouse map
(``STATIONS``) at a configurable speed, runs the ``pick`` and ``drop``
actions of the orders it receives (each takes ``action_time`` seconds and
fails with probability ``fail_rate``), and publishes:

- ``connection`` (QoS 1, retained): ONLINE after each connect, OFFLINE on an
  orderly stop; its last will is CONNECTIONBROKEN (composed anew for each
  connection, so every will has a header id of its own);
- ``state`` (QoS 0): on every change (order accepted, node reached, action
  status) and at least every ``state_interval`` seconds.

Supported: orders whose first node is where the vehicle stands (any other
first node is driven to first); released nodes and edges only (a horizon is
ignored); node and edge actions ``pick``/``drop`` (other types finish at
once); instant actions ``pick``, ``drop`` (when idle), ``cancelOrder`` and
``stateRequest``. A failed action ends the order; an order for another
``orderId`` while one runs is rejected with an ``orderUpdateError``, as is
an update of the running order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import paho.mqtt.client as paho
from pydantic import ValidationError

from gateway.config import BrokerConfig
from gateway.core.events import format_time
from gateway.transport.link import MqttLink
from simulators.vda5050_spec import VERSION, Action, InstantActions, Node, Order

MAP_ID = "hall-1"
#: The stations of the map: a 5 x 4 grid, 6 m apart.
STATIONS: dict[str, tuple[float, float]] = {
    f"ST-{i + 1:02d}": (6.0 * (i % 5), 6.0 * (i // 5)) for i in range(20)
}
LOAD_ACTIONS = ("pick", "drop")
_dumps = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class AmrOptions:
    """What every vehicle of a simulated fleet shares."""

    host: str = "127.0.0.1"
    port: int = 1883
    interface: str = "uagv"
    version: str = "v2"
    manufacturer: str = "SimRobotics"
    state_interval: float = 30.0
    speed: float = 1.5
    action_time: float = 2.0
    fail_rate: float = 0.0
    standalone: bool = False
    #: Standalone: seconds idle between self-assigned orders (uniform draw).
    idle: tuple[float, float] = (0.5, 3.0)
    keepalive: int = 30


class Vehicle:
    """One AMR: its MQTT link, its order execution and its state."""

    def __init__(self, opts: AmrOptions, serial: str, rng: random.Random,
                 start: str | None = None) -> None:
        self.opts = opts
        self.serial = serial
        self.rng = rng
        self.prefix = f"{opts.interface}/{opts.version}/{opts.manufacturer}/{serial}"
        self.published: Counter[str] = Counter()
        self._headers: Counter[str] = Counter()
        self.order_id = ""
        self.order_update_id = 0
        self.last_node = start or rng.choice(list(STATIONS))
        self.last_seq = 0
        self.x, self.y = STATIONS.get(self.last_node, (0.0, 0.0))
        self.theta = 0.0
        self._leg: tuple[float, float, float, float, float, float] | None = None
        self.node_states: list[dict[str, Any]] = []
        self.edge_states: list[dict[str, Any]] = []
        self.actions: dict[str, dict[str, Any]] = {}
        self.loads: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.battery = round(rng.uniform(40.0, 100.0), 1)
        self.orders_done = 0
        self._order_task: asyncio.Task[None] | None = None
        self._last_state = 0.0
        #: Set while no order or instant pick/drop runs; ``busy`` is its complement.
        self.idle = asyncio.Event()
        self.idle.set()
        self.busy = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.link = MqttLink(
            BrokerConfig(id="amr", host=opts.host, port=opts.port, keepalive=opts.keepalive),
            f"{opts.manufacturer}-{serial}", persistent=False, on_message=self._on_message,
            subscriptions=[(f"{self.prefix}/order", 0), (f"{self.prefix}/instantActions", 0)],
            will=(f"{self.prefix}/connection", self._connection("CONNECTIONBROKEN"), 1, True),
            backoff_initial=1.0, backoff_max=5.0,
        )
        on_connect = cast(Callable[..., None], self.link.client.on_connect)

        def connected(client: paho.Client, userdata: Any, flags: Any, reason: Any,
                      properties: Any) -> None:
            on_connect(client, userdata, flags, reason, properties)
            if not reason.is_failure and not self._stopping:
                self._online()

        self.link.client.on_connect = connected

    # -- messages out ---------------------------------------------------------------------

    def header(self, topic: str) -> dict[str, Any]:
        """The next header of ``topic`` (header ids count per topic)."""
        header = self._headers[topic]
        self._headers[topic] += 1
        return {"headerId": header, "timestamp": format_time(time.time()), "version": VERSION,
                "manufacturer": self.opts.manufacturer, "serialNumber": self.serial}

    def _connection(self, state: str) -> bytes:
        return _dumps({**self.header("connection"), "connectionState": state}).encode()

    def _online(self) -> None:
        self.link.publish(f"{self.prefix}/connection", self._connection("ONLINE"), 1, True)
        self.published["connection"] += 1
        # The will of the next connection (paho sends it with the next CONNECT).
        self.link.client.will_set(f"{self.prefix}/connection",
                                  self._connection("CONNECTIONBROKEN"), 1, True)
        self.publish_state()

    def start(self, *extra: Coroutine[Any, Any, None]) -> None:
        """Start the vehicle's tasks: its link, its periodic state, and ``extra`` ones.

        They all end with ``stop``.
        """
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.link.run(), name=f"amr-link-{self.serial}"),
                       loop.create_task(self.heartbeat(), name=f"amr-state-{self.serial}"),
                       *(loop.create_task(c, name=f"amr-{self.serial}") for c in extra)]

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Publish OFFLINE (retained), disconnect without the last will, end the tasks."""
        self._stopping = True
        if self.link.connected.is_set():
            fut = self.link.publish(f"{self.prefix}/connection", self._connection("OFFLINE"),
                                    1, True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fut, timeout)
                self.published["connection"] += 1
        # An orderly DISCONNECT, written now: closing the socket with it still
        # queued would make the broker publish the last will. No await until the
        # tasks are cancelled, so the link cannot reconnect in between.
        with contextlib.suppress(Exception):
            self.link.client.disconnect()
            self.link.client.loop_write()
        tasks = [*self._tasks, *([self._order_task] if self._order_task else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def state(self) -> dict[str, Any]:
        """The state message as it would be sent now."""
        x, y, driving = self.x, self.y, False
        if self._leg is not None:
            x0, y0, x1, y1, t0, t1 = self._leg
            f = min(1.0, max(0.0, (time.monotonic() - t0) / max(t1 - t0, 1e-6)))
            x, y, driving = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f, True
        speed = self.opts.speed if driving else 0.0
        return {
            **self.header("state"),
            "orderId": self.order_id,
            "orderUpdateId": self.order_update_id,
            "lastNodeId": self.last_node,
            "lastNodeSequenceId": self.last_seq,
            "nodeStates": self.node_states,
            "edgeStates": self.edge_states,
            "driving": driving,
            "paused": False,
            "operatingMode": "AUTOMATIC",
            "agvPosition": {"x": round(x, 3), "y": round(y, 3), "theta": round(self.theta, 4),
                            "mapId": MAP_ID, "positionInitialized": True},
            "velocity": {"vx": speed * math.cos(self.theta), "vy": speed * math.sin(self.theta),
                         "omega": 0.0},
            "loads": self.loads,
            "actionStates": list(self.actions.values()),
            "batteryState": {"batteryCharge": self.battery, "charging": False},
            "errors": self.errors,
            "information": [],
            "safetyState": {"eStop": "NONE", "fieldViolation": False},
        }

    def publish_state(self) -> None:
        """Publish the state now (QoS 0), if connected."""
        if self.link.connected.is_set():
            self.link.publish(f"{self.prefix}/state", _dumps(self.state()).encode(), 0)
            self.published["state"] += 1
            self._last_state = time.monotonic()

    async def heartbeat(self) -> None:
        """Publish the state at least every ``state_interval`` seconds."""
        interval = self.opts.state_interval
        await asyncio.sleep(self.rng.uniform(0, interval))  # spread the fleet over time
        while True:
            wait = self._last_state + interval - time.monotonic()
            if wait <= 0:
                self.publish_state()
                wait = interval
            await asyncio.sleep(wait)

    # -- messages in ----------------------------------------------------------------------

    def _on_message(self, msg: paho.MQTTMessage, generation: int) -> None:
        if msg.topic.endswith("/order"):
            self._take_order(msg.payload)
        elif msg.topic.endswith("/instantActions"):
            self._take_instant(msg.payload)

    def _error(self, error_type: str, description: str, **refs: str) -> None:
        self.errors.append({
            "errorType": error_type, "errorLevel": "WARNING", "errorDescription": description,
            "errorReferences": [{"referenceKey": k, "referenceValue": v} for k, v in refs.items()],
        })

    def _take_order(self, payload: bytes | bytearray) -> None:
        try:
            order = Order.model_validate_json(payload)
        except ValidationError as err:
            self._error("validationError", f"order rejected: {err.error_count()} error(s)",
                        topic="order")
            self.publish_state()
            return
        if order.orderId == self.order_id and order.orderUpdateId <= self.order_update_id:
            return  # a repeat of what runs or ran
        if not self.idle.is_set() or order.orderId == self.order_id:
            why = (f"busy with order {self.order_id}" if not self.idle.is_set()
                   else "order updates are not supported")
            self._error("orderUpdateError",
                        f"order {order.orderId}/{order.orderUpdateId} rejected: {why}",
                        orderId=order.orderId)
            self.publish_state()
            return
        nodes = sorted((n for n in order.nodes if n.released), key=lambda n: n.sequenceId)
        edges = sorted((e for e in order.edges if e.released), key=lambda e: e.sequenceId)
        self.order_id, self.order_update_id = order.orderId, order.orderUpdateId
        self.errors = []
        self.actions = {}
        for actions in [*(n.actions for n in nodes), *(e.actions for e in edges)]:
            for a in actions:
                self.actions[a.actionId] = self._action_state(a)
        self.node_states = [{"nodeId": n.nodeId, "sequenceId": n.sequenceId, "released": True}
                            for n in nodes]
        self.edge_states = [{"edgeId": e.edgeId, "sequenceId": e.sequenceId, "released": True}
                            for e in edges]
        self._set_busy(True)
        self._order_task = asyncio.get_running_loop().create_task(
            self._execute(nodes, [e.actions for e in edges], [e.edgeId for e in edges]),
            name=f"amr-order-{self.serial}")
        self.publish_state()

    def _set_busy(self, busy: bool) -> None:
        if busy:
            self.idle.clear()
            self.busy.set()
        else:
            self.busy.clear()
            self.idle.set()

    @staticmethod
    def _action_state(a: Action) -> dict[str, Any]:
        return {"actionId": a.actionId, "actionType": a.actionType, "actionStatus": "WAITING"}

    def _take_instant(self, payload: bytes | bytearray) -> None:
        try:
            msg = InstantActions.model_validate_json(payload)
        except ValidationError as err:
            self._error("validationError", f"instant actions rejected: {err.error_count()} "
                        "error(s)", topic="instantActions")
            self.publish_state()
            return
        for a in msg.actions:
            st = self.actions[a.actionId] = self._action_state(a)
            if a.actionType == "cancelOrder":
                if self._order_task is not None and not self._order_task.done():
                    self._order_task.cancel()
                    for other in self.actions.values():
                        if other["actionStatus"] in ("WAITING", "INITIALIZING", "RUNNING"):
                            other["actionStatus"] = "FAILED"
                            other["resultDescription"] = "order cancelled"
                    self.node_states, self.edge_states = [], []
                st["actionStatus"] = "FINISHED"
            elif a.actionType == "stateRequest":
                st["actionStatus"] = "FINISHED"
            elif a.actionType in LOAD_ACTIONS and self.idle.is_set():
                self._set_busy(True)
                self._order_task = asyncio.get_running_loop().create_task(
                    self._instant(a), name=f"amr-instant-{self.serial}")
            else:
                st["actionStatus"] = "FAILED"
                st["resultDescription"] = ("vehicle is busy" if a.actionType in LOAD_ACTIONS
                                           else f"unsupported instant action {a.actionType!r}")
        self.publish_state()

    # -- execution ------------------------------------------------------------------------

    async def _instant(self, action: Action) -> None:
        try:
            await self._run_action(action)
        finally:
            self._set_busy(False)
            self.publish_state()

    async def _execute(self, nodes: list[Node], edge_actions: list[list[Action]],
                       edge_ids: list[str]) -> None:
        try:
            for i, node in enumerate(nodes):
                if i > 0 and i - 1 < len(edge_actions):
                    for a in edge_actions[i - 1]:
                        if not await self._run_action(a):
                            return
                    self.edge_states = [e for e in self.edge_states
                                        if e["edgeId"] != edge_ids[i - 1]]
                if i > 0 or node.nodeId != self.last_node:
                    await self._drive(node)
                self.last_node, self.last_seq = node.nodeId, node.sequenceId
                self.node_states = [n for n in self.node_states
                                    if n["sequenceId"] != node.sequenceId]
                self.publish_state()
                for a in node.actions:
                    if not await self._run_action(a):
                        return
            self.orders_done += 1
        finally:
            self._leg = None
            self.node_states, self.edge_states = [], []
            self._set_busy(False)
            self.publish_state()

    async def _drive(self, node: Node) -> None:
        if node.nodePosition is not None:
            target = (node.nodePosition.x, node.nodePosition.y)
        else:
            target = STATIONS.get(node.nodeId, (self.x, self.y))
        dist = math.hypot(target[0] - self.x, target[1] - self.y)
        seconds = dist / self.opts.speed if self.opts.speed > 0 else 0.0
        if dist > 0:
            self.theta = math.atan2(target[1] - self.y, target[0] - self.x)
        now = time.monotonic()
        self._leg = (self.x, self.y, target[0], target[1], now, now + seconds)
        self.publish_state()
        await asyncio.sleep(seconds)
        self._leg = None
        self.x, self.y = target
        self.battery = max(5.0, round(self.battery - 0.01 * dist, 2))

    async def _run_action(self, a: Action) -> bool:
        """Run one action; False when it failed (the order then ends)."""
        st = self.actions.setdefault(a.actionId, self._action_state(a))
        if a.actionType not in LOAD_ACTIONS:
            st["actionStatus"] = "FINISHED"
            self.publish_state()
            return True
        st["actionStatus"] = "RUNNING"
        self.publish_state()
        await asyncio.sleep(self.opts.action_time)
        params = {p.key: p.value for p in a.actionParameters or ()}
        load_id = params.get("loadId")
        if self.opts.fail_rate and self.rng.random() < self.opts.fail_rate:
            what = "no load detected" if a.actionType == "pick" else "drop position occupied"
            st["actionStatus"] = "FAILED"
            st["resultDescription"] = f"{a.actionType} failed: {what}"
            self._error(f"{a.actionType}Failed", f"{a.actionType} failed at {self.last_node}: "
                        f"{what}", actionId=a.actionId, orderId=self.order_id)
            self.publish_state()
            return False
        if a.actionType == "pick":
            load: dict[str, Any] = {"loadType": "TOTE"}
            if isinstance(load_id, str) and load_id:
                load["loadId"] = load_id
            self.loads.append(load)
        else:
            keep = [x for x in self.loads if x.get("loadId") != load_id]
            self.loads = keep if len(keep) < len(self.loads) else self.loads[:-1]
        st["actionStatus"] = "FINISHED"
        self.publish_state()
        return True
