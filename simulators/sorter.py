"""Sorter simulator: an OPC UA server with an induct reader, divert confirms and PackML state.

Items arrive at ``--rate`` per second. Each one is read at the induct (an
AutoID-style scan event, 2 % no-reads) and gets a tracking id; the sorter then
confirms it with one result: ``diverted`` (to its chute), ``no-read``,
``no-destination``, ``chute-full`` (its chute's Full flag is set),
``recirculated`` (confirmed again on its next pass, same tracking id, new
confirm sequence number) or ``lost``. Chute-full flags come and go, counters
count every confirm per result and in total, and the state is PackML-style
(``Execute`` while running).

With ``--state DIR`` tracking ids, confirm and scan sequence numbers, counters
and the event log survive a restart (a PLC's retentive memory): a restarted
simulator continues its sequences, and its event history still holds what it
fired before. ``--telemetry-nodes N --telemetry-rate HZ`` adds N Double
variables written HZ times per second (the benchmark's data-change load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import structlog
from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds

from simulators.sorter_server import COUNTER_NODES, PACKML_STATES, READER, SORTER, SorterServer
from simulators.sorter_state import LogRecord, SorterState, to_datetime

__all__ = ["SorterSimulation", "add_arguments", "run", "run_sorter"]

log = structlog.get_logger(__name__)

NO_READ_RATE = 0.02
#: Probabilities of the failure results of a read item whose chute is free.
FAILURES = (("no-destination", 0.02), ("recirculated", 0.03), ("lost", 0.005))
#: Per item: a free chute fills up / a full chute is emptied with these probabilities.
CHUTE_FILL_RATE = 0.01
CHUTE_EMPTY_RATE = 0.1
_PROGRESS_LOG_S = 10.0


class SorterSimulation:
    """Runs the item flow against a ``SorterServer`` and the retentive ``SorterState``."""

    def __init__(self, server: SorterServer, state: SorterState, *, seed: int = 1,
                 induct: str = "INDUCT-1") -> None:
        self.server = server
        self.state = state
        self.induct = induct
        self.rng = random.Random(seed ^ state.counters["next_tracking_id"])
        self.full: dict[str, bool] = dict.fromkeys(server.chutes, False)
        self._recirculating: deque[tuple[str, str]] = deque()  # (tracking id, barcode)
        self.items = 0

    async def start(self) -> None:
        """Put the machine in Execute."""
        nodes = self.server.nodes
        assert nodes is not None
        await self.server.write(nodes.state, "Execute", ua.VariantType.String)
        await self.server.write(nodes.state_current, PACKML_STATES["Execute"],
                                ua.VariantType.Int32)

    async def stop(self) -> None:
        """Put the machine in Stopped."""
        nodes = self.server.nodes
        assert nodes is not None
        await self.server.write(nodes.state, "Stopped", ua.VariantType.String)
        await self.server.write(nodes.state_current, PACKML_STATES["Stopped"],
                                ua.VariantType.Int32)

    def _confirm(self, tracking: str, barcode: str, result: str, chute: str | None,
                 now_us: int) -> tuple[str, int, dict[str, Any]]:
        c = self.state.counters
        seq = c["next_confirm_seq"]
        c["next_confirm_seq"] = seq + 1
        c["total"] += 1
        c[result.replace("-", "_")] += 1
        fields = {"tracking_id": tracking, "confirm_seq": seq, "barcode": barcode,
                  "induct": self.induct, "chute": chute, "result": result}
        return SORTER, self.state.next_time_us(SORTER, now_us), fields

    def next_tracking_id(self) -> str:
        """A new tracking id (``T00000001``...), from the retentive counter."""
        c = self.state.counters
        tracking_n = c["next_tracking_id"]
        c["next_tracking_id"] = tracking_n + 1
        return f"T{tracking_n:08d}"

    def scan_record(self, code: str, now_us: int) -> tuple[str, int, dict[str, Any]]:
        """The induct reader's scan of ``code`` (``""``: a no-read), as a record to log."""
        c = self.state.counters
        scan_id = c["next_scan_id"]
        c["next_scan_id"] = scan_id + 1
        scan_time = self.state.next_time_us(READER, now_us)
        return (READER, scan_time, {
            "device_name": self.server.reader_name, "scan_id": scan_id, "code": code,
            "code_type": "CODE128" if code else "", "scan_time_us": scan_time})

    def confirm_record(self, tracking: str, barcode: str, result: str, chute: str | None,
                       now_us: int) -> tuple[str, int, dict[str, Any]]:
        """A divert confirm, as a record to log (counts it)."""
        return self._confirm(tracking, barcode, result, chute, now_us)

    def _plan(self, now_us: int) -> list[tuple[str, int, dict[str, Any]]]:
        """One new item (scan + confirm) and the pass of one recirculating item."""
        rng = self.rng
        records: list[tuple[str, int, dict[str, Any]]] = []
        if self._recirculating:
            tracking, barcode = self._recirculating.popleft()
            chute = rng.choice(self.server.chutes)
            result = "chute-full" if self.full[chute] else "diverted"
            records.append(self._confirm(tracking, barcode, result, chute, now_us))
        tracking = self.next_tracking_id()
        no_read = rng.random() < NO_READ_RATE
        barcode = "" if no_read else f"TOTE-{rng.randrange(1_000_000):06d}"
        records.append(self.scan_record(barcode, now_us))
        if no_read:
            records.append(self._confirm(tracking, "", "no-read", None, now_us))
            return records
        chute = rng.choice(self.server.chutes)
        result = "diverted"
        if self.full[chute]:
            result = "chute-full"
        else:
            r = rng.random()
            for name, p in FAILURES:
                if r < p:
                    result = name
                    break
                r -= p
        records.append(self._confirm(tracking, barcode, result,
                                     None if result in ("no-destination", "lost") else chute,
                                     now_us))
        if result == "recirculated":
            self._recirculating.append((tracking, barcode))
        return records

    async def fire_records(self, records: list[tuple[str, int, dict[str, Any]]]
                           ) -> list[LogRecord]:
        """Log ``records`` durably, then fire their events and update the counters."""
        logged = self.state.commit(records)
        srv = self.server
        nodes = srv.nodes
        assert nodes is not None
        for rec in logged:
            await srv.fire(srv.build_event(rec))
        when = to_datetime(records[-1][1] if records else time.time_ns() // 1000)
        for key in COUNTER_NODES:
            await srv.write(nodes.counters[key], self.state.counters[key], ua.VariantType.Int64,
                            when)
        return logged

    async def set_full(self, chute: str, full: bool) -> None:
        """Set or clear a chute's Full flag."""
        nodes = self.server.nodes
        assert nodes is not None
        self.full[chute] = full
        await self.server.write(nodes.chutes[chute], full, ua.VariantType.Boolean)

    async def step(self) -> None:
        """One item: log it durably, then fire its events and update counters and flags."""
        now_us = time.time_ns() // 1000
        await self.fire_records(self._plan(now_us))
        srv = self.server
        chute = self.rng.choice(srv.chutes)
        flip = CHUTE_EMPTY_RATE if self.full[chute] else CHUTE_FILL_RATE
        if self.rng.random() < flip:
            await self.set_full(chute, not self.full[chute])
        self.items += 1

    async def run_items(self, rate: float, total: int | None = None) -> None:
        """Produce items at ``rate`` per second until ``total`` (or forever)."""
        started = time.monotonic()
        n = 0
        while total is None or n < total:
            due = started + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                started = time.monotonic() - n / rate  # held up: no burst to catch up
            await self.step()
            n += 1

    async def run_telemetry(self, hz: float) -> None:
        """Write every telemetry variable ``hz`` times per second (one batch per tick)."""
        srv = self.server
        nodes = srv.nodes
        assert nodes is not None
        ids = nodes.telemetry
        aspace = srv.server.iserver.aspace
        value_attr = AttributeIds.Value
        double = ua.VariantType.Double
        started = time.monotonic()
        k = 0
        while True:
            k += 1
            when = cast(ua.DateTime, datetime.now(UTC))
            for i, nid in enumerate(ids):
                await aspace.write_attribute_value(nid, value_attr, ua.DataValue(
                    ua.Variant(float(k + i), double), SourceTimestamp=when, ServerTimestamp=when))
            delay = started + k / hz - time.monotonic()
            if delay < -1.0:
                started = time.monotonic() - k / hz
            await asyncio.sleep(max(delay, 0.0))

    async def inject_bad_confirm(self) -> str:
        """Fire a divert confirm with an unknown result (not logged: not a real confirm)."""
        when = datetime.now(UTC)
        await self.server.fire(self.server.raw_event(
            SORTER, when, TrackingId="TBAD", ConfirmSeq=None, Barcode="TOTE-BAD",
            Induct=self.induct, Chute="CHUTE-01", Result="jammed", Severity=900,
            Message=ua.LocalizedText("bad confirm")))
        return "fired a confirm with result 'jammed'"

    async def inject_bad_value(self) -> str:
        """Write NaN to the belt speed (no JSON number can carry it)."""
        nodes = self.server.nodes
        assert nodes is not None
        await self.server.write(nodes.belt_speed, float("nan"), ua.VariantType.Double)
        await self.server.write(nodes.belt_speed, 2.0, ua.VariantType.Double)
        return "wrote NaN, then 2.0, to Sorter.BeltSpeed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sorter`` sub-command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--rate", type=float, default=2.0, help="items per second (0: none)")
    parser.add_argument("--total", type=int, default=None, help="stop producing after N items")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chutes", type=int, default=8)
    parser.add_argument("--induct", default="INDUCT-1")
    parser.add_argument("--reader-name", default="INDUCT-1-READER")
    parser.add_argument("--security", choices=("none", "sign", "sign-and-encrypt"),
                        default="none")
    parser.add_argument("--certs", type=Path, default=None,
                        help="folder of the server certificate (generated on first start)")
    parser.add_argument("--user", default=None, help="require this username")
    parser.add_argument("--password-file", type=Path, default=None)
    parser.add_argument("--state", type=Path, default=None,
                        help="folder of the retentive state (counters, tracking ids, event log)")
    parser.add_argument("--telemetry-nodes", type=int, default=0)
    parser.add_argument("--telemetry-rate", type=float, default=10.0, help="writes/s per node")


