"""The real gateway under a test-owned NOTIFY_SOCKET: READY, STATUS, watchdog pings, STOPPING.

systemd is not PID 1 on the test machines, so the unit cannot be started for
real; the gateway is run as a child process exactly as systemd would run it
(``NOTIFY_SOCKET``, ``WATCHDOG_USEC``) and the datagrams it sends are read
from a socket this test binds.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from pathlib import Path

from e2e import connect_fleet, delivered, publish, read_ids_by_scanner, site, wait_until
from notifysock import NotifySocket

from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.wms import WmsSimulator


def _readyz(url: str) -> int:
    """The HTTP status /readyz answers (raises when nothing listens)."""
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _gateway(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator, sock: NotifySocket,
             **env: str) -> GatewayProcess:
    gw = GatewayProcess(site(tmp_path, broker, wms))
    gw.env = {**os.environ, "NOTIFY_SOCKET": sock.name, **env}
    return gw


async def test_ready_after_status_listens_status_lines_pings_and_stopping(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    with NotifySocket() as sock:
        gw = _gateway(tmp_path, broker, wms, sock, WATCHDOG_USEC="2000000")
        gw.start(wait_ready=False)
        try:
            await wait_until(lambda: sock.with_key("READY"), 20, "READY=1")
            # The status server was listening before READY=1 was sent: /readyz answers now.
            assert _readyz(gw.status_url) in (200, 503)
            assert sock.with_key("READY")[0][1]["READY"] == "1"
            ready_at = sock.with_key("READY")[0][0]
            assert not [t for t in sock.pings() if t < ready_at - 1.0]
            await asyncio.to_thread(gw.wait_ready)  # the scanners' subscriptions are up
            fleet = connect_fleet(broker)
            try:
                reads = await publish(fleet, 20)
            finally:
                fleet.close()
            await wait_until(lambda: sum(map(len, read_ids_by_scanner(wms).values())) >= 20,
                             20, "20 reads at the WMS")
            await delivered(gw)
            got = read_ids_by_scanner(wms)
            assert sorted((r.scanner, r.read_id) for r in reads) == sorted(
                (dev, i) for dev, ids in got.items() for i in ids)
            await wait_until(lambda: any("devices 4/4 up" in s for s in sock.statuses()), 20,
                             "a STATUS line with every device up")
            line = next(s for s in sock.statuses() if "devices 4/4 up" in s)
            assert line.startswith("ready; ") and "backlog 0" in line, line
            await wait_until(lambda: len(sock.pings(ready_at)) >= 4, 20, "watchdog pings")
            assert gw.stop() == 0
        finally:
            if gw.running:
                gw.kill()
        stopping = sock.with_key("STOPPING")
        assert stopping and stopping[0][1]["STOPPING"] == "1"
        assert stopping[0][0] > ready_at


async def test_no_watchdog_pings_for_another_pid(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    with NotifySocket() as sock:
        gw = _gateway(tmp_path, broker, wms, sock, WATCHDOG_USEC="1000000", WATCHDOG_PID="1")
        gw.start()
        try:
            await wait_until(lambda: sock.with_key("READY"), 20, "READY=1")
            await asyncio.sleep(2.5)
            assert sock.pings() == []
        finally:
            gw.stop()
