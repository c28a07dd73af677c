"""The standalone AMR's own master control: pick/drop orders between the map's stations.

With ``--standalone`` each simulated vehicle sends itself an order whenever
it has been idle for a while, on its own ``order`` topic, exactly as a
master control would; the order comes back through the broker, so the
gateway sees it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from simulators.amr_vehicle import MAP_ID, STATIONS, Vehicle

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def make_order(vehicle: Vehicle, pick_at: str | None, drop_at: str, load_id: str,
               order_id: str) -> dict[str, Any]:
    """An order from where ``vehicle`` stands: pick ``load_id`` (if ``pick_at``), then drop."""
    stops: list[tuple[str, str | None]] = [(vehicle.last_node, None)]
    if pick_at is not None:
        stops.append((pick_at, "pick"))
    stops.append((drop_at, "drop"))
    nodes, edges = [], []
    for i, (node_id, action) in enumerate(stops):
        x, y = STATIONS.get(node_id, (vehicle.x, vehicle.y))
        actions = [] if action is None else [{
            "actionType": action, "actionId": f"{order_id}-{action}",
            "blockingType": "HARD",
            "actionParameters": [{"key": "loadId", "value": load_id},
                                 {"key": "stationName", "value": node_id}],
        }]
        nodes.append({"nodeId": node_id, "sequenceId": 2 * i, "released": True,
                      "nodePosition": {"x": x, "y": y, "mapId": MAP_ID},
                      "actions": actions})
        if i:
            prev = stops[i - 1][0]
            edges.append({"edgeId": f"{prev}>{node_id}", "sequenceId": 2 * i - 1,
                          "released": True, "startNodeId": prev, "endNodeId": node_id,
                          "actions": []})
    return {**vehicle.header("order"), "orderId": order_id, "orderUpdateId": 0,
            "nodes": nodes, "edges": edges}


async def standalone(vehicle: Vehicle) -> None:
    """Publish ``vehicle`` an order to itself whenever it is idle, forever."""
    stations = list(STATIONS)
    rng = vehicle.rng
    n = 0
    while True:
        await vehicle.idle.wait()
        lo, hi = vehicle.opts.idle
        await asyncio.sleep(rng.uniform(lo, hi))
        if not vehicle.idle.is_set() or not vehicle.link.connected.is_set():
            continue
        n += 1
        order_id = f"{vehicle.serial}-{n:06d}"
        carried = [x.get("loadId") for x in vehicle.loads if x.get("loadId")]
        others = [s for s in stations if s != vehicle.last_node]
        if carried:  # a drop failed earlier: deliver what is on board first
            order = make_order(vehicle, None, rng.choice(others), str(carried[0]), order_id)
        else:
            pick, drop = rng.sample(others, 2)
            order = make_order(vehicle, pick, drop, f"TOTE-{order_id}", order_id)
        vehicle.link.publish(f"{vehicle.prefix}/order", _dumps(order).encode(), 0)
        vehicle.published["order"] += 1
        # The order comes back through the broker: wait for it to start.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(vehicle.busy.wait(), 5.0)
