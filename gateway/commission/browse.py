"""``try --browse``: an OPC UA device's event types with their fields, and its variables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from gateway.commission.render import jsonable
from gateway.commission.session import DeviceUnreachable
from gateway.exitcodes import EXIT_CONFIG, EXIT_OK


async def browse(dev: Any, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """Print what ``dev``'s server exposes (under ``args.node``); the exit code."""
    from drivers.opcua.browse import NotReachable, browse_device

    try:
        result = await browse_device(dev, args.node, include_standard=args.all,
                                     limit=args.limit)
    except NotReachable as err:
        raise DeviceUnreachable(f"{dev.id}: {err}") from None
    except ValueError as err:
        out(json.dumps({"kind": "error", "error": str(err)}) if args.json
            else f"error: {err}")
        return EXIT_CONFIG
    for et in result.event_types:
        fields = [{"path": f.path, "data_type": f.data_type, "declared_in": f.declared_in}
                  for f in et.fields]
        if args.json:
            out(json.dumps({"kind": "event_type", "node": et.node_id, "name": et.browse_name,
                            "supertype": et.supertype, "fields": fields}))
            continue
        out(f"event type {et.browse_name}  {et.node_id}"
            f"{'' if et.supertype is None else '  (subtype of ' + et.supertype + ')'}")
        for f in et.fields:
            out(f"    {f.path:<32} {f.data_type:<20} {f.declared_in}")
    for v in result.variables:
        if args.json:
            out(json.dumps({"kind": "variable", "node": v.node_id, "path": v.path,
                            "data_type": v.data_type, "value": jsonable(v.value),
                            "status": v.status}, ensure_ascii=False))
            continue
        status = "" if v.status == "Good" else f"  ({v.status})"
        out(f"variable {v.path:<40} {v.data_type:<14} = "
            f"{json.dumps(jsonable(v.value), ensure_ascii=False)}{status}  {v.node_id}")
    summary = {"kind": "summary", "event_types": len(result.event_types),
               "variables": len(result.variables), "truncated": result.truncated}
    if args.json:
        out(json.dumps(summary))
    else:
        more = f" (stopped at --limit {args.limit})" if result.truncated else ""
        out(f"{dev.id}: {len(result.event_types)} event type(s), "
            f"{len(result.variables)} variable(s){more}")
    return EXIT_OK
