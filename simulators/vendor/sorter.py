"""Vendor sorter: an OPC UA server with its own divert-confirm event type and integer result codes.

Unlike the project's sorter it names and types its fields its own way, as a
third-party sortation controller does (the schema of the vendor sorter in
docs/mapping.md). Address space (namespace ``urn:acme-sortation:lsx``, index 2)::

    Types
      DivertConfirmEventType  ns=2;s=DivertConfirmEventType   subtype of BaseEventType:
        ParcelId      UInt32   tracking id, one per parcel (wraps at 2^32)
        Sequence      UInt32   confirm sequence number, +1 per event fired
        ResultCode    Int32    0 diverted, 1 no-read, 2 chute-full, 3 no-destination,
                               4 recirculated (confirmed again on its next pass, same
                               ParcelId); --unknown-code-rate adds 9, which the manual omits
        Label         String   the parcel's barcode; "" on a no-read
        InductPoint   String   where the parcel was inducted
        Destination   String   "D01" ...; "" on a no-read or no-destination
    Objects
      Sorter                  ns=2;s=Sorter                fires DivertConfirmEventType
        ParcelCount           ns=2;s=Sorter.ParcelCount    UInt32, confirms fired in total
        Running               ns=2;s=Sorter.Running        Boolean
      Simulation              ns=2;s=Simulation            test control: method
        FireConfirms(count UInt32, result_code Int32) -> UInt32 next Sequence
                              fires count confirms now (result_code -1: drawn at the rates)

``--no-history`` (the default) is a minimal server: the notifier is not
historized and every HistoryRead is refused (``BadHistoryOperationUnsupported``).
``--history`` serves event history from the ledger. With ``--state DIR`` the
next parcel id, sequence number and count survive a restart (``state.json``)
and the ledger (``ledger.jsonl``) keeps growing; a confirm is written to the
ledger before it fires, so after a kill the history still holds it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import random
import signal
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

import structlog
from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from simulators.sorter_state import LogHistory, LogRecord, to_datetime
from simulators.vendor.ledger import Ledger, RetentiveState, read_ledger

__all__ = ["RESULT_CODES", "VendorSorter", "add_arguments", "run"]

log = structlog.get_logger(__name__)

NAMESPACE: Final = "urn:acme-sortation:lsx"
EVENT_TYPE: Final = "ns=2;s=DivertConfirmEventType"
SOURCE: Final = "ns=2;s=Sorter"
PARCEL_COUNT: Final = "ns=2;s=Sorter.ParcelCount"
RUNNING: Final = "ns=2;s=Sorter.Running"
#: Test control: ``FireConfirms(count: UInt32, result_code: Int32) -> next SeqNo``
#: fires ``count`` confirms at once with that result code (``-1``: drawn at the rates);
#: returns the next ``Sequence``.
SIMULATION: Final = "ns=2;s=Simulation"
FIRE_CONFIRMS: Final = "ns=2;s=Simulation.FireConfirms"
#: The result codes of the vendor's manual.
RESULT_CODES: Final = {0: "diverted", 1: "no-read", 2: "chute-full", 3: "no-destination",
                       4: "recirculated"}
#: A code the device sends that its manual does not list.
UNKNOWN_CODE: Final = 9
_SOURCE_NAME: Final = "Sorter"
_FIELDS: Final = (("ParcelId", ua.VariantType.UInt32, 1002),
                  ("Sequence", ua.VariantType.UInt32, 1003),
                  ("ResultCode", ua.VariantType.Int32, 1004),
                  ("Label", ua.VariantType.String, 1005),
                  ("InductPoint", ua.VariantType.String, 1006),
                  ("Destination", ua.VariantType.String, 1007))
_U32: Final = 0xFFFFFFFF
#: Confirms kept in memory for history reads (the oldest are forgotten, as on a device).
HISTORY_LIMIT: Final = 100_000
_PROGRESS_LOG_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class SorterOptions:
    """How the simulated vendor sorter behaves."""

    host: str = "127.0.0.1"
    port: int = 4841
    history: bool = False
    state_dir: Path | None = None
    ledger: Path | None = None
    destinations: int = 8
    induct: str = "INDUCT-1"
    seed: int = 1
    noread_rate: float = 0.05
    chute_full_rate: float = 0.05
    no_destination_rate: float = 0.02
    recirculate_rate: float = 0.03
    unknown_code_rate: float = 0.0
    first_parcel_id: int = 1


class _LedgerHistory:
    """The confirms of the ledger as ``LogHistory`` reads them (by time, one source)."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.records: deque[LogRecord] = deque(maxlen=HISTORY_LIMIT)
        for entry in entries:
            self.add(entry)

    def add(self, entry: dict[str, Any]) -> None:
        self.records.append(LogRecord(int(entry["n"]), _SOURCE_NAME, int(entry["time_us"]),
                                      entry))

    def read(self, source: str | None = None, start_us: int | None = None,
             end_us: int | None = None, limit: int | None = None,
             descending: bool = False) -> list[LogRecord]:
        out = [r for r in self.records
               if (source is None or r.source == source)
               and (start_us is None or r.time_us >= start_us)
               and (end_us is None or r.time_us <= end_us)]
        if descending:
            out.reverse()
        return out[:limit] if limit else out


