"""``python -m bench devices``: device drivers measured against their simulators.

Prints one JSON line with the figures of each driver:

- ``modbus_points_per_s``: Modbus points read per second across 50 simulated
  conveyor PLCs (``bench/modbus.py``).
- ``opcua_notifications_per_s``: OPC UA data-change notifications per second
  from one sorter server into the store (``bench/opcua.py``).
- ``amr_count`` / ``amr_gateway_cpu_pct``: the most VDA 5050 AMRs handled at
  one state message per second each while the gateway stays under 50 % of one
  core (``bench/amr.py``).

- ``mapped_opcua_events_per_s`` / ``mapped_modbus_points_per_s``, the mapping's CPU
  per event and its overhead over the preset and the built-in recognizers
  (``bench/mapping.py``).

``--only modbus,opcua,amr,mapping`` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PARTS = ("modbus", "opcua", "amr", "mapping")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench devices``."""
    p.add_argument("--only", default=",".join(PARTS),
                   help="comma-separated subset of: " + ", ".join(PARTS))
    p.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen parts and print one JSON line."""
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {unknown}; expected some of {list(PARTS)}")
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-devices-"))
    root.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "bench": "devices",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
    }
    try:
        for part in parts:
            workdir = root / part
            workdir.mkdir(exist_ok=True)
            if part == "modbus":
                from bench import modbus

                figures.update(modbus.measure(workdir))
            elif part == "opcua":
                from bench import opcua

                figures.update(opcua.measure(workdir))
            elif part == "mapping":
                from bench import mapping

                figures.update(mapping.measure(workdir))
            else:
                from bench import amr

                figures.update(amr.measure(workdir))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))
    return 0
