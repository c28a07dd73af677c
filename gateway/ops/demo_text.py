"""What the demo prints: one "try this" block with every URL and ready commands,
the demo's status token, and the closing count of events per device kind."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: The name the demo's status token goes by in the audit trail.
DEMO_TOKEN_NAME = "demo"


def write_demo_token(folder: Path) -> tuple[Path, str]:
    """A fresh status token in ``folder/status.token`` (``demo TOKEN``); returns both."""
    token = secrets.token_urlsafe(12)
    path = folder / "status.token"
    path.write_text(f"{DEMO_TOKEN_NAME} {token}\n", encoding="utf-8")
    path.chmod(0o600)
    return path, token


def device_kind(role: str | None, driver: str) -> str:
    """The kind a device is counted as: its role, else its driver (VDA 5050: ``amr``)."""
    return role or {"vda5050": "amr"}.get(driver, driver)


@dataclass(frozen=True, slots=True)
class DemoSite:
    """Where everything of a running demo listens."""

    status: str
    token: str | None
    config: Path
    wms_ingest: str
    wms_control: str
    broker: str
    events_topic: str
    #: The simulated site's control API (faults, state, ledger), its ledger file.
    site_control: str | None = None
    ledger: Path | None = None
    #: Device id -> kind (conveyor, sorter, scanner, pack_station, amr, ...).
    devices: Mapping[str, str] = field(default_factory=dict)
    modbus_port: int | None = None
    opcua_port: int | None = None


#: The site's faults the "try this" block shows: (what it does, fault, JSON body).
SITE_FAULTS: tuple[tuple[str, str, str], ...] = (
    ("jam conveyor zone 2 for 30 s", "jam", '{"zone": 2, "seconds": 30}'),
    ("the next 3 induct scans are no-reads", "no_read", '{"count": 3}'),
    ("chute 1 full for 20 s", "chute_full", '{"station": 1, "seconds": 20}'),
    ("the next 2 picks are short", "short_pick", '{"count": 2}'),
    ("the next carton is overweight", "overweight", '{"count": 1}'),
    ("AMR emergency stop for 10 s", "amr_estop", '{"seconds": 10}'),
)


def _devices_line(devices: Mapping[str, str]) -> str:
    per = Counter(devices.values())
    return ", ".join(f"{n} {kind}" for kind, n in sorted(per.items()))


def try_this(site: DemoSite) -> list[str]:
    """The block the demo prints once everything is up."""
    s, c = site.status.rstrip("/"), site.wms_control.rstrip("/")
    cfg = site.config
    lines = [
        "",
        "warehouse gateway demo is running: the whole simulated site",
        "",
        f"  status page      {s}/   (log in with the status token to replay or discard)",
        f"  status API       {s}/api/status",
        f"  metrics          {s}/metrics",
        f"  dead letters     {s}/api/dead-letters",
        f"  reconciliation   {s}/api/reconciliation",
        f"  audit trail      {s}/api/audit",
    ]
    if site.token:
        lines.append(f"  status token     {site.token}   (name {DEMO_TOKEN_NAME!r} in the audit "
                     "trail)")
    lines += [
        f"  WMS simulator    {site.wms_ingest}  (stats: {c}/stats, faults: {c}/control/faults)",
        f"  MQTT broker      {site.broker}  (events out on {site.events_topic})",
    ]
    if site.devices:
        lines.append(f"  devices          {len(site.devices)}: {_devices_line(site.devices)}")
    if site.modbus_port is not None:
        lines.append(f"  conveyor PLC     Modbus TCP 127.0.0.1:{site.modbus_port}")
    if site.opcua_port is not None:
        lines.append(f"  sorter, reader   OPC UA opc.tcp://127.0.0.1:{site.opcua_port}/")
    f = site.site_control.rstrip("/") if site.site_control else None
    if f:
        lines.append(f"  site control     {f}/state, {f}/ledger, POST {f}/faults/<name>")
    if site.ledger:
        lines.append(f"  site ledger      {site.ledger}  (what physically happened)")
    lines.append(f"  config, store    {cfg.parent}")
    lines += ["", "try this:",
              "  # take the WMS down for 60 s: backlog and oldest-undelivered age grow, then drain",
              f"  curl -s -X POST {c}/control/outage -d '{{\"seconds\": 60}}'"]
    if f:
        for what, name, body in SITE_FAULTS:
            lines += [f"  # {what}", f"  curl -s -X POST {f}/faults/{name} -d '{body}'"]
    lines += ["  # the WMS rejects codes ending in 5: they become dead letters (undo: "
              "'{\"reject_pattern\": null}')",
              f"  curl -s -X POST {c}/control/faults -d "
              "'{\"reject_pattern\": \"5$\", \"reject_field\": \"data.code\"}'"]
    if site.token:
        lines += ["  # replay every WMS dead letter (or use the status page)",
                  f"  curl -s -X POST -H 'Authorization: Bearer {site.token}' "
                  f"{s}/api/dead-letters/replay -d '{{\"all\": true, \"filter\": "
                  "{\"sink\": \"wms\"}}'"]
    lines += [f"  warehouse-gateway status --config {cfg}",
              f"  warehouse-gateway store dead-letters --config {cfg}",
              f"  warehouse-gateway report --config {cfg} --format json",
              f"  warehouse-gateway events tail --config {cfg} --follow",
              "",
              "  Ctrl-C stops everything.",
              ""]
    return lines


def closing_line(unique: int, duplicates: int, devices: Iterable[str],
                 kinds: Mapping[str, str]) -> str:
    """``demo stopped: ...`` with the WMS's events counted per device kind.

    ``devices`` is the device of each event the WMS accepted; ``kinds`` maps
    a device id to its kind (see :func:`device_kind`).
    """
    per = Counter(kinds.get(d, "other") for d in devices)
    shown = ", ".join(f"{n} from {k}s" for k, n in sorted(per.items(), key=lambda kv: -kv[1]))
    return (f"demo stopped: WMS accepted {unique} unique events ({duplicates} duplicates): "
            f"{shown or 'none'}")
