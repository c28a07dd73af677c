"""Vendor JSON scanner: publishes nested JSON reads over MQTT on a topic of its own.

Each read is one QoS 1 message on ``--topic`` (default ``vendor/pack3/reads``;
the JSON scanner of docs/mapping.md)::

    {"meta": {"seq": 981, "ts": "2026-11-23T10:15:02.350Z", "fw": "4.2.1"},
     "barcode": {"value": "LPN-000123", "type": "CODE128"},
     "order": {"id": "SO-004711", "line": 3},
     "item": {"sku": "SKU-00099", "qty": "2", "uom": "EA", "weight_kg": 1.25}}

``qty`` is a string and ``weight_kg`` a number, as such devices send them;
``meta.fw`` is a field no mapping needs. A no-read (``--noread-rate``) has
``"barcode": null``. ``meta.seq`` grows by one per read and, with
``--state DIR``, continues after a restart. Every read the broker
acknowledged is written to the ledger (``DIR/ledger.jsonl`` or ``--ledger``):
``{"kind": "published", "topic", "seq", "payload": {...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import threading
from pathlib import Path
from typing import Any, Final

import structlog

from simulators.scanners import ScannerFleet
from simulators.vendor.ledger import Ledger, RetentiveState, iso_now

__all__ = ["JsonScanner", "add_arguments", "run"]

log = structlog.get_logger(__name__)

DEFAULT_TOPIC: Final = "vendor/pack3/reads"
FIRMWARE: Final = "4.2.1"


class JsonScanner:
    """One scanner, its MQTT connection, its retentive sequence and its ledger."""

    def __init__(self, host: str, port: int, *, topic: str = DEFAULT_TOPIC,
                 state_dir: Path | None = None, ledger: Path | None = None, seed: int = 1,
                 noread_rate: float = 0.0, client_id: str = "vendor-pack3-scanner") -> None:
        ledger_path = ledger or (state_dir / "ledger.jsonl" if state_dir else None)
        if ledger_path is None:
            raise ValueError("the vendor scanner needs a state folder or a ledger file")
        self.topic = topic
        self.state = RetentiveState(state_dir / "state.json" if state_dir else None,
                                    {"next_seq": 1})
        self.ledger = Ledger(ledger_path)
        self.noread_rate = noread_rate
        self.rng = random.Random(seed ^ int(self.state["next_seq"]))
        # The project's scanner fleet is only the MQTT transport here (QoS 1, PUBACK waits).
        self._link = ScannerFleet(host, port, count=1, client_id=client_id, ack_timeout=30.0)
        self.published = 0

    def connect(self) -> None:
        """Connect to the broker (blocking)."""
        self._link.connect()

    def close(self) -> None:
        """Disconnect and close the ledger."""
        self._link.close()
        self.ledger.close()

    def payload(self, seq: int) -> dict[str, Any]:
        """The JSON document of read ``seq``."""
        rng = self.rng
        no_read = rng.random() < self.noread_rate
        return {
            "meta": {"seq": seq, "ts": iso_now(), "fw": FIRMWARE},
            "barcode": None if no_read else {"value": f"LPN-{rng.randrange(1_000_000):06d}",
                                             "type": "CODE128"},
            "order": {"id": f"SO-{rng.randrange(1_000_000):06d}", "line": rng.randint(1, 9)},
            "item": {"sku": f"SKU-{rng.randrange(100_000):05d}", "qty": str(rng.randint(1, 12)),
                     "uom": rng.choice(("EA", "CS")),
                     "weight_kg": round(rng.uniform(0.1, 25.0), 2)},
        }

    def publish(self, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish one read (its own, or ``payload`` as given) and wait for its PUBACK."""
        seq = int(self.state["next_seq"])
        self.state["next_seq"] = seq + 1
        self.state.save()  # the sequence is reserved first: a kill leaves a gap, not a repeat
        doc = payload if payload is not None else self.payload(seq)
        self._link.publish_raw(self.topic, json.dumps(doc, separators=(",", ":")).encode())
        self.published += 1
        return self.ledger.write("published", topic=self.topic, seq=seq, payload=doc)

    def run(self, rate: float, total: int | None, stop: threading.Event) -> int:
        """Publish at ``rate`` per second until ``total`` reads or ``stop``; return the count."""
        n = 0
        while (total is None or n < total) and not stop.is_set():
            self.publish()
            n += 1
            stop.wait(1.0 / rate)
        return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vendor-scanner`` sub-command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883, help="the broker's port")
    parser.add_argument("--topic", default=DEFAULT_TOPIC)
    parser.add_argument("--rate", type=float, default=2.0, help="reads per second")
    parser.add_argument("--total", type=int, default=None, help="stop after N reads")
    parser.add_argument("--noread-rate", type=float, default=0.0)
    parser.add_argument("--state", type=Path, default=None,
                        help="folder of the retentive sequence and the ledger (ledger.jsonl)")
    parser.add_argument("--ledger", type=Path, default=None,
                        help="the ledger file (default: STATE/ledger.jsonl)")
    parser.add_argument("--client-id", default="vendor-pack3-scanner")
    parser.add_argument("--seed", type=int, default=1)


async def _serve(args: argparse.Namespace) -> int:
    scanner = JsonScanner(args.host, args.port, topic=args.topic, state_dir=args.state,
                          ledger=args.ledger, seed=args.seed, noread_rate=args.noread_rate,
                          client_id=args.client_id)
    await asyncio.to_thread(scanner.connect)
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("vendor_scanner_started", topic=scanner.topic,
             next_seq=scanner.state["next_seq"], ledger=str(scanner.ledger.path))
    try:
        await asyncio.to_thread(scanner.run, args.rate, args.total, stop)
    finally:
        await asyncio.to_thread(scanner.close)
    log.info("vendor_scanner_stopped", published=scanner.published,
             next_seq=scanner.state["next_seq"])
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the ``vendor-scanner`` sub-command; return the exit code."""
    if args.state is None and args.ledger is None:
        print("vendor-scanner: needs --state DIR or --ledger FILE")  # noqa: T201
        return 2
    if args.rate <= 0:
        print("vendor-scanner: --rate must be > 0")  # noqa: T201
        return 2
    return asyncio.run(_serve(args))
