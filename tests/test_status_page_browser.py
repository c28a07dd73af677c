"""The status page in a real browser (Debian's chromium, driven by Playwright) through a bad shift.

The demo runs as an operator starts it (``warehouse-gateway demo``: the whole
simulated site, the WMS simulator, the gateway); the page is driven through
what a site engineer meets, each situation made with the ready commands the
demo prints: a WMS outage, a conveyor jam (the site's fault API), events the
WMS rejects, a phone screen, and the gateway stopping. At each step the test
asserts what the page shows (the alert, the sink's down-since and plain-words
error, the device's red dot, the dead letter table, no horizontal scroll at
390 px, the grey-out with "no data since"), that the browser logged no error,
and saves a screenshot (tests/artifacts/ or $WH_TEST_ARTIFACTS).
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

from browser import artifacts_dir
from demo import DemoProcess
from e2e import wait_until
from playwright.async_api import expect

from simulators.site import SiteLayout, site_devices

#: The demo's devices (its default layout).
DEVICES = [d["id"] for d in site_devices(SiteLayout(), modbus_port=1, opcua_port=1)]


async def test_status_page_through_a_bad_shift(tmp_path: Path, chromium: Any) -> None:
    shots = artifacts_dir()
    errors: list[str] = []
    demo = DemoProcess(tmp_path, "--no-random-faults", "--order-rate", "1")
    browser = chromium
    with demo:
        await asyncio.to_thread(demo.start)
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        await page.goto(demo.status_url + "/")

        # A quiet shift: ready, green, every device and both charts drawn.
        summary = page.locator("#summary")
        await expect(summary).to_have_attribute("data-state", "ok", timeout=15000)
        for dev_id in DEVICES:
            await expect(
                page.locator(f'.device[data-device="{dev_id}"]')).to_have_attribute(
                "data-dot", "ok", timeout=15000)
        await expect(page.locator("#chart-rates polyline").first).to_be_attached(
            timeout=20000)
        # One backlog line per sink: the WMS and the MQTT sink.
        await expect(page.locator("#chart-backlog polyline")).to_have_count(2)
        icon = await page.evaluate("fetch('favicon.ico').then(r => r.status)")
        assert icon == 200
        await page.screenshot(path=str(shots / "page-01-overview-1920.png"), full_page=True)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1920

        # The WMS goes down: an alert in plain words, the sink down since, no "ready" summary.
        await asyncio.to_thread(demo.wms, "outage", {"on": True})
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
        status = await asyncio.to_thread(demo.status)
        sink = status["sinks"]["wms"]
        assert sink["last_status"] is None and sink["down_since"] is not None
        assert sink["backlog_events"] > 0 and sink["oldest_undelivered_age_s"] > 0

        await asyncio.to_thread(demo.wms, "outage", {"on": False})
        await expect(alert).to_have_count(0, timeout=20000)
        await expect(summary).to_have_attribute("data-state", "ok", timeout=10000)
        await wait_until(lambda: demo.log_events("sink_recovered"), 10, "the recovery line")
        # One line for the outage: the last recovery of the WMS sink, after 5 s or more
        # (a loaded machine may have shown a short earlier blip, with its own line).
        lines = demo.log_events("sink_recovered")
        wms_lines = [x for x in lines if x["sink"] == "wms"]
        assert [x["down_s"] >= 5 for x in wms_lines][-1:] == [True], lines
        recovered = wms_lines[-1]
        assert recovered["peak_backlog_events"] > 0

        # A conveyor jams (the site's fault API): its dot turns red, the jam with zone and
        # since is an alert; it clears when the spell is over.
        await asyncio.to_thread(demo.fault, "jam", zone=2, seconds=8)
        jam = page.locator('.alert[data-kind="conveyor_jam"]')
        await expect(jam).to_be_visible(timeout=10000)
        assert re.search(r"conveyor-01 jammed in zone \S+", await jam.inner_text())
        dev = page.locator('.device[data-device="conveyor-01"]')
        await expect(dev).to_have_attribute("data-dot", "critical")
        await expect(dev.locator(".fault")).to_contain_text("jammed")
        await page.screenshot(path=str(shots / "page-03-conveyor-jam.png"), full_page=True)
        await expect(jam).to_have_count(0, timeout=20000)
        await wait_until(lambda: demo.log_events("conveyor_jam_cleared"), 10, "the cleared line")
        (raised,) = demo.log_events("conveyor_jam")
        assert raised["subject"] == "device:conveyor-01" and raised["zone"]

        # The WMS rejects totes ending in 5: dead letters wait, listed on their tab.
        await asyncio.to_thread(demo.wms, "faults",
                                {"reject_pattern": "5$", "reject_field": "data.container"})
        waiting = page.locator('.alert[data-kind="dead_letters_waiting"]')
        await expect(waiting.first).to_be_visible(timeout=20000)
        await page.click('.tabs button[data-tab="dead-letters"]')
        row = page.locator("#dead-letters-view table tr").nth(1)
        await expect(row).to_contain_text("5$", timeout=30000)
        await page.screenshot(path=str(shots / "page-04-rejects.png"), full_page=True)
        await page.click('.tabs button[data-tab="overview"]')

        # A phone: cards, no horizontal scroll at 390 px, alerts still on top.
        phone = await browser.new_page(viewport={"width": 390, "height": 844})
        phone.on("console", lambda m: errors.append(f"phone console {m.type}: {m.text}")
                 if m.type == "error" else None)
        phone.on("pageerror", lambda e: errors.append(f"phone page error: {e}"))
        await phone.goto(demo.status_url + "/")
        await expect(phone.locator(".device")).to_have_count(len(DEVICES), timeout=10000)
        await expect(phone.locator("#chart-rates svg")).to_be_attached(
            timeout=15000)
        await phone.locator('.device[data-device="conveyor-01"] summary').click()
        assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
        await phone.screenshot(path=str(shots / "page-05-phone-390.png"), full_page=True)
        assert errors == [], errors

        # The gateway stops (Ctrl-C ends the demo): the page greys out, says since when.
        await asyncio.to_thread(demo.stop, 60, sig=signal.SIGINT)
    stale = page.locator("#stale")
    await expect(stale).to_be_visible(timeout=10000)
    await expect(stale).to_contain_text(re.compile(r"no data since \d\d:\d\d:\d\d"))
    assert await page.evaluate("document.body.classList.contains('stale')")
    await page.screenshot(path=str(shots / "page-06-gateway-stopped.png"), full_page=True)
    # Failed requests to the stopped gateway are the browser's own lines; nothing else.
    others = [e for e in errors if "Failed to load resource" not in e]
    assert others == [], others
