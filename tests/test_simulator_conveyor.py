"""``python -m simulators conveyor``: the command line, its Modbus servers and control API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e import wait_until
from pymodbus.client import AsyncModbusTcpClient

from simulators.conveyor_plc import ConveyorPlc
from simulators.harness.process import ChildProcess, simulator


def call(url: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def spawn(out: Path, *args: str) -> ChildProcess:
    child = simulator("conveyor", args, out)
    child.start()
    return child


async def test_cli_serves_conveyors_and_obeys_the_control_api(tmp_path: Path) -> None:
    out = tmp_path / "sim.log"
    proc = spawn(out, "--count", "2", "--port", "0", "--control-port", "0", "--zones", "4",
                 "--counter-start", "7")
    try:
        def listening() -> str | None:
            lines = out.read_text().splitlines()
            return next((x for x in lines if "conveyor_simulator_listening" in x), None)

        await wait_until(lambda: listening() is not None, 15, "the simulator listening")
        ready = json.loads(listening() or "{}")
        assert len(ready["ports"]) == 2
        ctl = ready["control"]
        assert call(ctl + "/devices/2/jam", {"zone": 4})["raised"] is True
        client = AsyncModbusTcpClient("127.0.0.1", port=ready["ports"][1], retries=0,
                                      reconnect_delay=0)
        assert await client.connect()
        rr = await client.read_input_registers(0, count=22, device_id=1)
        di = await client.read_discrete_inputs(16, count=1, device_id=1)
        bad = await client.read_input_registers(40, count=2, device_id=1)  # unmapped
        w = await client.write_register(0, 1000, device_id=1)  # speed setpoint
        client.close()
        assert rr.registers[3:5] == [101, 4]  # fault code, jam zone
        assert rr.registers[6:8] == [0, 1]  # fault count (u32)
        assert rr.registers[10:12] == [7, 0]  # good count 7, low word first (CDAB)
        assert di.bits[0] is True
        assert bad.isError() and bad.exception_code == 2
        assert not w.isError()
        state = call(ctl + "/state")["devices"]
        assert [d["fault_active"] for d in state] == [False, True]
        assert state[1]["speed_setpoint"] == 1000
        assert call(ctl + "/devices/2/clear", {})["cleared"] is True
        assert call(ctl + "/devices/2/faults")["faults"][0]["cleared"] is True
        with pytest.raises(urllib.error.HTTPError) as err:
            call(ctl + "/devices/1/explode", {})
        assert err.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as err:
            call(ctl + "/devices/1/exception", {"code": 9})
        assert err.value.code == 400
        assert proc.stop(10, raise_on_kill=True) == 0
    finally:
        proc.kill()


def test_plc_model_moves_totes_zone_by_zone_and_a_cold_restart_is_a_new_boot() -> None:
    plc = ConveyorPlc(1, zones=3, tote_rate=10.0, noread_rate=0.0)
    for _ in range(200):
        plc.tick(0.05)
    moves = list(plc.moves)
    first = [(m.from_zone, m.to_zone) for m in moves if m.tote == moves[0].tote]
    assert first == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert [m.seq for m in moves] == list(range(1, len(moves) + 1))
    assert plc.good_count == sum(1 for m in moves if m.to_zone == 0)
    plc.jam(2)
    seq = plc.tracking_seq
    plc.tick(1.0)
    assert plc.tracking_seq == seq and plc.state == 11  # HELD: nothing moves
    plc.cold_restart()
    assert (plc.boot, plc.tracking_seq, plc.fault_count, plc.good_count) == (2, 0, 0, 0)
    assert plc.image("input")[2] == 2
