"""A misbehaving WMS against the gateway process: every hostile fault, end to end.

Scanners publish over a real Mosquitto to the gateway running as a process; the
WMS simulator is switched into one hostile mode for a while, then back to
normal. Whatever the WMS did, afterwards every published read is at the WMS
exactly once (published == unique, no phantom ids), nothing was dead-lettered,
the gateway process is still the one we started and its memory stayed bounded.

One reply is true to what it says: the ``reason_not_string`` variant of
``malformed_rejected`` really rejects the first new event of its batch (the
contract reads a non-string reason as a reason). There, and only there,
published == unique + rejected, and the gateway's sink dead letters are
exactly the events the WMS rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from e2e import connect_fleet, delivered, publish, site, start, wait_until

from gateway.config import HttpSinkConfig
from gateway.core.events import make_event_id, parse_time
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.scanners import PublishedRead, ScannerFleet
from simulators.wms import LANDING_PATH, WmsSimulator

SITE = "DC-EAST-1"
MiB = 1024 * 1024
#: The gateway's resident memory must stay below this during and after any fault,
#: the 1 GiB reply body included (an idle gateway sits well under 100 MB).
RSS_LIMIT = 250 * MiB

#: Sink tuning that keeps every fault short: a 2 s exchange timeout (ends an
#: endless body), small backoffs, and a quick pause/probe cycle where the sink
#: has those keys.
SINK_TUNING: dict[str, Any] = {
    "timeout": 2.0,
    "backoff_initial": 0.05,
    "backoff_max": 0.5,
    "pause_after_failures": 3,
    "paused_retry": 1.0,
}


def sink_tuning() -> dict[str, Any]:
    """The tuning keys this gateway's HTTP sink config knows (``extra="forbid"``)."""
    return {k: v for k, v in SINK_TUNING.items() if k in HttpSinkConfig.model_fields}


@dataclasses.dataclass(frozen=True)
class Fault:
    """One hostile mode of the WMS simulator and what to wait for while it lasts."""

    mode: str
    faults: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Hostile replies the gateway must have had before the WMS turns normal.
    min_hostile: int = 3
    #: The sink's alert in /api/status must name the redirect's Location.
    alert_names: str | None = None
    #: The WMS really rejects some events (they become sink dead letters).
    rejects: bool = False


FAULTS = [
    Fault("garbage_2xx"),
    Fault("malformed_rejected", min_hostile=4, rejects=True),  # every variant at least once
    Fault("redirect", alert_names=LANDING_PATH),
    Fault("redirect_307", {"hostile_redirect_to": "control"}, min_hostile=1),
    Fault("redirect_307", {"hostile_redirect_to": "self"}),
    Fault("huge_body"),  # the default 1 GiB body
    Fault("endless_body", {"hostile_interval_ms": 50.0}, min_hostile=2),
    Fault("html_5xx"),
]
FAULT_IDS = [
    "garbage_2xx", "malformed_rejected", "redirect", "redirect_307_control",
    "redirect_307_self", "huge_body", "endless_body", "html_5xx",
]


def event_id_of(r: PublishedRead) -> str:
    """The id the gateway derives: reader + read id + the read's own time."""
    ms = round(parse_time(r.timestamp) * 1000)
    return make_event_id(SITE, r.scanner, f"read:{r.read_id}@{ms}")


def expected_ids(reads: list[PublishedRead]) -> set[str]:
    """Event ids of the published reads (the fleet publishes plain reads here)."""
    assert all(r.kind == "read" for r in reads)
    return {event_id_of(r) for r in reads}


