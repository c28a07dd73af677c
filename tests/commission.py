"""Running ``warehouse-gateway try`` as a child process, and the config it reads."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.harness.toml import render_toml

ROOT = Path(__file__).resolve().parents[1]
SITE = "DC-EAST-1"


def write_config(tmp_path: Path, devices: list[dict[str, Any]], *, wms_url: str | None = None,
                 broker_port: int | None = None) -> Path:
    """A site config with ``devices``, a WMS sink and the site broker; the store in tmp_path."""
    doc: dict[str, Any] = {
        "site": {"id": SITE},
        "store": {"path": tmp_path / "store" / "buffer.db"},
        "brokers": [{"id": "site", "port": broker_port}] if broker_port else None,
        "devices": devices,
        "sinks": [{"id": "wms", "type": "http", "url": wms_url}] if wms_url else None,
        "log": {"format": "json"},
    }
    path = tmp_path / "gateway.toml"
    path.write_text(render_toml(doc), encoding="utf-8")
    return path


@dataclass
class TryRun:
    """A finished ``try``: exit code, stdout lines, stderr."""

    code: int
    lines: list[str]
    stderr: str
    docs: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The ``--json`` objects of one kind."""
        return [d for d in self.docs if d.get("kind") == kind]


class TryProcess:
    """``python -m gateway try ...`` as a child process, its stdout read line by line."""

    def __init__(self, config: Path, *args: str) -> None:
        self.argv = [sys.executable, "-m", "gateway", "try", "--config", str(config), *args]
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=ROOT)

    async def line(self, within: float = 30.0) -> str:
        """The next stdout line ('' at the end)."""
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(within):
            raw = await self.proc.stdout.readline()
        text = raw.decode().rstrip("\n")
        if raw:
            self.lines.append(text)
        return text

    async def until(self, kind: str, within: float = 30.0) -> dict[str, Any]:
        """Read ``--json`` lines until one of ``kind``."""
        async with asyncio.timeout(within):
            while True:
                text = await self.line(within)
                assert text, f"try ended before a {kind!r} line: {self.lines}"
                doc: dict[str, Any] = json.loads(text)
                if doc.get("kind") == kind:
                    return doc

    async def finish(self, within: float = 60.0) -> TryRun:
        """Wait for the exit; everything it printed."""
        assert self.proc is not None and self.proc.stdout is not None
        assert self.proc.stderr is not None
        async with asyncio.timeout(within):
            rest, err = await self.proc.communicate()
            code = await self.proc.wait()
        self.lines += [t for t in rest.decode().splitlines()]
        run = TryRun(code, self.lines, err.decode())
        if "--json" in self.argv:
            run.docs = [json.loads(t) for t in self.lines if t.startswith("{")]
        return run

    async def kill(self) -> None:
        """Stop it if it still runs (test teardown)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def run_try(config: Path, *args: str, within: float = 60.0) -> TryRun:
    """Run ``try`` to its end."""
    proc = TryProcess(config, *args)
    await proc.start()
    try:
        return await proc.finish(within)
    finally:
        await proc.kill()
