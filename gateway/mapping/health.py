"""Per-device mapping health: what the mapping made and what it could not (for /api/status)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Fields whose unmapped values are listed, and values listed per field (bounded memory).
MAX_UNMAPPED_FIELDS = 32
MAX_UNMAPPED_VALUES = 16
#: Characters of a raw sample kept per reason.
SAMPLE_CHARS = 300


@dataclass(slots=True)
class MappingHealth:
    """Counts of one device's mapping since start."""

    preset: str | None = None
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    #: Reason kind → the latest reason text and raw sample.
    last_rejected: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Field → value (repr) → times seen unmapped.
    unmapped: dict[str, Counter[str]] = field(default_factory=dict)
    debounced: int = 0

    def made(self, type_: str) -> None:
        """Count one event made."""
        self.events += 1
        self.by_type[type_] += 1

    def rejected(self, kind: str, detail: str, sample: bytes, field_name: str | None,
                 value: Any, missing: object) -> None:
        """Count one dead letter, keeping its reason and raw sample."""
        self.dead_letters[kind] += 1
        self.last_rejected[kind] = {
            "reason": f"{kind}: {detail}"[:SAMPLE_CHARS],
            "sample": sample[:SAMPLE_CHARS].decode("utf-8", "replace")}
        if kind == "unmapped_value" and field_name is not None and value is not missing:
            values = self.unmapped.get(field_name)
            if values is None:
                if len(self.unmapped) >= MAX_UNMAPPED_FIELDS:
                    return
                values = self.unmapped[field_name] = Counter()
            text = repr(value)[:100]
            if text in values or len(values) < MAX_UNMAPPED_VALUES:
                values[text] += 1

    def figures(self) -> dict[str, Any]:
        """The ``mapping`` entry of a device in ``/api/status``."""
        return {
            "preset": self.preset, "events": self.events, "by_type": dict(self.by_type),
            "dead_letters": dict(self.dead_letters), "last_rejected": dict(self.last_rejected),
            "unmapped_values": {f: dict(v) for f, v in self.unmapped.items()},
            "debounced": self.debounced,
        }
