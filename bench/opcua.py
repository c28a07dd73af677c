"""OPC UA data changes from one sorter server into the store, through the real gateway.

The sorter simulator runs in its own process with ``--telemetry-nodes N
--telemetry-rate HZ`` (N Double variables, each written HZ times a second,
one batch per tick); the gateway runs in its own process with one OPC UA
device subscribed to all N variables (each data change becomes one
``telemetry`` event). No sink is configured, so the figure is ingest alone:

- ``opcua_notifications_per_s``: stored records per second (the committer's
  ``events`` counter on ``/api/status``, i.e. rows committed to SQLite with
  ``synchronous=FULL``), over a steady window after a warm-up;
- ``opcua_offered_per_s``: what the server was asked to produce (N times HZ);
- ``opcua_notifications_received_per_s``: notifications the driver took in
  (its ``notifications`` counter), to tell a slow server from a slow gateway.

The default offer (2,000 variables at 20 Hz = 40,000 changes/s) is more than
a pure-Python asyncua server produces on two cores, so the figure is the
pair's capacity; on the reference machine the server process is the
saturated side (about 90 % of a core, the gateway about 70 %).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from simulators.broker import free_port
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.harness.sorter import SorterProcess

DEVICE = "sorter-bench"


def _device(endpoint: str, nodes: int, publishing_ms: int) -> dict[str, Any]:
    return {"id": DEVICE, "driver": "opcua", "endpoint": endpoint,
            "publishing_interval": f"{publishing_ms}ms", "queue_size": 10,
            "request_timeout": "20s",
            "nodes": [{"node": f"ns=2;s=Telemetry.T{i:05d}", "point": f"t{i:05d}"}
                      for i in range(nodes)]}


def measure(workdir: Path, **opts: Any) -> dict[str, float | int]:
    """Run the measurement; options: nodes, rate_hz, seconds, warmup_s, publishing_ms."""
    nodes = int(opts.get("nodes", 2000))
    rate_hz = float(opts.get("rate_hz", 20.0))
    seconds = float(opts.get("seconds", 10.0))
    warmup = float(opts.get("warmup_s", 3.0))
    publishing_ms = int(opts.get("publishing_ms", 100))
    sorter = SorterProcess(workdir / "sorter", rate=0, state=False, extra=[
        "--telemetry-nodes", str(nodes), "--telemetry-rate", str(rate_hz)])
    cfg = GatewaySetup(workdir=workdir / "gw", broker_port=free_port(), wms_url=None,
                       scanners=0, max_bytes="4 GiB",
                       devices=[_device(sorter.endpoint, nodes, publishing_ms)])
    with sorter, GatewayProcess(cfg) as gw:
        sorter.start()
        gw.start(timeout=60)

        def sample() -> tuple[float, int, int]:
            status = gw.status()
            return (time.monotonic(), int(status["committer"]["events"]),
                    int(status["devices"][DEVICE]["notifications"]))

        deadline = time.monotonic() + 60
        while sample()[1] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no data changes stored after 60 s:\n{gw.log_tail()}")
            time.sleep(0.2)
        time.sleep(warmup)
        t0, stored0, received0 = sample()
        time.sleep(seconds)
        t1, stored1, received1 = sample()
        dev = gw.status()["devices"][DEVICE]
    elapsed = t1 - t0
    return {
        "opcua_notifications_per_s": round((stored1 - stored0) / elapsed),
        "opcua_notifications_received_per_s": round((received1 - received0) / elapsed),
        "opcua_offered_per_s": round(nodes * rate_hz),
        "opcua_nodes": nodes,
        "opcua_ingest_errors": sum(dev["ingest_errors"].values()),
    }


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    print(json.dumps(measure(Path(sys.argv[1] if len(sys.argv) > 1
                                  else tempfile.mkdtemp(prefix="bench-opcua-")))))