class VendorSorter:
    """The server, its retentive state and its ledger."""

    def __init__(self, opts: SorterOptions) -> None:
        self.opts = opts
        state_dir = opts.state_dir
        self.state = RetentiveState(
            state_dir / "state.json" if state_dir else None,
            {"next_parcel_id": opts.first_parcel_id & _U32, "next_sequence": 1, "parcel_count": 0,
             "boot": 0})
        ledger_path = opts.ledger or (state_dir / "ledger.jsonl" if state_dir else None)
        if ledger_path is None:
            raise ValueError("the vendor sorter needs --state DIR or --ledger FILE")
        previous = read_ledger(ledger_path, "divert_confirm")
        if previous:  # the ledger never runs behind the state; it may run ahead of a lost one
            last = previous[-1]
            self.state["next_parcel_id"] = max(self.state["next_parcel_id"],
                                               (int(last["parcel_id"]) + 1) & _U32)
            self.state["next_sequence"] = max(self.state["next_sequence"],
                                              (int(last["sequence"]) + 1) & _U32)
        self.ledger = Ledger(ledger_path)
        self.history = _LedgerHistory(previous)
        self.destinations = [f"D{i:02d}" for i in range(1, opts.destinations + 1)]
        self.rng = random.Random(opts.seed ^ self.state["next_parcel_id"])
        self.server = Server()
        self.fired = 0
        self._template: Any = None
        self._recirculating: deque[tuple[int, str]] = deque()  # (parcel id, label)
        self._last_time_us = max((r.time_us for r in self.history.records), default=0)

    @property
    def endpoint(self) -> str:
        """The endpoint URL clients connect to."""
        return f"opc.tcp://{self.opts.host}:{self.opts.port}/"

    async def start(self) -> None:
        """Build the address space and listen."""
        srv = self.server
        await srv.init()
        srv.set_endpoint(self.endpoint)
        srv.set_server_name("ACME LSX sortation controller (simulated)")
        idx = await srv.register_namespace(NAMESPACE)
        if idx != 2:
            raise RuntimeError(f"namespace index {idx}, expected 2")
        etype = await srv.nodes.base_event_type.add_object_type(
            ua.NodeId.from_string(EVENT_TYPE), "DivertConfirmEventType")
        for name, vtype, num in _FIELDS:
            await etype.add_property(ua.NodeId.from_string(f"ns={idx};i={num}"), name,
                                     ua.get_default_value(vtype),
                                     varianttype=vtype)
        sorter = await srv.nodes.objects.add_object(ua.NodeId.from_string(SOURCE), _SOURCE_NAME)
        await sorter.add_variable(ua.NodeId.from_string(PARCEL_COUNT), "ParcelCount",
                                  self.state["parcel_count"], ua.VariantType.UInt32)
        await sorter.add_variable(ua.NodeId.from_string(RUNNING), "Running", True,
                                  ua.VariantType.Boolean)
        sim = await srv.nodes.objects.add_object(ua.NodeId.from_string(SIMULATION), "Simulation")
        await sim.add_method(ua.NodeId.from_string(FIRE_CONFIRMS), "FireConfirms",
                             self._fire_confirms, [ua.VariantType.UInt32, ua.VariantType.Int32],
                             [ua.VariantType.UInt32])
        gen = await srv.get_event_generator(etype, sorter.nodeid)
        self._template = gen.event
        if self.opts.history:
            await sorter.set_event_notifier([ua.EventNotifier.SubscribeToEvents,
                                             ua.EventNotifier.HistoryRead])
            srv.iserver.history_manager.set_storage(LogHistory(
                self.history, {sorter.nodeid: _SOURCE_NAME}, self._event))
        else:
            await sorter.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
            srv.iserver.history_manager.read_history = _refuse_history  # type: ignore[method-assign]
        self.state["boot"] += 1
        self.state.save()
        await srv.start()
        log.info("vendor_sorter_started", endpoint=self.endpoint, history=self.opts.history,
                 boot=self.state["boot"], next_parcel_id=self.state["next_parcel_id"],
                 next_sequence=self.state["next_sequence"], ledger=str(self.ledger.path))

    async def stop(self) -> None:
        """Stop listening and close the ledger."""
        with contextlib.suppress(Exception):
            await self._write(RUNNING, False, ua.VariantType.Boolean)
        await self.server.stop()
        self.ledger.close()

    def _event(self, rec: LogRecord) -> Any:
        f = rec.fields
        ev = copy.copy(self._template)
        ev.EventId = bytes.fromhex(f["event_id"])
        ev.Time = ev.ReceiveTime = to_datetime(rec.time_us)
        ev.LocalTime = None
        ev.ParcelId = f["parcel_id"]
        ev.Sequence = f["sequence"]
        ev.ResultCode = f["result_code"]
        ev.Label = f["label"]
        ev.InductPoint = f["induct_point"]
        ev.Destination = f["destination"]
        ev.Severity = 100 if f["result_code"] == 0 else 600
        ev.Message = ua.LocalizedText(f"parcel {f['parcel_id']} code {f['result_code']}")
        return ev

    def _draw(self) -> int:
        """The result code of the next parcel, at the configured rates."""
        o = self.opts
        r = self.rng.random()
        for code, rate in ((1, o.noread_rate), (2, o.chute_full_rate),
                           (3, o.no_destination_rate), (4, o.recirculate_rate),
                           (UNKNOWN_CODE, o.unknown_code_rate)):
            if r < rate:
                return code
            r -= rate
        return 0

    async def confirm(self, result_code: int | None = None) -> dict[str, Any]:
        """One confirm: reserve its ids, write it to the ledger, then fire its event.

        A parcel recirculated before is confirmed again first (same ParcelId);
        ``result_code`` forces the result (``None``: drawn at the configured rates).
        """
        st, rng = self.state, self.rng
        code = self._draw() if result_code is None else result_code
        if self._recirculating:
            parcel_id, label = self._recirculating.popleft()
        else:
            parcel_id, label = st["next_parcel_id"], f"PCL{rng.randrange(10_000_000):07d}"
            st["next_parcel_id"] = (parcel_id + 1) & _U32
        if code == 1:
            label = ""
        destination = "" if code in (1, 3) else rng.choice(self.destinations)
        if code == 4:
            self._recirculating.append((parcel_id, label))
        sequence = st["next_sequence"]
        st["next_sequence"] = (sequence + 1) & _U32
        st["parcel_count"] = (st["parcel_count"] + 1) & _U32
        st.save()  # ids reserved first: a kill now leaves a gap, never a repeat
        now_us = max(time.time_ns() // 1000, self._last_time_us + 1)
        self._last_time_us = now_us
        entry = self.ledger.write(
            "divert_confirm", boot=st["boot"], event_id=uuid.uuid4().hex, time_us=now_us,
            parcel_id=parcel_id, sequence=sequence, result_code=code, label=label,
            induct_point=self.opts.induct, destination=destination)
        self.history.add(entry)
        await self.server.iserver.isession.subscription_service.trigger_event(
            self._event(self.history.records[-1]))
        await self._write(PARCEL_COUNT, st["parcel_count"], ua.VariantType.UInt32)
        self.fired += 1
        return entry

    async def _fire_confirms(self, parent: ua.NodeId, count: ua.Variant,
                             code: ua.Variant) -> list[ua.Variant]:
        # Test control: fire `count` confirms now, with result `code` (-1: drawn).
        forced = None if code.Value < 0 else int(code.Value)
        for _ in range(int(count.Value)):
            await self.confirm(forced)
        return [ua.Variant(self.state["next_sequence"], ua.VariantType.UInt32)]

    async def _write(self, node: str, value: Any, vtype: ua.VariantType) -> None:
        stamp = cast(ua.DateTime, datetime.now(UTC))
        await self.server.iserver.aspace.write_attribute_value(
            ua.NodeId.from_string(node), AttributeIds.Value,
            ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=stamp, ServerTimestamp=stamp))

    async def run(self, rate: float, total: int | None = None) -> None:
        """Fire confirms at ``rate`` per second until ``total`` (or forever)."""
        started = time.monotonic()
        n = 0
        while total is None or n < total:
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                started = time.monotonic() - n / rate  # held up: no burst to catch up
            await self.confirm()
            n += 1


