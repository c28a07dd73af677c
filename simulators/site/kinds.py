"""What each kind of physical happening in the ledger must become at the WMS.

The truth check is driven by this table: one ``Kind`` per ledger ``kind``.
A kind the gateway does not turn into events yet has ``produced=False``: its
entries are written to the ledger (so a recognizer added later is checked
against the same ground truth) but not counted as missing; flipping the flag
(or naming the kind in ``--kinds``) puts it under the check.

``clock`` says where the event's ``occurred_at`` comes from: ``"device"``
when the source message carries the device's own time (then it must equal the
ledger's time to the millisecond when ``exact_time``), ``"gateway"`` when the
source has no time of its own (a Modbus poll, a broker's last will) and the
gateway stamps what it receives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from simulators.site.ledger import Entry

__all__ = ["KINDS", "Kind", "covers_ring_overrun"]


def covers_ring_overrun(entry: Entry, event: Mapping[str, Any]) -> bool:
    """Whether a ``tracking_lost`` exception reports the overwritten move ``entry``."""
    data = event.get("data") or {}
    seq, boot = entry.fields.get("seq"), entry.fields.get("boot")
    first, last = data.get("first_seq"), data.get("last_seq")
    return (event.get("device") == entry.device and data.get("reason") == "tracking_lost"
            and data.get("boot") == boot and isinstance(seq, int)
            and isinstance(first, int) and isinstance(last, int) and first <= seq <= last)


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of happening and the event it becomes."""

    type: str
    produced: bool
    clock: Literal["device", "gateway"]
    #: ``occurred_at`` must equal the ledger's time (ms): the source carries it exactly.
    exact_time: bool = False
    #: For entries the device lost: does this event report the loss?
    covers: Callable[[Entry, Mapping[str, Any]], bool] | None = None
    doc: str = ""


def _condition(what: str) -> Kind:
    """An AMR condition: raised and cleared (``…_cleared``), timed by the vehicle's state."""
    return Kind("exception", True, "device", True, doc=f"{what} (raised, and cleared)")


KINDS: Final[Mapping[str, Kind]] = {
    "pick_confirm": Kind("pick", True, "device", True,
                         doc="an operator confirms a pick at a put-wall station"),
    "short_pick": Kind("exception", True, "device", True,
                       doc="an operator confirms less than the task asked for"),
    "conveyor_move": Kind("move", True, "gateway", covers=covers_ring_overrun,
                          doc="a tote moves between conveyor zones (tracking ring entry)"),
    "conveyor_jam": Kind("exception", True, "gateway", doc="a conveyor zone jams"),
    "conveyor_jam_cleared": Kind("exception", True, "gateway", doc="the jam is cleared"),
    "induct_scan": Kind("scan", True, "device", True, doc="the induct reader reads a tote"),
    "induct_no_read": Kind("exception", True, "device", True,
                           doc="the induct reader cannot read a tote"),
    "divert": Kind("move", True, "device", True, doc="the sorter diverts a tote to its chute"),
    "divert_exception": Kind("exception", True, "device", True,
                             doc="a divert confirm that is not a divert (chute full, no-read)"),
    "pack_scan": Kind("scan", True, "device", True,
                      doc="a pack station scanner reads a tote or a carton label"),
    "pack_close": Kind("pack", True, "device", True,
                       doc="a carton is weighed and closed at a pack station"),
    "pack_overweight": Kind("exception", True, "device", True,
                            doc="a carton weighs more than expected, beyond the tolerance"),
    "pack_underweight": Kind("exception", True, "device", True,
                             doc="a carton weighs less than expected, beyond the tolerance"),
    "pack_abandoned": Kind("exception", True, "device", True,
                           doc="a pack with nothing closed within the bench's timeout"),
    "item_not_in_order": Kind("exception", True, "device", True,
                              doc="a pack station scans an item its pack task does not hold"),
    "amr_drop": Kind("move", True, "device",
                     doc="an AMR drops a carton at a dock door: the carton's move from its "
                         "pickup (picked_at, from) to the drop (to)"),
    "amr_action_failed": Kind("exception", True, "device",
                              doc="an AMR's pick or drop fails (VDA 5050 action FAILED)"),
    "amr_connection_broken": Kind("exception", True, "gateway",
                                  doc="an AMR dies; the broker sends its last will"),
    **{f"amr_{name}": _condition(what) for name, what in (
        ("estop", "an AMR's emergency stop is pressed"),
        ("field_violation", "something enters an AMR's protective field"),
        ("fatal_error", "an AMR reports a FATAL error"),
        ("battery_low", "an AMR's battery falls below the fleet's battery_low"))},
}
