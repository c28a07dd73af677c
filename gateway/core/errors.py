"""Error types shared across layers."""

from __future__ import annotations


class IngestError(Exception):
    """A device value that cannot become a signal; ``kind`` is a stable snake_case name."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


#: Seconds between two log lines of one (device, kind) of bad input.
