"""The status page in a real browser (Debian's chromium, driven by Playwright) through a bad shift.

A real gateway process reads two simulated conveyor PLCs (Modbus TCP) and
delivers to the WMS simulator; the page is driven through what a site
engineer meets: a WMS outage, a conveyor jam, events the WMS rejects, a phone
screen, and the gateway stopping. At each step the test asserts what the page
shows (the alert, the sink's down-since and plain-words error, the device's
red dot, the dead letter table, no horizontal scroll at 390 px, the grey-out
with "no data since"), that the browser logged no error, and saves a
screenshot (tests/artifacts/ or $WH_TEST_ARTIFACTS).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM_ARGS, artifacts_dir, chromium_path
from e2e import start, wait_until
from playwright.async_api import async_playwright, expect

from simulators.broker import free_port
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_plc import gateway_device
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.wms import WmsSimulator


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


async def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.to_thread(_post, url, body)


@pytest.fixture
async def conveyors() -> AsyncIterator[ConveyorSimulator]:
    async with ConveyorSimulator(count=2, tote_rate=4.0, noread_rate=0.0) as s:
        yield s


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    path = await asyncio.to_thread(chromium_path)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(path), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


def gateway(tmp_path: Path, wms: WmsSimulator, sim: ConveyorSimulator) -> GatewayProcess:
    keys = {"backoff_initial": "100ms", "backoff_max": "500ms", "timeout": "1s",
            "zones": {"3": "MERGE-3"}}
    devices = [gateway_device(c.id, c.port, poll_interval="100ms", extra=keys)
               for c in sim.conveyors]
    cfg = GatewaySetup(workdir=tmp_path / "gw", broker_port=free_port(), wms_url=wms.url,
                       scanners=0, synchronous="NORMAL", devices=devices,
                       http_extra={"timeout": "1s"})
    return GatewayProcess(cfg)


async def test_status_page_through_a_bad_shift(
        tmp_path: Path, wms: WmsSimulator, conveyors: ConveyorSimulator, browser: Any) -> None:
    shots = artifacts_dir()
    errors: list[str] = []
    gw = gateway(tmp_path, wms, conveyors)
    with gw:
        await start(gw)
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        await page.goto(gw.status_url + "/")

        # A quiet shift: ready, green, every device and both charts drawn.
        summary = page.locator("#summary")
        await expect(summary).to_have_attribute("data-state", "ok", timeout=15000)
        for conv in conveyors.conveyors:
            await expect(
                page.locator(f'.device[data-device="{conv.id}"]')).to_have_attribute(
                "data-dot", "ok")
        await expect(page.locator("#chart-rates polyline").first).to_be_attached(
            timeout=20000)
        await expect(page.locator("#chart-backlog polyline")).to_have_count(1)
        icon = await page.evaluate("fetch('favicon.ico').then(r => r.status)")
        assert icon == 200
        await page.screenshot(path=str(shots / "page-01-overview-1920.png"), full_page=True)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1920

        # The WMS goes down: an alert in plain words, the sink down since, no "ready" summary.
        await post(wms.control_url + "/control/outage", {"on": True})
        alert = page.locator('.alert[data-kind="sink_unavailable"][data-subject="sink:wms"]')
        await expect(alert).to_be_visible(timeout=20000)
        text = await alert.inner_text()
        assert "cannot connect to 127.0.0.1" in text and "connection refused" in text, text
        assert "ssl:default" not in text
        assert await summary.get_attribute("data-state") == "critical"
        assert "nothing needs attention" not in await summary.inner_text()
        card = page.locator('.sink[data-sink="wms"]')
        card_text = await card.inner_text()
        assert re.search(r"down since\s+\d\d:\d\d:\d\d", card_text), card_text
        assert "none (no reply)" in card_text, card_text  # no stale "200" during the outage
        await expect(card).to_contain_text(re.compile(r"oldest waiting\s*\d+ s"))
        await page.screenshot(path=str(shots / "page-02-wms-outage.png"), full_page=True)
        status = gw.status()
        sink = status["sinks"]["wms"]
        assert sink["last_status"] is None and sink["down_since"] is not None
        assert sink["backlog_events"] > 0 and sink["oldest_undelivered_age_s"] > 0

        await post(wms.control_url + "/control/outage", {"on": False})
        await expect(alert).to_have_count(0, timeout=20000)
        await expect(summary).to_have_attribute("data-state", "ok", timeout=10000)
        await wait_until(lambda: gw.log_events("sink_recovered"), 10, "the recovery line")
        (recovered,) = gw.log_events("sink_recovered")
        assert recovered["sink"] == "wms" and recovered["down_s"] >= 5
        assert recovered["peak_backlog_events"] > 0

        # A conveyor jams: its dot turns red, the jam with zone and since is an alert.
        await post(conveyors.control_url + "/devices/1/jam", {"zone": 3})
        jam = page.locator('.alert[data-kind="conveyor_jam"]')
        await expect(jam).to_be_visible(timeout=10000)
        assert "conveyor-01 jammed in zone MERGE-3" in await jam.inner_text()
        dev = page.locator('.device[data-device="conveyor-01"]')
        await expect(dev).to_have_attribute("data-dot", "critical")
        await expect(dev.locator(".fault")).to_contain_text("jammed")
        await page.screenshot(path=str(shots / "page-03-conveyor-jam.png"), full_page=True)
        await post(conveyors.control_url + "/devices/1/clear", {})
        await expect(jam).to_have_count(0, timeout=10000)
        await wait_until(lambda: gw.log_events("conveyor_jam_cleared"), 10, "the cleared line")
        (raised,) = gw.log_events("conveyor_jam")
        assert raised["zone"] == "MERGE-3" and raised["subject"] == "device:conveyor-01"

        # The WMS rejects totes ending in 5: dead letters wait, listed on their tab.
        await post(wms.control_url + "/control/faults",
                   {"reject_pattern": "5$", "reject_field": "data.container"})
        waiting = page.locator('.alert[data-kind="dead_letters_waiting"]')
        await expect(waiting.first).to_be_visible(timeout=20000)
        await page.click('.tabs button[data-tab="dead-letters"]')
        row = page.locator("#dead-letters-view table tr").nth(1)
        await expect(row).to_contain_text("5$", timeout=10000)
        await page.screenshot(path=str(shots / "page-04-rejects.png"), full_page=True)
        await page.click('.tabs button[data-tab="overview"]')

        # A phone: cards, no horizontal scroll at 390 px, alerts still on top.
        phone = await browser.new_page(viewport={"width": 390, "height": 844})
        phone.on("console", lambda m: errors.append(f"phone console {m.type}: {m.text}")
                 if m.type == "error" else None)
        phone.on("pageerror", lambda e: errors.append(f"phone page error: {e}"))
        await phone.goto(gw.status_url + "/")
        await expect(phone.locator(".device")).to_have_count(2, timeout=10000)
        await expect(phone.locator("#chart-rates svg")).to_be_attached(
            timeout=15000)
        await phone.locator('.device[data-device="conveyor-01"] summary').click()
        assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
        await phone.screenshot(path=str(shots / "page-05-phone-390.png"), full_page=True)
        assert errors == [], errors

        # The gateway stops: the whole page greys out and says since when it has no data.
        await asyncio.to_thread(gw.stop)
    stale = page.locator("#stale")
    await expect(stale).to_be_visible(timeout=10000)
    await expect(stale).to_contain_text(re.compile(r"no data since \d\d:\d\d:\d\d"))
    assert await page.evaluate("document.body.classList.contains('stale')")
    await page.screenshot(path=str(shots / "page-06-gateway-stopped.png"), full_page=True)
    # Failed requests to the stopped gateway are the browser's own lines; nothing else.
    others = [e for e in errors if "Failed to load resource" not in e]
    assert others == [], others
