"""LogThrottle: one line per key and interval, with the count of what was held back."""

from __future__ import annotations

from typing import Any

from gateway.core.throttle import LogThrottle


class _Capture:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))


def test_repeats_within_the_interval_are_counted_not_logged() -> None:
    now = [100.0]
    cap = _Capture()
    t = LogThrottle(cap, interval_s=60.0, clock=lambda: now[0])
    assert t.log("warning", "recognizer_failed", ("dev-1", "ValueError"), device="dev-1")
    for _ in range(2299):
        now[0] += 0.01
        assert not t.log("warning", "recognizer_failed", ("dev-1", "ValueError"), device="dev-1")
    assert len(cap.lines) == 1
    assert t.held_back(("dev-1", "ValueError")) == 2299
    # Another key is not held back by the first.
    assert t.log("warning", "recognizer_failed", ("dev-2", "ValueError"), device="dev-2")
    assert len(cap.lines) == 2
    now[0] = 161.0
    assert t.log("warning", "recognizer_failed", ("dev-1", "ValueError"), device="dev-1")
    last = cap.lines[-1][2]
    assert last["repeated"] == 2299 and last["device"] == "dev-1"
    assert t.held_back(("dev-1", "ValueError")) == 0


def test_flush_reports_counts_of_elapsed_keys_once() -> None:
    now = [0.0]
    cap = _Capture()
    t = LogThrottle(cap, interval_s=10.0, clock=lambda: now[0])
    t.log("warning", "sink_dead_letters", ("wms",), sink="wms", count=5)
    t.log("warning", "sink_dead_letters", ("wms",), sink="wms", count=7)
    assert t.flush() == 0  # interval not over yet
    now[0] = 10.5
    assert t.flush() == 1
    assert cap.lines[-1][2] == {"sink": "wms", "count": 7, "repeated": 1, "window_s": 10.5}
    assert t.flush() == 0
