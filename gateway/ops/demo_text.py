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
    scanners: int = 0
    scanner_rate: float = 0.0
    conveyor_ports: list[int] = field(default_factory=list)
    conveyor_control: str | None = None
    sorter_endpoint: str | None = None
    amrs: int = 0


def try_this(site: DemoSite) -> list[str]:
    """The block the demo prints once everything is up."""
    s, c = site.status.rstrip("/"), site.wms_control.rstrip("/")
    cfg = site.config
    lines = [
        "",
        "warehouse gateway demo is running",
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
    if site.scanners:
        lines.append(f"  scanners         {site.scanners} publishing {site.scanner_rate}/s")
    if site.conveyor_ports:
        ports = ",".join(map(str, site.conveyor_ports))
        control = f"; control {site.conveyor_control}/state" if site.conveyor_control else ""
        lines.append(f"  conveyors        {len(site.conveyor_ports)} Modbus TCP PLCs on "
                     f"127.0.0.1:{ports}{control}")
    if site.sorter_endpoint:
        lines.append(f"  sorter           OPC UA {site.sorter_endpoint}  (control: OPC UA methods "
                     "DropSubscriptions, InjectBadConfirm, InjectBadValue)")
    if site.amrs:
        lines.append(f"  AMRs             {site.amrs} VDA 5050 vehicles on the broker "
                     "(uagv/v2/...)")
    lines.append(f"  config, store    {cfg.parent}")
    lines += ["", "try this:",
              "  # take the WMS down for 60 s: backlog and oldest-undelivered age grow, then drain",
              f"  curl -s -X POST {c}/control/outage -d '{{\"seconds\": 60}}'"]
    if site.conveyor_control:
        lines += ["  # jam conveyor 1 in zone 3, then clear it",
                  f"  curl -s -X POST {site.conveyor_control}/devices/1/jam -d '{{\"zone\": 3}}'",
                  f"  curl -s -X POST {site.conveyor_control}/devices/1/clear"]
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
    a device id to its kind (scanner, conveyor, sorter, amr).
    """
    per = Counter(kinds.get(d, "other") for d in devices)
    shown = ", ".join(f"{n} from {k}s" for k, n in sorted(per.items(), key=lambda kv: -kv[1]))
    return (f"demo stopped: WMS accepted {unique} unique events ({duplicates} duplicates): "
            f"{shown or 'none'}")
