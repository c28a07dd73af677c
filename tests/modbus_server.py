"""A pymodbus server on a free loopback port, serving one ``SimDevice`` (for tests)."""

from __future__ import annotations

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice


class SimPlc:
    """``device`` served over Modbus TCP on 127.0.0.1 (``port`` known after ``start``)."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.port = 0
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        server = ModbusTcpServer(self.device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        assert server.transport is not None
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
