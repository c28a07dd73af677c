"""``try --scan``: which addresses of a Modbus device's table answer, with their values."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gateway.commission.session import DeviceUnreachable
from gateway.exitcodes import EXIT_OK

#: Values shown per human line.
_PER_LINE = 10


def _value(v: int | bool) -> str:
    return str(v).lower() if isinstance(v, bool) else f"{v} (0x{v:04X})"


async def scan(dev: Any, table: Any, start: int, end: int, as_json: bool,
               out: Callable[[str], None]) -> int:
    """Print the ranges of ``start..end`` in ``table`` and their outcome; the exit code."""
    from drivers.modbus.scan import NotReachable, scan_device

    try:
        ranges = await scan_device(dev, table, start, end)
    except NotReachable as err:
        raise DeviceUnreachable(f"{dev.id}: {err}") from None
    answering = 0
    for r in ranges:
        n = r.end - r.start + 1
        if r.status == "answers":
            answering += n
        if as_json:
            out(json.dumps({"kind": "range", "table": r.table, "start": r.start, "end": r.end,
                            "status": r.status, "values": list(r.values), "detail": r.detail}))
            continue
        what = "answers" if r.status == "answers" else f"{r.status.replace('_', ' ')}"
        out(f"{r.table} {r.start}..{r.end} ({n}): {what}"
            f"{'' if r.detail is None else ' - ' + r.detail}")
        for i in range(0, len(r.values), _PER_LINE):
            chunk = r.values[i:i + _PER_LINE]
            out(f"    {r.start + i:>5}: " + "  ".join(_value(v) for v in chunk))
    total = end - start + 1
    if as_json:
        out(json.dumps({"kind": "summary", "table": table, "start": start, "end": end,
                        "answering": answering, "addresses": total}))
    else:
        out(f"{dev.id}: {answering} of {total} {table} address(es) {start}..{end} answer")
    return EXIT_OK
