"""Declarative mappings: what they cost against the presets and the built-in recognizers.

Three measurements, each run as pairs (the machine is noisy: the variants
alternate, the medians are reported):

1. CPU per event of the mapping, in this process (pure: decode + recognize,
   no I/O): OPC UA divert confirms through the built-in path (decoder +
   sorter recognizer), the ``sorter`` preset (generic event signal + engine)
   and a hand-written vendor mapping (docs/examples/mapping-vendor-sorter.toml
   on the vendor's field names); a Modbus poll of a mapped PLC (counter,
   tracking group, edge, threshold, telemetry triggers).
   ``mapping_overhead_pct`` = mapped vs preset; ``mapping_vs_built_in_pct`` =
   mapped vs the hand-written recognizer.
2. ``mapped_opcua_events_per_s``: OPC UA events of the sorter simulator,
   through the real gateway into the store, for a device reading them with
   ``kind = "event"`` and a hand-written mapping; the same run with the
   built-in recognizer, and the gateway's CPU µs per event of each.
3. ``mapped_modbus_points_per_s``: ``bench/modbus.py`` (50 simulated
   conveyor PLCs through the real gateway) with a hand-written mapping on
   every PLC instead of the built-in conveyor recognizer, paired with the
   built-in run.
"""

from __future__ import annotations

import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua import ua

from drivers.opcua.decode import divert_signal, event_signal
from gateway.core.events import Signal
from gateway.mapping.config import MappingConfig, load_preset
from gateway.mapping.engine import MappingRecognizer
from gateway.recognizers.sorter import SorterRecognizer
from simulators.broker import free_port
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.harness.sorter import SorterProcess

SITE, DEV = "DC-EAST-1", "sorter-1"
ROOT = Path(__file__).resolve().parent.parent
T = datetime(2026, 11, 23, 10, 15, 2)
RESULTS = ["diverted"] * 8 + ["no-read", "chute-full"]


def _sim_fields(n: int) -> dict[str, Any]:
    return {"EventId": n.to_bytes(8, "big"),
            "EventType": ua.NodeId.from_string("ns=2;s=DivertConfirmEventType"),
            "SourceNode": ua.NodeId.from_string("ns=2;s=Sorter"),
            "Time": T + timedelta(milliseconds=n),
            "ReceiveTime": T, "Message": ua.LocalizedText("divert"), "Severity": 100,
            "SourceName": "Sorter", "TrackingId": f"T{n:08d}", "ConfirmSeq": n,
            "Result": RESULTS[n % 10], "Barcode": f"TOTE-{n:06d}", "Chute": f"CHUTE-{n % 24:02d}",
            "Induct": "INDUCT-1"}


def _vendor_fields(n: int) -> dict[str, Any]:
    f = _sim_fields(n)
    return {**{k: f[k] for k in ("EventId", "EventType", "SourceNode", "Time", "ReceiveTime",
                                 "Message", "Severity", "SourceName")},
            "ParcelId": n, "Sequence": n, "ResultCode": 0 if n % 10 < 8 else 1 + n % 2,
            "Label": f"TOTE-{n:06d}",
            "InductPoint": "INDUCT-1", "Destination": f"CHUTE-{n % 24:02d}"}


def _vendor_mapping() -> MappingConfig:
    doc = tomllib.loads((ROOT / "docs/examples/mapping-vendor-sorter.toml").read_text())
    return MappingConfig.model_validate(doc["devices"][0]["mapping"])


def _plc_mapping() -> MappingConfig:
    doc = tomllib.loads((ROOT / "docs/examples/mapping-conveyor-plc.toml").read_text())
    return MappingConfig.model_validate(doc["devices"][0]["mapping"])


@dataclass
class _Variant:
    name: str
    run: Callable[[], int]  # returns events made
    samples: list[float]


def _paired(variants: list[_Variant], rounds: int) -> dict[str, float]:
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            t0 = time.process_time()
            made = v.run()
            v.samples.append((time.process_time() - t0) * 1e6 / made)
    return {v.name: statistics.median(v.samples) for v in variants}


