"""A full disk on a real, small file system: admission stops early, delivery frees it.

Each test mounts its own 32 MiB tmpfs, runs a real ``Store`` with the
``Committer``, a ``Forwarder`` and an ``HttpSink`` against the in-process WMS
simulator over loopback, and unmounts afterwards. Mounting needs root; where
it is impossible the tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from waiting import wait_until

from buffer.service import Committer, StoreService
from buffer.store import Store
from gateway.config import HttpSinkConfig
from gateway.core.events import Event
from gateway.forwarder import Forwarder
from gateway.sinks.http import HttpSink
from simulators.wms import Faults, WmsSimulator

MiB = 1024**2
FS_BYTES = 32 * MiB
MIN_FREE = 6 * MiB
RESERVE = 2 * MiB
PAD = 2000  # bytes of padding per event body: ~2.2 KB rows
WAIT_S = 30.0
#: What a timed-out wait reports: the state of the rig that is running.
_STATE: list[Callable[[], Any]] = []


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 32 MiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def fs_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_disk(path: Path) -> Path:
    """Write a filler file until the file system refuses (ENOSPC)."""
    filler = path / "filler.bin"
    chunk = b"\xff" * MiB
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (MiB, 64 * 1024, 4096, 512):
            part = chunk[:size]
            while True:
                try:
                    os.write(fd, part)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    assert fs_free(path) < 4096
    return filler


def event(n: int) -> Event:
    return Event.create(
        site="DC-DISK", device="sorter-1", type="pick", source_key=f"pick-{n}",
        occurred_at=1_790_000_000.0 + n, observed_at=1_790_000_000.0 + n,
        data={"n": n, "pad": "x" * PAD},
    )


@dataclass
class Rig:
    """A gateway's store path: committer, forwarder, HTTP sink, WMS simulator."""

    store: Store
    service: StoreService
    committer: Committer
    forwarder: Forwarder
    wms: WmsSimulator
    acked: set[str] = field(default_factory=set)
    submitted: int = 0
    ack_times: list[float] = field(default_factory=list)

    def submit(self, count: int) -> None:
        """Hand ``count`` new source messages to the committer (acked on commit)."""
        for _ in range(count):
            ev = event(self.submitted)
            self.submitted += 1
            self.committer.submit([ev], self._acker(ev.event_id))

    def _acker(self, event_id: str) -> Callable[[], None]:
        def ack() -> None:
            self.acked.add(event_id)
            self.ack_times.append(time.monotonic())
        return ack

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.service.call(fn, *args)

    async def stored_ids(self) -> set[str]:
        rows = await self.call(
            lambda: self.store._conn.execute("SELECT event_id FROM events").fetchall()
        )
        return {r[0] for r in rows}


async def until(check: Callable[[], Any], what: str, within: float = WAIT_S) -> None:
    """Poll ``check`` (sync or async) until it is true; a timeout shows the rig's state."""
    await wait_until(check, within, what, 0.02,
                     state=lambda: _STATE[-1]() if _STATE else None)


@contextlib.asynccontextmanager
async def rig(db: Path, wms: WmsSimulator, **store_kw: Any) -> AsyncIterator[Rig]:
    opts: dict[str, Any] = {"max_bytes": 1024**3, "min_free_bytes": MIN_FREE,
                            "reserve_bytes": RESERVE}
    opts.update(store_kw)
    service = StoreService(lambda: Store(db, **opts))
    store = await service.open()
    cursors = await service.call(store.register_sinks, ["wms"])
    sink = HttpSink(HttpSinkConfig(id="wms", type="http", url=wms.url, backoff_initial=0.01,
                                   backoff_max=0.1, timeout=5.0, batch_max=500))
    committer = Committer(service, full_retry_s=0.5)
    forwarder = Forwarder(sink, service, cursors["wms"])
    tasks = [asyncio.create_task(committer.run()), asyncio.create_task(forwarder.run())]
    try:
        _STATE.append(lambda: {"store": store.stats(), "committer": committer.snapshot(),
                               "forwarder": forwarder.snapshot(), "fs_free": fs_free(db.parent)})
        yield Rig(store, service, committer, forwarder, wms)
        for t in tasks:
            assert not t.done(), t  # no exception escaped the committer or the forwarder
    finally:
        _STATE.pop()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await sink.close()
        await service.close()


async def fill_until_refused(r: Rig) -> None:
    """Submit messages until the store stops admitting them for lack of disk."""
    while not r.committer.full:
        r.submit(500)
        await until(lambda: r.committer.pending == 0 or r.committer.full, "commit or full")
    assert r.committer.stats.full_reason == "disk"


async def stored_events(r: Rig) -> int:
    """Rows in the store, read on the store's own thread (never beside a transaction)."""
    return int((await r.service.call(r.store.stats))["events"])


async def drained(r: Rig) -> bool:
    cursors = await r.service.call(r.store.cursors)
    return r.forwarder.cursor >= cursors["wms"] and await stored_events(r) == 0