async def _refuse_history(params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
    # A minimal server: no history service behind the notifier.
    status = ua.StatusCode(ua.UInt32(StatusCodes.BadHistoryOperationUnsupported))
    return [ua.HistoryReadResult(StatusCode=status) for _ in params.NodesToRead]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vendor-sorter`` sub-command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4841)
    parser.add_argument("--rate", type=float, default=2.0, help="confirms per second (0: none)")
    parser.add_argument("--total", type=int, default=None, help="stop firing after N confirms")
    parser.add_argument("--history", action=argparse.BooleanOptionalAction, default=False,
                        help="serve event history from the ledger (default: refuse history reads)")
    parser.add_argument("--state", type=Path, default=None,
                        help="folder of the retentive state and the ledger (ledger.jsonl)")
    parser.add_argument("--ledger", type=Path, default=None,
                        help="the ledger file (default: STATE/ledger.jsonl)")
    parser.add_argument("--destinations", type=int, default=8)
    parser.add_argument("--induct", default="INDUCT-1", help="the InductPoint of every confirm")
    parser.add_argument("--noread-rate", type=float, default=0.05)
    parser.add_argument("--chute-full-rate", type=float, default=0.05)
    parser.add_argument("--no-destination-rate", type=float, default=0.02)
    parser.add_argument("--recirculate-rate", type=float, default=0.03)
    parser.add_argument("--unknown-code-rate", type=float, default=0.0,
                        help=f"fraction of confirms with ResultCode {UNKNOWN_CODE} (not in the "
                             "vendor's manual)")
    parser.add_argument("--first-parcel-id", type=int, default=1,
                        help="first ParcelId of a fresh state (e.g. 4294967290 to see a wrap)")
    parser.add_argument("--seed", type=int, default=1)


