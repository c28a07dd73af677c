"""Config-time checks of a device's mapping, as ``check`` reports them (key paths named)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.mapping.config import resolve_mapping


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in (
                "CounterTrigger", "EdgeTrigger", "TrackingTrigger", "ThresholdTrigger",
                "ChangeTrigger", "counter", "edge", "tracking", "threshold", "change",
                "str", "ValueSpec", "list[str]"):
            continue
        else:
            out += ("." if out else "") + part
    return out


def mapping_problems(dev: Any, where: str) -> list[str]:
    """Every problem of ``dev``'s preset / mapping, each line naming its key."""
    preset, mapping = getattr(dev, "preset", None), getattr(dev, "mapping", None)
    if preset is None and mapping is None:
        return []
    try:
        resolve_mapping(dev.driver, preset, mapping)
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            key = _where(tuple(e["loc"]))
            base = f"{where}.mapping" + (f".{key}" if key else "")
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key (not part of the mapping schema)"
            elif e["type"] == "missing":
                msg = "required key is missing"
            elif e["type"] != "value_error" and "input" in e and not isinstance(
                    e["input"], dict | list):
                msg += f" (got {e['input']!r})"
            for line in msg.splitlines():
                head, sep, rest = line.partition(": ")
                if sep and not key and (head.split("[")[0].split(".")[0] in (
                        "events", "triggers", "telemetry")):
                    problems.append(f"{where}.mapping.{head}: {rest}")
                else:
                    problems.append(f"{base}: {line}")
        return problems
    except ValueError as err:
        text = str(err)
        if text.startswith("mapping."):
            return [f"{where}.{text}"]
        return [f"{where}.preset: {text}"]
    return []
