"""Acting on dead letters, the audit trail, reconciliation and container trace against
a running gateway: real Mosquitto, the scanner simulator, the WMS simulator rejecting
codes ending in 5, the gateway as a process; every request goes to 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from e2e import connect_fleet, delivered, publish, site, start, wait_until

from buffer.ledger import day_of
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.scanners import PublishedRead, ScannerFleet
from simulators.wms import WmsSimulator

ALICE, BOB = "alice-0123456789", "bob-9876543210"
ROOT = Path(__file__).resolve().parents[1]


def call(url: str, doc: Any = None, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """Status and decoded body of a GET (or, with ``doc``, a JSON POST)."""
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(url, data=data, headers=h, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw, status, kind = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    return status, json.loads(raw) if "json" in kind else raw.decode()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False)


async def settled(gw: GatewayProcess, wms: WmsSimulator, answered: int) -> None:
    """Wait until the WMS answered for ``answered`` events in all (accepted or rejected)
    and the gateway's cursor has passed them."""
    await wait_until(lambda: wms.stats()["unique"] + wms.stats()["rejected"] >= answered, 30,
                     f"the WMS to answer for {answered} events", 0.1, state=wms.stats)
    await delivered(gw)


def gateway_setup(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> Any:
    tokens = tmp_path / "status.token"
    tokens.write_text(f"# operators\nalice {ALICE}\nbob {BOB}\n", encoding="utf-8")
    cfg = site(tmp_path, broker, wms, scanners=2, status_extra={"token_file": tokens},
               store_extra={"retention": "1h"})
    return cfg


@contextlib.asynccontextmanager
async def rejecting_site(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator,
                         reads: int) -> AsyncIterator[tuple[GatewayProcess, ScannerFleet,
                                                            list[PublishedRead]]]:
    """A running gateway whose WMS rejects codes ending in 5, after ``reads`` reads were
    published and answered."""
    await wms.update_faults({"reject_pattern": "5$", "reject_field": "data.code"})
    fleet = connect_fleet(broker, count=2)
    try:
        with GatewayProcess(gateway_setup(tmp_path, broker, wms)) as gw:
            await start(gw)
            published = await publish(fleet, reads)
            await settled(gw, wms, reads)
            yield gw, fleet, published
    finally:
        fleet.close()


async def test_dead_letters_replay_discard_audit_and_reconciliation(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    async with rejecting_site(tmp_path, broker, wms, 200) as (gw, fleet, reads):
        base = gw.status_url
        fives = sorted(r.code for r in reads if r.code.endswith("5"))
        assert len(fives) >= 10

        status, page = await asyncio.to_thread(call, f"{base}/api/dead-letters?bodies=0"
                                               "&sink=wms&kind=sink&limit=500")
        assert status == 200
        items = page["dead_letters"]
        assert sorted(d["container"] for d in items) == fives
        assert {(d["type"], d["category"], d["kind"]) for d in items} == {
            ("scan", "business", "sink")}
        assert all(d["device"] in ("scan-01", "scan-02") and d["reason"] for d in items)
        by_device = [d for d in items if d["device"] == "scan-01"]
        status, got = await asyncio.to_thread(call, f"{base}/api/dead-letters/count"
                                              "?device=scan-01&sink=wms")
        assert (status, got["count"]) == (200, len(by_device))

        # No token, a wrong one, an unknown filter key: refused, nothing changes.
        url = f"{base}/api/dead-letters/replay"
        assert (await asyncio.to_thread(call, url, {"ids": [items[0]["id"]]}))[0] == 401
        assert (await asyncio.to_thread(call, url, {"ids": [items[0]["id"]]}, "nope"))[0] \
            == 401
        status, text = await asyncio.to_thread(call, url, {"all": True,
                                                           "filter": {"colour": "red"}}, BOB)
        assert status == 400 and "colour" in text
        assert (await asyncio.to_thread(call, f"{base}/api/auth", None, ALICE)) == (
            200, {"who": "alice", "enabled": True})
        assert (await asyncio.to_thread(call, f"{base}/api/auth", None, "nope")) == (
            200, {"who": None, "enabled": True})

        # The WMS takes them now: replay three by id (from the page), then all the rest.
        await wms.update_faults({"reject_pattern": None})
        first = [d["id"] for d in items[:3]]
        status, got = await asyncio.to_thread(
            call, url, {"ids": first}, ALICE, {"X-Gateway-Client": "status-page"})
        assert (status, got) == (200, {"replayed": 3})
        status, got = await asyncio.to_thread(call, url, {"all": True,
                                                          "filter": {"sink": "wms"}}, BOB)
        assert (status, got) == (200, {"replayed": len(items) - 3})
        await wait_until(lambda: wms.stats()["unique"] == 200, 30, "the replays at the WMS")
        await delivered(gw)
        assert wms.stats()["unique"] == len({r.code for r in reads})

        # New rejects, discarded by filter: archived, counted, audited.
        await wms.update_faults({"reject_pattern": "5$", "reject_field": "data.code"})
        more = await publish(fleet, 60)
        await settled(gw, wms, 260 + len(fives))
        more_fives = [r.code for r in more if r.code.endswith("5")]
        assert more_fives
        status, got = await asyncio.to_thread(
            call, f"{base}/api/dead-letters/discard",
            {"all": True, "filter": {"reason": wms_reason(gw)}}, ALICE)
        assert (status, got) == (200, {"discarded": len(more_fives)})

        status, doc = await asyncio.to_thread(call, f"{base}/api/audit")
        assert status == 200
        trail = [(a["who"], a["via"], a["action"], a["count"]) for a in doc["audit"]]
        assert trail == [("alice", "api", "discard", len(more_fives)),
                         ("bob", "api", "replay", len(items) - 3),
                         ("alice", "page", "replay", 3)]
        assert doc["audit"][2]["ids"] == first
        assert doc["audit"][1]["filter"] == {"sink": "wms", "kind": "sink"}
        assert len(doc["archive"]["recent"]) == len(more_fives)

        day = day_of(time.time())
        status, rec = await asyncio.to_thread(call, f"{base}/api/reconciliation?day={day}")
        assert status == 200
        scan = next(r for r in rec["types"] if r["type"] == "scan")
        accepted = len({(r.scanner, r.read_id) for r in reads + more})
        assert scan["accepted"] == accepted
        assert scan["sinks"]["wms"] == {
            "delivered": accepted - len(more_fives), "rejected": len(items) + len(more_fives),
            "replayed": len(items), "discarded": len(more_fives), "pending": 0}
        status, text = await asyncio.to_thread(
            call, f"{base}/api/reconciliation?day={day}&format=csv")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert {"day": day, "type": "scan", "sink": "wms", "accepted": str(accepted),
                "delivered": str(accepted - len(more_fives)),
                "rejected": str(len(items) + len(more_fives)), "replayed": str(len(items)),
                "discarded": str(len(more_fives)), "pending": "0"} in rows
        assert (await asyncio.to_thread(call, f"{base}/api/reconciliation?day=2026-13-01"))[0] \
            == 400

        # After a restart the counts are the same: they come from the store.
        assert await asyncio.to_thread(gw.stop) == 0
        await start(gw)
        status, again = await asyncio.to_thread(call,
                                                f"{base}/api/reconciliation?day={day}")
        assert again == rec
        # The CLI report reads the same store.
        out = cli("report", "--config", str(gw.config_path), "--day", day,
                  "--format", "json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == rec
        assert not gw.log_events("http_error") and "Traceback" not in gw.log_tail(400)


def wms_reason(gw: GatewayProcess) -> str:
    """The text every reject of the WMS simulator's pattern carries."""
    status, page = call(f"{gw.status_url}/api/dead-letters?bodies=0&limit=1")
    assert status == 200 and page["dead_letters"], page
    reason: str = page["dead_letters"][0]["reason"]
    return reason


async def test_container_trace_and_cli_actions_leave_a_trace(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    async with rejecting_site(tmp_path, broker, wms, 40) as (gw, _, reads):
        base = gw.status_url
        good = next(r.code for r in reads if not r.code.endswith("5"))
        bad = next(r.code for r in reads if r.code.endswith("5"))

        status, doc = await asyncio.to_thread(call, f"{base}/api/containers/{good}")
        assert status == 200
        assert [(e["type"], e["where"]) for e in doc["events"]] == [
            ("scan", {"wms": "delivered"})]
        assert doc["events"][0]["data"]["code"] == good
        status, doc = await asyncio.to_thread(call, f"{base}/api/containers/{bad}")
        (ev,) = doc["events"]
        assert ev["where"]["wms"].startswith("dead-lettered (id ")
        dl_id = int(ev["where"]["wms"].split("id ")[1].rstrip(")"))
        status, doc = await asyncio.to_thread(call, f"{base}/api/containers/NOPE-1")
        assert (status, doc["events"]) == (200, [])

        # A replay from the CLI, on the store the daemon runs on.
        await wms.update_faults({"reject_pattern": None})
        out = await asyncio.to_thread(cli, "store", "replay", "--config",
                                      str(gw.config_path), str(dl_id))
        assert out.returncode == 0, out.stderr
        assert "replayed 1" in out.stdout
        assert json.loads(out.stderr.splitlines()[-1])["event"] == "dead_letters_replayed"
        await wait_until(lambda: gw.log_events("operator_action"), 20,
                         "the daemon to log the CLI's replay")
        (line,) = gw.log_events("operator_action")
        assert (line["action"], line["via"], line["count"], line["ids"]) == (
            "replay", "cli", 1, [dl_id])
        await delivered(gw)

        async def traced() -> dict[str, Any] | None:
            _, doc = await asyncio.to_thread(call, f"{base}/api/containers/{bad}")
            where = [e["where"] for e in doc["events"]]
            return doc if len(where) == 2 and where[1] == {"wms": "delivered"} else None

        doc = await wait_until(traced, 20, "the replayed event delivered")
        assert doc["events"][0]["where"]["wms"].startswith("replayed (seq ")
        assert doc["events"][1]["replay_for"] == "wms"
        status, trail = await asyncio.to_thread(call, f"{base}/api/audit")
        assert [(a["via"], a["action"], a["ids"]) for a in trail["audit"]] == [
            ("cli", "replay", [dl_id])]

        # `status` asks the running daemon; `events tail` finds the container.
        out = await asyncio.to_thread(cli, "status", "--config", str(gw.config_path))
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("site DC-EAST-1: READY")
        assert "wms" in out.stdout and "scan-01" in out.stdout
        out = await asyncio.to_thread(cli, "events", "tail", "--config",
                                      str(gw.config_path), "--container", bad)
        assert out.returncode == 0, out.stderr
        assert len(out.stdout.splitlines()) == 2 and bad in out.stdout
        assert await asyncio.to_thread(gw.stop) == 0
        out = await asyncio.to_thread(cli, "status", "--config", str(gw.config_path))
        assert out.returncode == 3
        assert "gateway not running" in out.stdout and "store:" in out.stdout
