"""Pieces every driver shares.

A driver owns the connection(s) to one or more devices, turns what it reads
into signals and hands them to each device's ingest pipeline
(gateway/ingest.py: recognizer, dead letters, store). It never raises out of
``run`` for a device fault: faults are counted, logged once, shown in
``snapshot``/``alerts``, and the driver reconnects on its own.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Availability:
    """"Log when unavailable": one warning when a device goes away, one info when back."""

    def __init__(self, device: str, driver: str) -> None:
        self.device = device
        self.driver = driver
        self.available = False
        self.ever_connected = False
        self.last_error: str | None = None
        self.outages = 0
        #: Wall time the current outage began (None while available).
        self.down_since: float | None = None

    def up(self, **fields: Any) -> None:
        """The device answers."""
        if not self.available:
            if self.ever_connected:
                log.info("device_available", device=self.device, driver=self.driver, **fields)
            else:
                log.info("device_connected", device=self.device, driver=self.driver, **fields)
            self.available = True
            self.ever_connected = True
            self.last_error = None
            self.down_since = None

    def down(self, error: str, **fields: Any) -> None:
        """The device does not answer (or the connection failed); logs only on a change."""
        self.last_error = error
        if self.down_since is None:
            self.down_since = time.time()
        if self.available or (not self.ever_connected and self.outages == 0):
            log.warning("device_unavailable", device=self.device, driver=self.driver,
                        error=error, **fields)
            self.outages += 1
        self.available = False

