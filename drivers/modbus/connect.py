"""Opening a Modbus TCP connection: one way for the driver and the register scan.

``retries=0`` and no automatic reconnect: the caller owns both decisions (the
driver backs off and reconnects; a scan gives up).
"""

from __future__ import annotations

import asyncio

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.config import ModbusDevice

__all__ = ["CannotConnect", "open_client"]


class CannotConnect(ConnectionError):
    """The device accepted no connection (the message names it and says why)."""


async def open_client(dev: ModbusDevice) -> AsyncModbusTcpClient:
    """A connected client to ``dev`` within its timeout, or :class:`CannotConnect`."""
    client = AsyncModbusTcpClient(dev.host, port=dev.port, timeout=dev.timeout, retries=0,
                                  reconnect_delay=0)
    try:
        async with asyncio.timeout(dev.timeout):
            ok = await client.connect()
    except TimeoutError:
        ok = False
    except OSError as err:
        client.close()
        raise CannotConnect(f"cannot connect to {dev.host}:{dev.port}: "
                            f"{err or type(err).__name__}") from None
    if not ok:
        client.close()
        raise CannotConnect(f"cannot connect to {dev.host}:{dev.port}")
    return client
