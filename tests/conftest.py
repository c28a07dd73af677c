"""Shared fixtures: a real Mosquitto on a free loopback port, the WMS simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

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