class RssSampler:
    """The peak resident memory of a process, sampled while a test runs."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._proc = psutil.Process(pid)
        self._interval = interval
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        rss = int(self._proc.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    async def _run(self) -> None:
        # A dead process ends sampling; the test's liveness check reports it.
        with contextlib.suppress(psutil.NoSuchProcess):
            while True:
                self.sample()
                await asyncio.sleep(self._interval)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


def sink_status(gw: GatewayProcess) -> dict[str, Any]:
    result: dict[str, Any] = gw.status()["sinks"]["wms"]
    return result


def dead_letters(gw: GatewayProcess) -> int:
    result: int = gw.status()["store"]["dead_letters"]["sink"]
    return result


def assert_alive(gw: GatewayProcess) -> None:
    assert gw.proc is not None
    assert gw.proc.poll() is None, f"gateway exited with {gw.proc.returncode}:\n{gw.log_tail()}"
    assert gw.starts == 1


def alive_and(gw: GatewayProcess, cond: Callable[[], bool]) -> Callable[[], bool]:
    """``cond`` for :func:`wait_until`, failing at once if the gateway died."""

    def check() -> bool:
        assert_alive(gw)
        return cond()

    return check


async def hostile_phase(gw: GatewayProcess, wms: WmsSimulator, fleet: ScannerFleet,
                        fault: Fault, reads: int) -> list[PublishedRead]:
    """Turn the WMS hostile, publish ``reads`` meanwhile, hold it, turn it normal."""
    before = wms.stats()["hostile_requests"]
    await wms.update_faults({"hostile": fault.mode, "hostile_count": -1, **fault.faults})
    published = await publish(fleet, reads)

    def hostile_seen() -> bool:
        return bool(wms.stats()["hostile_requests"] - before >= fault.min_hostile)

    await wait_until(alive_and(gw, hostile_seen), 30,
                     f"{fault.min_hostile} hostile replies ({fault.mode})")
    if fault.alert_names is not None:
        location = wms.control_url + fault.alert_names

        def alerted() -> bool:
            return location in str(sink_status(gw).get("alert") or "")

        await wait_until(alive_and(gw, alerted), 20, f"a sink alert naming {location}")
    assert_alive(gw)
    await wait_until(lambda: dead_letters(gw) == wms.stats()["rejected"], 10,
                     "sink dead letters == events the WMS rejected")
    await wms.update_faults({"hostile": None})
    return published


async def assert_all_delivered_once(gw: GatewayProcess, wms: WmsSimulator, fault: Fault,
                                    reads: list[PublishedRead], wait_s: float) -> None:
    want = expected_ids(reads)

    def caught_up() -> bool:
        stats = wms.stats()
        return bool(stats["unique"] + stats["rejected"] >= len(want))

    await wait_until(alive_and(gw, caught_up), wait_s, f"{len(want)} events at the WMS")
    await delivered(gw)  # nothing left to send: late stragglers would be here by now
    got = wms.accepted_ids()
    rejected = wms.stats()["rejected"]
    if fault.rejects:
        assert rejected > 0, "the reason_not_string variant never answered"
    else:
        assert rejected == 0
    assert not (got - want), f"{len(got - want)} phantom ids at the WMS"
    assert len(want - got) == rejected, f"{len(want - got) - rejected} published reads lost"
    assert wms.stats()["unique"] == len(want) - rejected
    assert dead_letters(gw) == rejected
    await wait_until(lambda: sink_status(gw)["state"] == "ok", 20, "sink back to ok")


async def run_matrix_cell(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator,
                          fault: Fault, *, warmup: int, per_cycle: int, cycles: int,
                          wait_s: float) -> int:
    """Run ``cycles`` hostile/normal cycles; return the peak RSS of the gateway."""
    cfg = site(tmp_path, broker, wms, scanners=2, batch_max=100, http_extra=sink_tuning())
    with GatewayProcess(cfg) as gw:
        await start(gw)
        assert gw.proc is not None
        fleet = connect_fleet(broker, count=2)
        try:
            with RssSampler(gw.proc.pid) as rss:
                reads = await publish(fleet, warmup)
                await wait_until(lambda: wms.stats()["unique"] >= warmup, 30, "warm-up delivered")
                for _ in range(cycles):
                    reads += await hostile_phase(gw, wms, fleet, fault, per_cycle)
                    reads += await publish(fleet, per_cycle // 4)  # some while normal again
                    await assert_all_delivered_once(gw, wms, fault, reads, wait_s)
                    assert_alive(gw)
                rss.sample()
        finally:
            fleet.close()
        print(f"{fault.mode} {fault.faults or ''}: gateway RSS peak {rss.peak / MiB:.0f} MiB, "
              f"{wms.stats()['hostile_requests']} hostile replies")
        assert rss.peak < RSS_LIMIT, f"gateway RSS peaked at {rss.peak / MiB:.0f} MiB"
        assert await asyncio.to_thread(gw.stop) == 0
        return rss.peak


@pytest.mark.parametrize("fault", FAULTS, ids=FAULT_IDS)
async def test_hostile_wms_loses_nothing(tmp_path: Path, broker: MosquittoBroker,
                                         wms: WmsSimulator, fault: Fault) -> None:
    await run_matrix_cell(tmp_path, broker, wms, fault, warmup=100, per_cycle=300, cycles=1,
                          wait_s=30)


@pytest.mark.soak
@pytest.mark.parametrize("fault", FAULTS, ids=FAULT_IDS)
async def test_soak_hostile_wms_repeated_cycles(tmp_path: Path, broker: MosquittoBroker,
                                                wms: WmsSimulator, fault: Fault) -> None:
    await run_matrix_cell(tmp_path, broker, wms, fault, warmup=2000, per_cycle=4000, cycles=5,
                          wait_s=120)
