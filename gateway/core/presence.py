"""The gateway's presence on MQTT: topics and exact payloads (docs/mqtt.md#presence).

``<prefix>/<site>/gateway/status`` (retained, QoS 1):

- ``online`` (birth), published after every connect;
- ``offline`` with ``"reason": "stopped"`` on a clean stop;
- ``offline`` with ``"reason": "connection_lost"``: the last will, published
  by the broker when the gateway vanishes (killed, crashed, network gone).

``<prefix>/<site>/devices/<device>/status`` (retained, QoS 1): ``up`` or
``down`` per device, published on change and after every connect.

Pure: times come in as arguments.
"""

from __future__ import annotations

import datetime as dt
import json
from importlib import metadata

#: Schema name carried by every presence payload.
PRESENCE_SCHEMA = "wh.presence.v1"


def gateway_version() -> str:
    """The installed package's version (``0+unknown`` when run from a bare tree)."""
    try:
        return metadata.version("warehouse-gateway")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def iso(ts: float) -> str:
    """A POSIX time as RFC 3339 UTC with milliseconds (as events carry it)."""
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def gateway_topic(prefix: str, site: str) -> str:
    """The gateway's own status topic."""
    return f"{prefix}/{site}/gateway/status"


def device_topic(prefix: str, site: str, device: str) -> str:
    """A device's status topic."""
    return f"{prefix}/{site}/devices/{device}/status"


def _dump(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def gateway_payload(state: str, site: str, started_at: float, *, at: float | None = None,
                    reason: str | None = None) -> bytes:
    """``online``/``offline`` document of the gateway."""
    doc: dict[str, object] = {
        "schema": PRESENCE_SCHEMA, "state": state, "site": site,
        "version": gateway_version(), "started_at": iso(started_at),
    }
    if reason is not None:
        doc["reason"] = reason
    if at is not None:
        doc["at"] = iso(at)
    return _dump(doc)


def will_payload(site: str, started_at: float) -> bytes:
    """The last will: published by the broker, so it carries no time of its own."""
    return gateway_payload("offline", site, started_at, reason="connection_lost")


def device_payload(site: str, device: str, connected: bool, since: float) -> bytes:
    """``up``/``down`` document of one device; ``since`` is when it last changed."""
    return _dump({"schema": PRESENCE_SCHEMA, "site": site, "device": device,
                  "state": "up" if connected else "down", "since": iso(since)})