def cpu_per_event(events: int = 20_000, rounds: int = 7) -> dict[str, float]:
    """CPU µs per OPC UA event and per Modbus poll event, built-in vs preset vs mapped."""
    sim = [_sim_fields(n) for n in range(events)]
    vendor = [_vendor_fields(n) for n in range(events)]
    preset, mapped = load_preset("sorter"), _vendor_mapping()
    # The driver selects only the fields a mapping reads (its event filter): so here.
    keep = preset.event_fields("divert_confirm") or frozenset()
    mapped_sim = [{k: v for k, v in f.items() if k in keep} for f in sim]
    keep = mapped.event_fields("divert") or frozenset()
    vendor = [{k: v for k, v in f.items() if k in keep} for f in vendor]

    def built_in() -> int:
        rec = SorterRecognizer(site=SITE, device=DEV, induct="INDUCT-1")
        n = 0
        for f in sim:
            n += len(rec.feed(divert_signal(DEV, f, 1.8e9)))
        return n

    def with_preset() -> int:
        rec = MappingRecognizer(SITE, DEV, preset, params={"induct": "INDUCT-1"})
        n = 0
        for f in mapped_sim:
            n += len(rec.feed(event_signal(DEV, "divert_confirm", f, 1.8e9, {})))
        return n

    def with_mapping() -> int:
        rec = MappingRecognizer(SITE, DEV, mapped)
        n = 0
        for f in vendor:
            n += len(rec.feed(event_signal(DEV, "divert", f, 1.8e9, {})))
        return n

    opc = _paired([_Variant("built_in", built_in, []), _Variant("preset", with_preset, []),
                   _Variant("mapped", with_mapping, [])], rounds)

    plc = _plc_mapping()
    polls = events // 4

    def modbus() -> int:
        rec = MappingRecognizer(SITE, "plc-7", plc)
        made = 0
        for n in range(polls):
            t = 1.8e9 + n * 0.2
            sigs = [Signal("plc-7", "items", n, t), Signal("plc-7", "trk_seq", n + 1, t),
                    Signal("plc-7", "trk_tote", f"TOTE-{n:05d}", t),
                    Signal("plc-7", "trk_from", 1, t), Signal("plc-7", "trk_to", 5 + n % 2, t),
                    Signal("plc-7", "motor_temp", 70.0 + (n % 30), t),
                    Signal("plc-7", "fault", n % 50 == 0, t)]
            if n == 0:
                sigs.append(Signal("plc-7", "boot", 3, t))
            made += len(rec.feed_poll(sigs, t))
        return made

    mb = _paired([_Variant("modbus", modbus, [])], rounds)
    return {
        "mapping_cpu_us_per_event_opcua_built_in": round(opc["built_in"], 2),
        "mapping_cpu_us_per_event_opcua_preset": round(opc["preset"], 2),
        "mapping_cpu_us_per_event_opcua_mapped": round(opc["mapped"], 2),
        "mapping_cpu_us_per_event_modbus_mapped": round(mb["modbus"], 2),
        "mapping_overhead_pct": round(100 * (opc["mapped"] / opc["preset"] - 1), 1),
        "mapping_vs_built_in_pct": round(100 * (opc["mapped"] / opc["built_in"] - 1), 1),
    }


# -- through the real gateway ----------------------------------------------------------------

_SIM_MAPPING: dict[str, Any] = {
    # The simulator's divert confirms written as a vendor mapping would be (not the preset).
    "ids": ["TrackingId", "ConfirmSeq"],
    "events": [
        {"on": "divert", "when": {"field": "Result", "in": ["diverted"]}, "type": "move",
         "key": "vd:{TrackingId}:{ConfirmSeq}", "correlation": "container:{$data.container}",
         "data": {"container": {"field": "Barcode", "type": "string"},
                  "from": {"field": "Induct", "type": "string"},
                  "to": {"field": "Chute", "type": "string"},
                  "tracking_id": {"field": "TrackingId", "type": "string", "required": True}}},
        {"on": "divert", "type": "exception", "key": "vd:{TrackingId}:{ConfirmSeq}",
         "data": {"reason": {"field": "Result", "map": {
             "no-read": "no_read", "no-destination": "no_destination",
             "chute-full": "chute_full", "recirculated": "recirculated", "lost": "lost"}},
             "tracking_id": {"field": "TrackingId", "type": "string", "required": True}}},
    ],
}


def _opcua_run(workdir: Path, mapped: bool, rate: float, seconds: float,
               warmup: float) -> tuple[float, float]:
    """(events stored per s, gateway CPU µs per event) for one sorter at ``rate`` items/s."""
    sorter = SorterProcess(workdir / "sorter", rate=rate, state=False)
    device: dict[str, Any] = {
        "id": DEV, "driver": "opcua", "endpoint": sorter.endpoint, "role": "sorter",
        "publishing_interval": "50ms", "request_timeout": "20s",
        "events": [{"kind": "event" if mapped else "divert_confirm", "point": "divert",
                    "source": "ns=2;s=Sorter", "type": "ns=2;s=DivertConfirmEventType",
                    "history": False}]}
    if mapped:
        device["mapping"] = _SIM_MAPPING
    else:
        del device["events"][0]["point"]
    cfg = GatewaySetup(workdir=workdir / "gw", broker_port=free_port(), wms_url=None,
                       scanners=0, synchronous="NORMAL", devices=[device])
    with sorter, GatewayProcess(cfg) as gw:
        sorter.start()
        gw.start(timeout=60)
        deadline = time.monotonic() + 60
        while gw.status()["committer"]["events"] == 0:  # the session is up and delivering
            if time.monotonic() > deadline:
                raise RuntimeError(f"no OPC UA events stored after 60 s:\n{gw.log_tail()}")
            time.sleep(0.2)
        time.sleep(warmup)
        e0, c0, t0 = gw.status()["committer"]["events"], gw.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        e1, c1, t1 = gw.status()["committer"]["events"], gw.cpu_seconds(), time.monotonic()
        errors = gw.status()["devices"][DEV]["ingest_errors"]
        gw.stop()
    if errors:
        raise RuntimeError(f"ingest errors in the OPC UA mapping run: {errors}")
    made = max(1, e1 - e0)
    return made / (t1 - t0), (c1 - c0) * 1e6 / made


