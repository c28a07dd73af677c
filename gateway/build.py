"""From a validated config to running components: the config models are the plugins.

Each device model builds its driver (``DeviceModel.build(ctx)``) and each sink
model its sink (``SinkModel.build(ctx)``); this module only groups devices
that share a driver and hands each group its ``DriverContext``. No ``isinstance``
chain: a new kind of device or sink is a new model in the config's unions
(gateway/config.py), nothing here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from buffer.service import Committer
from gateway.config import GatewayConfig
from gateway.core.codes import Identity
from gateway.core.config import DeviceModel
from gateway.core.protocols import Driver, DriverContext, Sink, SinkContext
from gateway.ingest import DriverIngest


def build_drivers(cfg: GatewayConfig, committer: Committer, *,
                  clock: Callable[[], float] = time.time) -> list[Driver]:
    """One driver per group of devices (an MQTT broker's scanners, its fleets; a PLC...)."""
    brokers = {b.id: b for b in cfg.brokers}
    groups: dict[tuple[type[DeviceModel], str], list[Any]] = {}
    for dev in cfg.devices:
        groups.setdefault((type(dev), dev.group()), []).append(dev)
    drivers: list[Driver] = []
    for (model, _), devices in groups.items():
        broker = brokers.get(getattr(devices[0], "broker", ""))
        drivers.append(model.build(
            driver_context(cfg.site.id, devices, committer, broker=broker, clock=clock,
                           identity=Identity.of(cfg.site.codes))))
    return drivers


def driver_context(site: str, devices: Sequence[DeviceModel], committer: Committer, *,
                   broker: Any = None,
                   clock: Callable[[], float] = time.time,
                   identity: Identity | None = None) -> DriverContext[Any]:
    """The context of one driver: its devices, each with its own ingest pipeline."""
    ingest = DriverIngest(site, devices, committer, type(devices[0]).KIND, identity=identity)
    return DriverContext(site=site, devices=tuple(devices), ingest=ingest, broker=broker,
                         clock=clock)


def build_sinks(cfg: GatewayConfig, *, started_at: float = 0.0,
                devices: Callable[[], Mapping[str, bool]] | None = None) -> list[Sink]:
    """Every configured sink, in config order (``devices``: states for MQTT presence)."""
    ctx = SinkContext(site=cfg.site.id, brokers={b.id: b for b in cfg.brokers},
                      started_at=started_at, devices=devices)
    return [sc.build(ctx) for sc in cfg.sinks]
