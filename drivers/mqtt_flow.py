"""Ack-after-commit hand-over shared by the MQTT drivers (scanners, VDA 5050)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from buffer.service import Backpressure, Committer
from gateway.core.records import Record
from gateway.mqtt_link import MqttLink

log = structlog.get_logger(__name__)


def hand_over(committer: Committer, link: MqttLink, records: Sequence[Record],
              ack: Callable[[], None] | None, driver: str) -> None:
    """Queue one message's records; ``ack`` runs after they commit.

    Stops reading the socket once the committer is saturated (the broker then
    holds the backlog; ``on_drained`` resumes it).
    """
    try:
        committer.submit(records, ack)
    except Backpressure:
        # Cannot happen while reading pauses at the high-water mark; if it
        # does, reconnect so the broker redelivers what was not acknowledged.
        log.error("ingest_backpressure", driver=driver, pending=committer.pending)
        link.drop_connection()
        return
    if committer.saturated:
        link.pause_reading()
