"""What a vendor simulator did, written down: a JSON-lines ledger and a retentive state file.

Each vendor simulator appends one JSON object per happening to its ledger
(``{"n": 1, "at": "2026-...Z", "kind": "divert_confirm", ...}``), flushed and
fsynced before the happening becomes visible to a client, so a test compares
what the gateway made with what the device says it did. ``n`` counts lines
over the ledger's whole life, across restarts.

The state file is the device's retentive memory (next ids, counters): one
JSON object replaced atomically (write, fsync, rename), so a restart
continues the sequences and a kill never leaves it half written.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Ledger", "RetentiveState", "iso_now", "read_ledger"]


def iso_now(when: datetime | None = None) -> str:
    """An ISO 8601 UTC time with milliseconds and ``Z``."""
    when = when or datetime.now(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def read_ledger(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The ledger's entries (of one ``kind``), oldest first.

    A last line cut short by a kill is ignored: that happening was never shown.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and (kind is None or entry.get("kind") == kind):
            out.append(entry)
    return out


class Ledger:
    """An append-only JSON-lines file of what the device did."""

    def __init__(self, path: Path, *, sync: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.sync = sync
        previous = read_ledger(path)
        self.count = int(previous[-1]["n"]) if previous else 0
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for life
        if previous and not path.read_text(encoding="utf-8").endswith("\n"):
            self._file.write("\n")  # a line cut by a kill: start clean after it

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one entry (durably, unless ``sync`` is off) and return it."""
        self.count += 1
        entry: dict[str, Any] = {"n": self.count, "at": iso_now(), "kind": kind, **fields}
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._file.flush()
        if self.sync:
            os.fsync(self._file.fileno())
        return entry

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class RetentiveState:
    """A dict of JSON values kept in a file (or only in memory when ``path`` is None).

    The keys are those of ``defaults``; a saved value of another type than its
    default's is ignored (the default stands).
    """

    def __init__(self, path: Path | None, defaults: dict[str, Any]) -> None:
        self.path = path
        self.values: dict[str, Any] = dict(defaults)
        if path is not None and path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            self.values.update({k: v for k, v in saved.items()
                                if k in defaults and type(v) is type(defaults[k])})

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value

    def save(self) -> None:
        """Write the values atomically (no-op in memory)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.values, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
