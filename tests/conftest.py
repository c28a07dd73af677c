"""Shared fixtures: a real Mosquitto on a free loopback port, the WMS simulator, chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.broker import MosquittoBroker
from simulators.wms import WmsSimulator


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto started for this test only (own config, free port)."""
    with MosquittoBroker(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
async def wms() -> AsyncIterator[WmsSimulator]:
    """The WMS simulator on a free loopback port, in this test's event loop."""
    async with WmsSimulator() as sim:
        yield sim


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """Debian's chromium driven by Playwright (see tests/browser.py), for this test only."""
    import asyncio

    from browser import CHROMIUM_ARGS, chromium_path
    from playwright.async_api import async_playwright

    path = await asyncio.to_thread(chromium_path)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(path), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()