async def run_sorter(args: argparse.Namespace) -> None:
    """Serve until SIGINT/SIGTERM."""
    password = None
    if args.user:
        if args.password_file is None:
            raise SystemExit("--user needs --password-file")
        password = args.password_file.read_text(encoding="utf-8").strip()
    state = SorterState(args.state)
    chutes = [f"CHUTE-{i:02d}" for i in range(1, args.chutes + 1)]
    server = SorterServer(state, host=args.host, port=args.port, chutes=chutes,
                          reader_name=args.reader_name, security=args.security,
                          certs=args.certs, username=args.user, password=password,
                          telemetry_nodes=args.telemetry_nodes)
    await server.start()
    sim = SorterSimulation(server, state, seed=args.seed, induct=args.induct)
    server.control.update(DropSubscriptions=server.drop_subscriptions,
                          InjectBadConfirm=sim.inject_bad_confirm,
                          InjectBadValue=sim.inject_bad_value)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("sorter_sim_started", endpoint=f"opc.tcp://{args.host}:{args.port}/",
             security=args.security, state=state.path, next_tracking_id=
             state.counters["next_tracking_id"], telemetry_nodes=args.telemetry_nodes)
    tasks = []
    if args.rate > 0:
        tasks.append(asyncio.create_task(sim.run_items(args.rate, args.total), name="items"))
    if args.telemetry_nodes:
        tasks.append(asyncio.create_task(sim.run_telemetry(args.telemetry_rate),
                                         name="telemetry"))
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _PROGRESS_LOG_S)
            for t in tasks:
                if t.done() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            log.info("sorter_sim_progress", items=sim.items, total=state.counters["total"])
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sim.stop()
        await server.stop()
        state.close()
    log.info("sorter_sim_stopped", items=sim.items, counters=state.counters)


def run(args: argparse.Namespace) -> int:
    """Run the ``sorter`` sub-command; return the exit code."""
    asyncio.run(run_sorter(args))
    return 0
