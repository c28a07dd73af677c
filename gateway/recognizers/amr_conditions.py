"""AMR conditions a state shows while they last: emergency stop, protective field, FATAL errors,
low battery — each an ``exception`` when it is raised and another when it is cleared.

A condition is raised by the first state that shows it and cleared by the
first state that no longer does, like a conveyor fault. Its event ids come
from physical values: the vehicle, the condition and the timestamp of the
state that raised it (``amr:<manufacturer>/<serial>/<condition>@<ms>``; the
clear is that key plus ``:cleared``), so two e-stops are two ids, and a clear
always names the raise it ends.

States travel at QoS 0. A lost raising state delays the raise to the next
state that shows the condition (its timestamp makes the id); a condition that
comes and goes between two states the gateway receives is never seen and
raises nothing. What is open survives a gateway restart in the vehicle's
recognizer note, so a restarted gateway neither raises an open condition
again nor misses its clear.

==================  =============================================  ==========================
condition           open while the state shows                     reasons
==================  =============================================  ==========================
``estop``           ``safetyState.eStop`` other than ``NONE``      ``amr_estop`` / ``_cleared``
``field_violation``  ``safetyState.fieldViolation`` true            ``amr_field_violation`` / …
``fatal:<type>``    a FATAL error not tied to a failed action      ``amr_fatal_error`` / …
``battery_low``     charge below ``battery_low`` (until it is       ``amr_battery_low`` / …
                    back to ``battery_clear`` or more)
==================  =============================================  ==========================
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from gateway.core.reports import StateReport, VehicleError

__all__ = ["Condition", "Thresholds", "conditions_of", "fatal_name"]


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Battery levels (percent): below ``low`` raises, ``clear`` or more clears."""

    low: float | None = None
    clear: float | None = None


@dataclass(frozen=True, slots=True)
class Condition:
    """One open condition as a state shows it: its reason and the data it adds."""

    reason: str
    data: dict[str, Any]


def fatal_name(error: VehicleError) -> str:
    """The condition name of a FATAL error: its type and references identify it."""
    refs = ",".join(f"{k}={v}" for k, v in sorted(error.references))
    return f"fatal:{error.error_type}" + (f"[{refs}]" if refs else "")


def conditions_of(st: StateReport, was_open: Collection[str], levels: Thresholds
                  ) -> dict[str, Condition]:
    """The conditions ``st`` shows, by name.

    ``was_open`` are the conditions open before it: the battery's hysteresis,
    and a state without ``safetyState`` or ``batteryState`` keeps what they
    had open (it says nothing about them).
    """
    out: dict[str, Condition] = {}
    kept = Condition("", {})
    if st.estop is None:
        out.update((name, kept) for name in ("estop", "field_violation") if name in was_open)
    elif st.estop != "NONE":
        out["estop"] = Condition("amr_estop", {"estop": st.estop})
    if st.field_violation:
        out["field_violation"] = Condition("amr_field_violation", {})
    failed = {a.action_id for a in st.actions if a.status == "FAILED"}
    for e in st.errors:
        if e.level != "FATAL" or failed.intersection(e.action_ids):
            continue  # a failed action's error is in its amr_action_failed
        out[fatal_name(e)] = Condition("amr_fatal_error", {
            "error_type": e.error_type, "description": e.description,
            "references": {k: v for k, v in e.references}})
    charge = st.battery_charge
    if charge is None:
        if "battery_low" in was_open:
            out["battery_low"] = kept
    elif levels.low is not None:
        clear = levels.clear if levels.clear is not None else levels.low
        if charge < levels.low or ("battery_low" in was_open and charge < clear):
            out["battery_low"] = Condition("amr_battery_low", {
                "battery_charge": charge, "charging": st.charging,
                "battery_low": levels.low, "battery_clear": clear})
    return out
