"""One device, dry: its driver and its pipeline, for a bounded time or count of signals.

The driver is built from the device's config model exactly as the gateway
builds it (``DeviceModel.build``), with a ``DriverContext`` whose ingest is
the device's own ``DevicePipeline`` (``ObservingPipeline``) over a
``DryRunHandoff`` and whose ``dry_run`` tells MQTT drivers to use a clean
session of their own. Nothing here opens the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from gateway.commission.dryrun import DryRunHandoff, Observation, ObservingPipeline
from gateway.commission.render import Printer
from gateway.config import GatewayConfig
from gateway.core.codes import Identity
from gateway.core.config import DeviceModel
from gateway.core.protocols import Driver, DriverContext
from gateway.ingest import DriverIngest

#: How often the driver's connection state is looked at.
_TICK_S = 0.1
#: Bound on stopping the driver at the end.
_STOP_TIMEOUT_S = 5.0


class UnknownDevice(LookupError):
    """The device id is not in the config; ``known`` lists the ids that are."""

    def __init__(self, device: str, known: list[str]) -> None:
        listed = ", ".join(known) if known else "none configured"
        super().__init__(f"no device {device!r} in the config; devices: {listed}")
        self.device = device
        self.known = known


class DeviceUnreachable(Exception):
    """The device (or its MQTT broker) did not answer within the connect timeout."""


def find_device(cfg: GatewayConfig, device_id: str) -> Any:
    """The config model of ``device_id`` (raises ``UnknownDevice`` listing the ids)."""
    for dev in cfg.devices:
        if dev.id == device_id:
            return dev
    raise UnknownDevice(device_id, [d.id for d in cfg.devices])


def describe_device(cfg: GatewayConfig, dev: Any) -> dict[str, Any]:
    """The facts of the first line: driver, role and where the device is."""
    where: str | None = getattr(dev, "endpoint", None)
    if where is None and hasattr(dev, "host") and hasattr(dev, "port"):
        where = f"{dev.host}:{dev.port}"
    if where is None and getattr(dev, "broker", None) is not None:
        broker = next((b for b in cfg.brokers if b.id == dev.broker), None)
        if broker is not None:
            where = f"mqtt://{broker.host}:{broker.port}"
    return {"driver": dev.driver, "role": getattr(dev, "role", None), "at": where}


def build_dry_driver(cfg: GatewayConfig, dev: DeviceModel, report: Callable[[Observation], None],
                     *, clock: Callable[[], float] = time.time) -> Driver:
    """The device's driver, alone in its group, feeding an observing pipeline."""
    handoff = DryRunHandoff(report)
    ingest = DriverIngest(cfg.site.id, [dev], handoff, type(dev).KIND,
                          pipeline=ObservingPipeline, identity=Identity.of(cfg.site.codes))
    broker = next((b for b in cfg.brokers if b.id == getattr(dev, "broker", None)), None)
    ctx: DriverContext[Any] = DriverContext(site=cfg.site.id, devices=(dev,), ingest=ingest,
                                            broker=broker, clock=clock, dry_run=True)
    return type(dev).build(ctx)


def _state(driver: Driver, device: str) -> tuple[bool, str]:
    """Whether the device (its broker, for MQTT) is connected, and why not."""
    figures = driver.snapshot().get(device, {})
    if figures.get("connected"):
        return True, ""
    alerts = driver.alerts()
    error = (figures.get("last_error") or figures.get("broker_error")
             or ("; ".join(a.message for a in alerts) if alerts else "not connected yet"))
    return False, str(error)


async def dry_run(cfg: GatewayConfig, device_id: str, printer: Printer, *,
                  duration: float, count: int | None, connect_timeout: float,
                  stop: asyncio.Event | None = None) -> str:
    """Run one device dry until ``duration`` seconds or ``count`` signals; say why it stopped.

    ``stop`` ends the run early (Ctrl-C). Raises ``UnknownDevice``, or
    ``DeviceUnreachable`` when the first connection does not come up within
    ``connect_timeout``.
    """
    dev = find_device(cfg, device_id)
    enough = stop or asyncio.Event()
    announced = False

    def announce() -> None:
        nonlocal announced
        if not announced:
            announced = True
            printer.connected(device_id)

    def report(obs: Observation) -> None:
        if count is not None and printer.inputs >= count:
            return  # the run is over: what the driver still hands over is not shown
        announce()  # input arrives: the device answers (possibly before the next look)
        printer.observation(obs)
        if count is not None and printer.inputs >= count:
            enough.set()

    driver = build_dry_driver(cfg, dev, report)
    printer.start(device_id, describe_device(cfg, dev))
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(driver.run(), name=f"try-{driver.name}")
    try:
        connect_by = loop.time() + connect_timeout
        while not announced:
            up, error = _state(driver, device_id)
            if up:
                break
            if stop is not None and stop.is_set():
                return "interrupted before the device answered"
            if task.done() and not task.cancelled() and task.exception() is not None:
                error = f"driver failed: {task.exception()!r}"
            if task.done() or loop.time() >= connect_by:
                raise DeviceUnreachable(f"{device_id}: no connection within "
                                        f"{connect_timeout:g}s: {error}")
            await asyncio.sleep(_TICK_S)
        announce()
        up = True
        end = loop.time() + duration
        stopped = f"--duration {duration:g}s elapsed"
        while True:
            if enough.is_set():
                stopped = (f"--count {count} reached"
                           if count is not None and printer.inputs >= count else "interrupted")
                break
            if task.done():
                stopped = "driver stopped"
                break
            now = loop.time()
            if now >= end:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_TICK_S, end - now)):
                    await enough.wait()
            is_up, error = _state(driver, device_id)
            if is_up != up:
                up = is_up
                if up:
                    printer.connected(device_id)
                else:
                    printer.unavailable(device_id, error)
        return stopped
    finally:
        driver.pause()
        task.cancel()
        # wait, not await: the driver's own end (cancelled, or its error) is not ours to raise,
        # and a cancellation of this run still reaches the caller.
        await asyncio.wait([task], timeout=_STOP_TIMEOUT_S)
