"""The WMS simulator's fault model: which faults exist and what values they take."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = [
    "MALFORMED_REJECTED_VARIANTS",
    "FaultError",
    "Faults",
    "HostileMode",
    "RedirectTarget",
    "RejectMode",
    "validate_faults",
]

RejectMode = Literal["partial", "batch400", "batch422"]
REJECT_MODES: tuple[RejectMode, ...] = ("partial", "batch400", "batch422")

HostileMode = Literal[
    "garbage_2xx",
    "malformed_rejected",
    "redirect",
    "redirect_307",
    "huge_body",
    "endless_body",
    "html_5xx",
]
HOSTILE_MODES: tuple[HostileMode, ...] = (
    "garbage_2xx",
    "malformed_rejected",
    "redirect",
    "redirect_307",
    "huge_body",
    "endless_body",
    "html_5xx",
)
RedirectTarget = Literal["control", "self"]
REDIRECT_TARGETS: tuple[RedirectTarget, ...] = ("control", "self")

#: Variants of ``malformed_rejected``, used in turn (one per hostile request)
#: unless ``Faults.hostile_variant`` names one.
MALFORMED_REJECTED_VARIANTS: tuple[str, ...] = (
    "id_list",
    "id_object",
    "rejected_not_list",
    "reason_not_string",
)


@dataclasses.dataclass(slots=True)
class Faults:
    """Faults the simulator injects; mutable while it runs.

    Counts (``retry_after_count``, ``force_status_count``, ``hostile_count``)
    are decremented per affected request; ``-1`` means every request until changed. ``outage`` only
    reflects the listener state: change it with :meth:`WmsSimulator.set_outage`.
    """

    outage: bool = False
    error_rate: float = 0.0
    retry_after_status: int | None = None
    retry_after: str = "1"
    retry_after_count: int = 1
    latency_ms: float = 0.0
    reject_pattern: str | None = None
    reject_field: str = "event_id"
    reject_mode: RejectMode = "partial"
    token: str | None = None
    force_status: int | None = None
    force_status_count: int = 1
    max_body_bytes: int | None = None
    hostile: HostileMode | None = None
    hostile_count: int = 1
    hostile_body_bytes: int = 1024**3
    hostile_redirect_to: RedirectTarget = "control"
    hostile_variant: str | None = None
    hostile_interval_ms: float = 100.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the faults as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def update(self, patch: Mapping[str, object]) -> None:
        """Validate ``patch`` as a whole, then apply it (all or nothing).

        Raises:
            FaultError: naming the first bad key.
        """
        for key, value in validate_faults(patch).items():
            setattr(self, key, value)


class FaultError(ValueError):
    """A fault setting that does not exist or has a value of the wrong kind."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"fault {key!r}: {reason}")
        self.key = key
        self.reason = reason


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """True for an int or a float, not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check(
    ok: Callable[[Any], bool], expected: str, convert: Callable[[Any], Any] = lambda v: v
) -> Callable[[object], object]:
    def check(value: object) -> object:
        if not ok(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return convert(value)

    return check


def _optional(inner: Callable[[object], object]) -> Callable[[object], object]:
    return lambda v: None if v is None else inner(v)


def _regex(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(f"expected a regular expression string, got {value!r}")
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"invalid regular expression: {err}") from None
    return value


_FAULT_CHECKS: dict[str, Callable[[object], object]] = {
    "outage": _check(lambda v: isinstance(v, bool), "true or false"),
    "error_rate": _check(lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1", float),
    "retry_after_status": _optional(_check(lambda v: _is_int(v) and v in (429, 503), "429 or 503")),
    "retry_after": _check(
        lambda v: (isinstance(v, str) and v.strip() != "") or (_is_int(v) and v >= 0),
        "seconds or an HTTP-date",
        lambda v: str(v).strip(),
    ),
    "retry_after_count": _check(lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "latency_ms": _check(lambda v: is_number(v) and v >= 0, "a number >= 0", float),
    "reject_pattern": _optional(_regex),
    "reject_field": _check(lambda v: isinstance(v, str) and v != "", "a dotted field path"),
    "reject_mode": _check(lambda v: v in REJECT_MODES, "|".join(REJECT_MODES)),
    "token": _optional(_check(lambda v: isinstance(v, str) and v != "", "a non-empty string")),
    "force_status": _optional(_check(lambda v: _is_int(v) and 200 <= v <= 599, "a status 200-599")),
    "force_status_count": _check(lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "max_body_bytes": _optional(_check(lambda v: _is_int(v) and v >= 0, "an integer >= 0")),
    "hostile": _optional(_check(lambda v: v in HOSTILE_MODES, "|".join(HOSTILE_MODES))),
    "hostile_count": _check(lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "hostile_body_bytes": _check(lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "hostile_redirect_to": _check(lambda v: v in REDIRECT_TARGETS, "|".join(REDIRECT_TARGETS)),
    "hostile_variant": _optional(
        _check(lambda v: v in MALFORMED_REJECTED_VARIANTS, "|".join(MALFORMED_REJECTED_VARIANTS))
    ),
    "hostile_interval_ms": _check(
        lambda v: is_number(v) and 0 < v <= 60_000, "a number > 0 and <= 60000", float
    ),
    "seed": _check(_is_int, "an integer"),
}


def validate_faults(patch: Mapping[str, object]) -> dict[str, Any]:
    """Check a partial fault setting and return it normalised.

    Raises:
        FaultError: for an unknown key or a value of the wrong kind.
    """
    clean: dict[str, Any] = {}
    for key, value in patch.items():
        check = _FAULT_CHECKS.get(key)
        if check is None:
            raise FaultError(key, f"unknown fault; known: {', '.join(_FAULT_CHECKS)}")
        try:
            clean[key] = check(value)
        except ValueError as err:
            raise FaultError(key, str(err)) from None
    return clean