def measure(workdir: Path, *, rounds: int = 3, opcua_rate: float = 2500.0,
            seconds: float = 8.0, warmup: float = 3.0, modbus: bool = True,
            **_: Any) -> dict[str, float | int]:
    """Every figure of the module doc."""
    figures: dict[str, float | int] = dict(cpu_per_event())
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for r in range(rounds):
        for mapped in ((False, True) if r % 2 == 0 else (True, False)):
            runs[mapped].append(_opcua_run(workdir / f"opcua-{r}-{int(mapped)}", mapped,
                                           opcua_rate, seconds, warmup))
    for mapped, name in ((False, "built_in"), (True, "mapped")):
        rate = statistics.median(x[0] for x in runs[mapped])
        cpu = statistics.median(x[1] for x in runs[mapped])
        key = "mapped_opcua_events_per_s" if mapped else "opcua_events_per_s_built_in"
        figures[key] = round(rate)
        figures[f"opcua_gateway_cpu_us_per_event_{name}"] = round(cpu, 1)
    if modbus:
        from bench import modbus as mb

        plc = _conveyor_sim_mapping()
        pairs: dict[bool, list[dict[str, float | int]]] = {False: [], True: []}
        for r in range(2):
            for mapped in ((False, True) if r % 2 == 0 else (True, False)):
                pairs[mapped].append(mb.measure(
                    workdir / f"modbus-{r}-{int(mapped)}", seconds=seconds,
                    device_extra={"mapping": plc} if mapped else None))

        def med(mapped: bool, key: str) -> float:
            return statistics.median(float(x[key]) for x in pairs[mapped])

        figures["modbus_points_per_s_built_in"] = round(med(False, "modbus_points_per_s"))
        figures["mapped_modbus_points_per_s"] = round(med(True, "modbus_points_per_s"))
        figures["modbus_gateway_cpu_pct_built_in"] = round(med(False, "modbus_gateway_cpu_pct"), 1)
        figures["mapped_modbus_gateway_cpu_pct"] = round(med(True, "modbus_gateway_cpu_pct"), 1)
        figures["mapped_modbus_events_per_s"] = round(med(True, "modbus_events_per_s"), 1)
    return figures


def _conveyor_sim_mapping() -> dict[str, Any]:
    """The project's conveyor simulator written as a generic PLC mapping (not the preset)."""
    return {
        "ids": ["boot"],
        "triggers": [
            {"kind": "tracking", "seq": "tracking[{i}].seq", "slots": 12, "type": "move",
             "key": "mtrk:{boot}:{$tracking_seq}",
             "data": {"container": {"field": "tracking[{i}].tote", "type": "string",
                                    "empty_is_missing": True},
                      "from": "tracking[{i}].from", "to": "tracking[{i}].to",
                      "seq": "$tracking_seq"}},
            {"kind": "counter", "point": "good_count", "type": "telemetry",
             "key": "good:{boot}:{$count}", "data": {"count": "$count"}},
            {"kind": "edge", "point": "jam", "edge": "both", "type": "exception",
             "key": "jam:{boot}:{fault_count}:{$edge}",
             "data": {"reason": {"field": "$edge",
                                 "map": {"rising": "jam", "falling": "jam_cleared"}},
                      "zone": "jam_zone"}},
            {"kind": "threshold", "point": "belt_temperature", "above": 60.0,
             "hysteresis": 2.0, "type": "exception", "key": "hot:{boot}:{$state}@{$time_ms}",
             "data": {"reason": {"field": "$state",
                                 "map": {"raised": "overheat", "cleared": "overheat_cleared"}}}},
        ],
        "telemetry": [{"point": "speed", "on": "change", "deadband": 0.05}],
    }


if __name__ == "__main__":
    import json
    import tempfile

    print(json.dumps(measure(Path(tempfile.mkdtemp(prefix="bench-mapping-")))))