async def assert_all_delivered_and_deleted(r: Rig) -> None:
    await until(lambda: r.committer.pending == 0, "pending messages committed")
    await until(lambda: r.acked <= r.wms.accepted_ids(), "accepted events delivered")
    await until(lambda: drained(r), "delivered rows deleted")
    assert len(r.acked) == r.submitted
    # The accounting saw every insert and delete (read after the store thread's work).
    assert await r.service.call(lambda: r.store.used_bytes) == 0


async def test_admission_stops_before_the_disk_is_full_and_resumes_after_delivery(
    small_fs: Path,
) -> None:
    async with WmsSimulator(faults=Faults(outage=True)) as wms, \
            rig(small_fs / "buffer.db", wms) as r:
        assert (small_fs / "buffer.db.reserve").stat().st_size == RESERVE
        with structlog.testing.capture_logs() as logs:
            await fill_until_refused(r)
            # Held back, not lost: what was acknowledged is stored, the rest waits.
            assert r.acked <= await r.stored_ids()
            assert r.committer.pending > 0
            assert len(r.acked) + r.committer.pending == r.submitted
            stats = await r.call(r.store.stats)
            assert stats["disk_low"] and stats["disk_room_bytes"] < MIN_FREE * 5 // 4
            assert fs_free(small_fs) > MiB  # stopped before the disk was full
            held = r.committer.pending
            await asyncio.sleep(1.0)  # retried every 0.5 s: still refused, nothing acked
            assert r.committer.pending == held
        full = [e for e in logs if e["event"] == "store_full"]
        assert len(full) == 1 and full[0]["reason"] == "disk"
        assert not [e for e in logs if e["event"] == "store_disk_full"]  # never SQLITE_FULL

        await wms.set_outage(False)
        await assert_all_delivered_and_deleted(r)
        assert not r.committer.full
        # More events flow, into the pages the deletes freed.
        r.submit(2000)
        await assert_all_delivered_and_deleted(r)
        assert wms.stats()["unique"] == r.submitted


@pytest.mark.parametrize("min_free", [MIN_FREE, 0], ids=["watermark", "no-watermark"])
async def test_freeing_space_at_sqlite_full_resumes_admission_by_itself(
    small_fs: Path, min_free: int,
) -> None:
    db = small_fs / "buffer.db"
    async with WmsSimulator(faults=Faults(outage=True)) as wms, \
            rig(db, wms, min_free_bytes=min_free) as r:
        r.submit(3000)
        await until(lambda: len(r.acked) == 3000, "first events committed")
        # Empty the WAL so that any further write needs new blocks, then fill the disk.
        await r.call(lambda: r.store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        filler = fill_disk(small_fs)
        probe = sqlite3.connect(db, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            probe.execute("INSERT INTO counters(name, value) VALUES ('probe', 1)")
        probe.close()

        with structlog.testing.capture_logs() as logs:
            r.submit(500)
            await until(lambda: r.committer.full, "store full")
            assert r.committer.stats.full_reason == "disk"
            await asyncio.sleep(1.0)
            assert len(r.acked) == 3000  # nothing admitted while the disk is full
        # Without the watermark the commit itself meets SQLITE_FULL (and rolls back).
        seen = {e["event"] for e in logs}
        assert ("store_disk_full" in seen) == (min_free == 0)
        assert ("store_disk_low" in seen) == (min_free > 0)

        acks_before = len(r.ack_times)
        t0 = time.monotonic()
        filler.unlink()  # the operator frees space
        await until(lambda: len(r.ack_times) > acks_before, "admission resumed")
        resume_s = r.ack_times[acks_before] - t0
        print(f"\nresume after freeing disk: {resume_s:.3f} s")
        await until(lambda: not r.committer.full and r.committer.pending == 0,
                    "waiting messages committed")

        await wms.set_outage(False)
        await assert_all_delivered_and_deleted(r)
        r.submit(1000)
        await assert_all_delivered_and_deleted(r)
        assert (small_fs / "buffer.db.reserve").stat().st_size == RESERVE


async def test_restart_on_a_full_disk_delivers_and_resumes(small_fs: Path) -> None:
    db = small_fs / "buffer.db"
    async with WmsSimulator(faults=Faults(outage=True)) as wms:
        async with rig(db, wms) as r:
            r.submit(5000)
            await until(lambda: len(r.acked) == 5000, "events committed")
            first = set(r.acked)
        filler = fill_disk(small_fs)  # the disk fills while the gateway is down
        try:
            await wms.set_outage(False)
            with structlog.testing.capture_logs() as logs:
                async with rig(db, wms) as r:
                    # Opens on the full disk; the cursor moves free the delivered rows.
                    await until(lambda: first <= wms.accepted_ids(), "backlog delivered")
                    await until(lambda: drained(r), "rows deleted")
                    # Admission comes back by itself (into the freed pages).
                    r.submit(1000)
                    await assert_all_delivered_and_deleted(r)
                    assert r.acked <= wms.accepted_ids()
            released = [e for e in logs if e["event"] == "store_reserve_released"]
            assert released and released[0]["reason"] == "open"
            assert filler.exists()  # nobody freed space: the gateway recovered alone
        finally:
            filler.unlink()
