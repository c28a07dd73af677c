"""Helpers for tests that run the mapping examples (docs/examples) against the vendor devices.

The device tables of the examples are used as written — only where the device
listens (endpoint, host/port, broker) is replaced by the test's own
loopback servers — so what docs/mapping.md shows is what is tested.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from gateway.core.events import make_event_id
from simulators.broker import free_port
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.wms import WmsSimulator

__all__ = ["EXAMPLES", "SITE", "event_id", "example", "example_device", "mapped_gateway",
           "wms_events"]

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
SITE = "DC-EAST-1"
#: Event types every mapped test routes to the WMS.
ROUTES = ["move", "pack", "pick", "scan", "exception", "device_status", "telemetry"]


def example(name: str) -> dict[str, Any]:
    """``docs/examples/<name>.toml`` as data."""
    with open(EXAMPLES / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


def example_device(name: str, **keys: Any) -> dict[str, Any]:
    """The first ``[[devices]]`` table of an example, with ``keys`` replaced."""
    device: dict[str, Any] = copy.deepcopy(example(name)["devices"][0])
    device.update(keys)
    return device


def mapped_gateway(tmp_path: Path, wms: WmsSimulator, devices: list[dict[str, Any]], *,
                   broker_port: int | None = None, name: str = "gateway") -> GatewayProcess:
    """A gateway process with only ``devices`` (the site broker only used by MQTT devices)."""
    setup = GatewaySetup(workdir=tmp_path / "gw", broker_port=broker_port or free_port(),
                         wms_url=wms.url, scanners=0, devices=devices,
                         site=SITE, http_extra={"routes": ROUTES})
    return GatewayProcess(setup, name=name)


def event_id(device: str, key: str) -> str:
    """The event id a mapping's source key gives (``UUID v5(site/device/key)``)."""
    return make_event_id(SITE, device, key)


def wms_events(wms: WmsSimulator, device: str, *types: str) -> list[dict[str, Any]]:
    """The events of ``device`` (of ``types``, if given) the WMS accepted, in order."""
    return [r["event"] for r in wms.events if r["event"]["device"] == device
            and (not types or r["event"]["type"] in types)]