async def _serve(args: argparse.Namespace) -> None:
    sorter = VendorSorter(SorterOptions(
        host=args.host, port=args.port, history=args.history, state_dir=args.state,
        ledger=args.ledger, destinations=args.destinations, induct=args.induct,
        seed=args.seed, noread_rate=args.noread_rate, chute_full_rate=args.chute_full_rate,
        no_destination_rate=args.no_destination_rate, recirculate_rate=args.recirculate_rate,
        unknown_code_rate=args.unknown_code_rate, first_parcel_id=args.first_parcel_id))
    await sorter.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(sorter.run(args.rate, args.total) if args.rate > 0
                               else asyncio.sleep(0), name="vendor-sorter-confirms")
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PROGRESS_LOG_S):
                    await stop.wait()
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
            log.info("vendor_sorter_progress", fired=sorter.fired)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sorter.stop()
    log.info("vendor_sorter_stopped", fired=sorter.fired, next_parcel_id=
             sorter.state["next_parcel_id"], next_sequence=sorter.state["next_sequence"])


def run(args: argparse.Namespace) -> int:
    """Run the ``vendor-sorter`` sub-command until SIGINT/SIGTERM; return the exit code."""
    if args.state is None and args.ledger is None:
        print("vendor-sorter: needs --state DIR or --ledger FILE")  # noqa: T201
        return 2
    asyncio.run(_serve(args))
    return 0
