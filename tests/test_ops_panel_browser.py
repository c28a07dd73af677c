"""The status page's operator panel in a real browser (Debian's chromium, driven by
Playwright): log in with a status token, replay selected dead letters, discard all
matching a filter, read the audit trail and the reconciliation, search a container.

A real gateway process, Mosquitto, the scanner simulator and the WMS simulator
rejecting codes ending in 5. Screenshots go to tests/artifacts/ (or
$WH_TEST_ARTIFACTS): ops-01-dead-letters.png ... ops-05-phone-390.png.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM_ARGS, artifacts_dir, chromium_path
from e2e import connect_fleet, delivered, publish, site, start, wait_until
from playwright.async_api import Page, async_playwright, expect

from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.wms import WmsSimulator

TOKEN = "demo-token-0123456789"


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    path = await asyncio.to_thread(chromium_path)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(path), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def show(page: Page, tab: str) -> Any:
    """The view of ``tab``, after clicking its tab when the page has tabs."""
    button = page.locator(f'.tabs button[data-tab="{tab}"]')
    if await button.count():
        await button.click()
    view = page.locator(f"#{tab}-view")
    await expect(view).to_be_visible(timeout=10000)
    return view


async def test_operator_panel_replay_discard_audit_reconciliation_trace(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator, chromium: Any) -> None:
    shots = artifacts_dir()
    errors: list[str] = []
    await wms.update_faults({"reject_pattern": "5$", "reject_field": "data.code"})
    tokens = tmp_path / "status.token"
    tokens.write_text(f"demo {TOKEN}\n", encoding="utf-8")
    cfg = site(tmp_path, broker, wms, scanners=2, status_extra={"token_file": tokens},
               store_extra={"retention": "1h"})
    fleet = connect_fleet(broker, count=2)
    try:
        with GatewayProcess(cfg) as gw:
            await start(gw)
            reads = await publish(fleet, 80)
            fives = [r.code for r in reads if r.code.endswith("5")]
            await wait_until(lambda: wms.stats()["rejected"] >= len(fives), 30, "the rejects")
            await delivered(gw)
            good = next(r.code for r in reads if not r.code.endswith("5"))

            page = await chromium.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                    if m.type == "error" and not m.location.get("url", "").endswith(
                        "/favicon.ico") else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            await page.goto(gw.status_url + "/")
            view = await show(page, "dead-letters")
            rows = view.locator("table[data-role=table] tr[data-id]")
            await expect(rows).to_have_count(len(fives), timeout=15000)
            text = await view.locator("table[data-role=table]").inner_text()
            assert all(code in text for code in fives) and "business" in text
            replay_sel = view.locator('[data-act="replay-selected"]')
            await expect(replay_sel).to_be_disabled()

            # A wrong token is refused; the right one names its holder.
            login = view.locator("[data-role=login] input[type=password]")
            await login.fill("wrong")
            await login.press("Enter")
            await expect(view.locator("[data-role=message]")).to_have_text("wrong token")
            await view.locator("[data-role=login] input[type=password]").fill(TOKEN)
            await view.locator("[data-role=login] button").click()
            await expect(view.locator("[data-role=who]")).to_have_text("demo")
            await page.screenshot(path=str(shots / "ops-01-dead-letters.png"), full_page=True)

            # Replay two selected ones: the WMS takes them now.
            await wms.update_faults({"reject_pattern": None})
            for box in (await rows.all())[:2]:
                await box.locator("input[type=checkbox]").check()
            await expect(replay_sel).to_have_text("Replay selected (2)")
            await replay_sel.click()
            await expect(view.locator("[data-role=message]")).to_have_text("replayed 2")
            await expect(rows).to_have_count(len(fives) - 2)
            audit = view.locator("table[data-role=audit]")
            await expect(audit).to_contain_text("demo")
            await expect(audit.locator("tr").nth(1)).to_contain_text("page")

            # Discard all matching a filter, confirmed with a second click.
            await view.locator("[data-role=filters] input[name=reason]").fill("data.code")
            await view.locator("[data-role=filters] button").click()
            discard_all = view.locator('[data-act="discard-all"]')
            await expect(discard_all).to_have_text(f"Discard all matching ({len(fives) - 2})")
            await discard_all.click()
            await expect(discard_all).to_have_text(f"Confirm: discard {len(fives) - 2}?")
            await discard_all.click()
            await expect(view.locator("[data-role=message]")).to_have_text(
                f"discarded {len(fives) - 2} (archived)")
            await expect(view.locator("table[data-role=table]")).to_contain_text(
                "no dead letters")
            first_audit = audit.locator("tr").nth(1)
            await expect(first_audit).to_contain_text("discard")
            await expect(first_audit).to_contain_text("reason=data.code")
            await page.screenshot(path=str(shots / "ops-02-after-replay-discard.png"),
                                  full_page=True)
            trail = [(a["who"], a["via"], a["action"], a["count"])
                     for a in (await page.evaluate("fetch('api/audit').then(r => r.json())")
                               )["audit"]]
            assert trail == [("demo", "page", "discard", len(fives) - 2),
                             ("demo", "page", "replay", 2)]

            # Reconciliation of today.
            await wait_until(lambda: wms.stats()["unique"] == 80 - len(fives) + 2, 20,
                             "the two replays at the WMS")
            await delivered(gw)
            rec = await show(page, "reconciliation")
            await rec.locator("button").click()
            row = rec.locator("tr", has_text="scan").first
            want = ["scan", "wms", "80", str(80 - len(fives) + 2), str(len(fives)), "2",
                    str(len(fives) - 2), "0"]

            async def shown() -> list[str] | None:
                await rec.locator("button").click()  # the table as of now
                cells = [c.strip() for c in (await row.inner_text()).split("\t")]
                return cells if cells[:8] == want else None

            await wait_until(shown, 20, f"the reconciliation row {want}", 0.5)
            await page.screenshot(path=str(shots / "ops-03-reconciliation.png"), full_page=True)

            # Container search: a delivered one, and a discarded one.
            trace = await show(page, "containers")
            await trace.locator("input[name=id]").fill(good)
            await trace.locator("button").click()
            await expect(trace.locator("table")).to_contain_text("wms: delivered")
            await trace.locator("input[name=id]").fill(fives[-1])
            await trace.locator("button").click()
            await expect(trace.locator("table")).to_contain_text("wms: discarded")
            await page.screenshot(path=str(shots / "ops-04-container.png"), full_page=True)

            # A phone: the panel fits 390 px (wide tables scroll inside their box).
            phone = await chromium.new_page(viewport={"width": 390, "height": 844})
            phone.on("pageerror", lambda e: errors.append(f"phone page error: {e}"))
            await phone.goto(gw.status_url + "/")
            dl = await show(phone, "dead-letters")
            await expect(dl.locator("[data-role=audit] tr")).to_have_count(3, timeout=15000)
            for name in ("dead-letters", "reconciliation", "containers"):
                width = await phone.evaluate(
                    f"document.getElementById('{name}-view').getBoundingClientRect().right")
                assert width <= 390, (name, width)
            await phone.screenshot(path=str(shots / "ops-05-phone-390.png"), full_page=True)
            assert errors == [], errors
    finally:
        fleet.close()
