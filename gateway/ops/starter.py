"""``warehouse-gateway init``: a commented starter config for a site, checked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

STARTER = '''\
# Warehouse edge gateway: site configuration (written by `warehouse-gateway init`).
# Every key is described in docs/configuration.md. After editing, check it:
#   warehouse-gateway check --config {path}
# and run it:
#   warehouse-gateway run --config {path}

[site]
# Part of every event id: choose it once, never change it after events flowed.
id = "{site}"

[store]
# The SQLite store-and-forward buffer; a relative path is next to this file.
path = "{store}"
# Most bytes of undelivered events kept on disk; at the limit sources are held back.
max_bytes = "2 GiB"
# Keep delivered events this long (for `events tail` and the container search).
retention = "1h"
# Discarded dead letters stay in the archive this long before they are deleted.
discarded_retention = "30d"

# The site's MQTT broker (scanners, AMRs, the MQTT sink).
[[brokers]]
id = "site"
host = "127.0.0.1"
port = 1883

# One barcode scanner publishing its reads as JSON over MQTT (docs/mqtt.md).
# Conveyors (modbus), sorters (opcua) and AMR fleets (vda5050): see docs/.
[[devices]]
id = "scan-01"
driver = "mqtt"
role = "scanner"
broker = "site"
topic = "site/{site}/scanners/scan-01/reads"
location = "INDUCT-1"

# The WMS ingest endpoint (docs/upstream-http.md).
[[sinks]]
id = "wms"
type = "http"
url = "http://127.0.0.1:8081/api/events"
routes = ["scan", "pick", "pack", "move", "exception"]
# A bearer token for the WMS, read from a file (never put it in this file):
# token_file = "wms.token"

[status]
# The status page and operations API; keep it on loopback unless a token is set.
host = "127.0.0.1"
port = 8080
# Replay and discard on the page and API need a token from this file,
# one per line, "NAME TOKEN" (the name goes into the audit trail):
# token_file = "status.token"
'''


def starter_text(path: Path, site: str, store: str) -> str:
    """The starter config for ``site``."""
    return STARTER.format(path=path, site=site, store=store)


def cmd_init(args: argparse.Namespace) -> int:
    """Write the starter config (never over an existing file without ``--force``) and check it."""
    from gateway.ops.storefile import load_or_exit_code

    path = Path(args.config)
    if path.exists() and not args.force:
        sys.stderr.write(f"error: {path} exists; pass --force to overwrite it\n")
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(starter_text(path, args.site, args.store), encoding="utf-8")
    cfg = load_or_exit_code(str(path))
    if isinstance(cfg, int):
        return cfg
    sys.stdout.write(f"wrote {path}: site {cfg.site.id}, {len(cfg.devices)} device(s), "
                     f"{len(cfg.sinks)} sink(s), store {cfg.store.path}; checked: ok\n"
                     f"next: edit it for the site, then warehouse-gateway check --config "
                     f"{path}\n")
    return 0


def add_init_command(sub: Any) -> None:
    """``init``."""
    sp = sub.add_parser("init", help="write a commented starter config for a site and check it")
    sp.add_argument("--config", default="gateway.toml",
                    help="where to write it (default gateway.toml)")
    sp.add_argument("--site", default="DC-1", help="the site id (default DC-1)")
    sp.add_argument("--store", default="buffer.db",
                    help="the store file, relative to the config (default buffer.db)")
    sp.add_argument("--force", action="store_true", help="overwrite an existing file")
    sp.set_defaults(func=cmd_init)
