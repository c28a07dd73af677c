"""The status page's operator panel in a real browser (Debian's chromium, driven by
Playwright): log in with the status token the demo prints, replay selected dead letters,
discard all matching a filter, read the audit trail and the reconciliation, search a
container.

The demo runs as an operator starts it (the whole simulated site, a bounded number of
orders, no random faults) and its WMS simulator rejects codes ending in 5, the ready
command the demo prints. Every figure the page must show is counted from what the WMS
simulator received and the dead letters held. Screenshots go to tests/artifacts/ (or
$WH_TEST_ARTIFACTS): ops-01-dead-letters.png ... ops-05-phone-390.png.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from browser import artifacts_dir
from demo import DemoProcess, get_json
from e2e import wait_until
from playwright.async_api import Page, expect

ORDERS = 6


async def show(page: Page, tab: str) -> Any:
    """The view of ``tab``, after clicking its tab when the page has tabs."""
    button = page.locator(f'.tabs button[data-tab="{tab}"]')
    if await button.count():
        await button.click()
    view = page.locator(f"#{tab}-view")
    await expect(view).to_be_visible(timeout=10000)
    return view


def _code(item: dict[str, Any]) -> str:
    """The code of a dead-lettered scan (its body is the event as stored)."""
    event = json.loads(base64.b64decode(item["body_b64"]))
    return str(event["data"]["code"])


async def test_operator_panel_replay_discard_audit_reconciliation_trace(
        tmp_path: Path, chromium: Any) -> None:
    shots = artifacts_dir()
    errors: list[str] = []
    demo = DemoProcess(tmp_path, "--no-random-faults", "--orders", str(ORDERS),
                       "--order-rate", "2")
    with demo:
        await asyncio.to_thread(demo.start)
        await asyncio.to_thread(demo.wms, "faults",
                                {"reject_pattern": "5$", "reject_field": "data.code"})
        await wait_until(lambda: get_json(demo.site_control + "/state")["idle"]
                         and get_json(demo.site_control + "/state")["orders"] == ORDERS,
                         120, "every order at its dock", 0.5)
        await wait_until(lambda: demo.status()["sinks"]["wms"]["backlog_events"] == 0,
                         30, "the WMS backlog empty", 0.3)

        def dead_letters() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = get_json(
                demo.status_url + "/api/dead-letters?sink=wms&limit=500")["dead_letters"]
            return items

        fives = [_code(d) for d in await asyncio.to_thread(dead_letters)]
        assert len(fives) >= 3 and all(code.endswith("5") for code in fives), fives
        scans = [e for e in await asyncio.to_thread(demo.wms_events) if e["type"] == "scan"]
        delivered_before = len({e["event_id"] for e in scans})
        good = next(e["data"]["code"] for e in scans if not e["data"]["code"].endswith("5"))
        token = demo.token

        page = await chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                if m.type == "error" and not m.location.get("url", "").endswith(
                    "/favicon.ico") else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        await page.goto(demo.status_url + "/")
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
        await view.locator("[data-role=login] input[type=password]").fill(token)
        await view.locator("[data-role=login] button").click()
        await expect(view.locator("[data-role=who]")).to_have_text("demo")
        await page.screenshot(path=str(shots / "ops-01-dead-letters.png"), full_page=True)

        # Replay two selected ones: the WMS takes them now.
        await asyncio.to_thread(demo.wms, "faults", {"reject_pattern": None})
        for box in (await rows.all())[:2]:
            await box.locator("input[type=checkbox]").check()
        await expect(replay_sel).to_have_text("Replay selected (2)")
        await replay_sel.click()
        await expect(view.locator("[data-role=message]")).to_have_text("replayed 2")
        await expect(rows).to_have_count(len(fives) - 2)
        discarded = _code((await asyncio.to_thread(dead_letters))[-1])
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
        await wait_until(lambda: len({e["event_id"] for e in demo.wms_events()
                                      if e["type"] == "scan"}) == delivered_before + 2,
                         20, "the two replays at the WMS")
        rec = await show(page, "reconciliation")
        await rec.locator("button").click()
        row = rec.locator("tr", has_text="scan").filter(has_text="wms").first
        accepted = delivered_before + len(fives)
        want = ["scan", "wms", str(accepted), str(delivered_before + 2), str(len(fives)), "2",
                str(len(fives) - 2), "0"]

        last: list[list[str]] = [[]]

        async def shown() -> list[str] | None:
            await rec.locator("button").click()  # the table as of now
            last[0] = [c.strip() for c in (await row.inner_text()).split("\t")]
            return last[0] if last[0][:8] == want else None

        await wait_until(shown, 20, f"the reconciliation row {want}", 0.5,
                         state=lambda: last[0])
        await page.screenshot(path=str(shots / "ops-03-reconciliation.png"), full_page=True)

        # Container search: a delivered one, and a discarded one.
        trace = await show(page, "containers")
        await trace.locator("input[name=id]").fill(good)
        await trace.locator("button").click()
        await expect(trace.locator("table")).to_contain_text("wms: delivered")
        await trace.locator("input[name=id]").fill(discarded)
        await trace.locator("button").click()
        await expect(trace.locator("table")).to_contain_text("wms: discarded")
        await page.screenshot(path=str(shots / "ops-04-container.png"), full_page=True)

        # A phone: the panel fits 390 px (wide tables scroll inside their box).
        phone = await chromium.new_page(viewport={"width": 390, "height": 844})
        phone.on("pageerror", lambda e: errors.append(f"phone page error: {e}"))
        await phone.goto(demo.status_url + "/")
        dl = await show(phone, "dead-letters")
        await expect(dl.locator("[data-role=audit] tr")).to_have_count(3, timeout=15000)
        for name in ("dead-letters", "reconciliation", "containers"):
            width = await phone.evaluate(
                f"document.getElementById('{name}-view').getBoundingClientRect().right")
            assert width <= 390, (name, width)
        await phone.screenshot(path=str(shots / "ops-05-phone-390.png"), full_page=True)
        assert errors == [], errors
