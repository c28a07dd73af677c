"""``try``'s observing pipeline over a mapped device: the mapping's events and dead letters."""

from __future__ import annotations

import json

from drivers.mqtt.config import MqttDevice
from drivers.mqtt.driver import decode_json_message
from gateway.commission.dryrun import DryRunHandoff, Observation, ObservingPipeline
from gateway.core.events import Event
from gateway.core.records import IngestDeadLetter
from gateway.ingest import DriverIngest

T0 = 1_795_428_902.0
MAPPING = {"ids": ["seq"], "events": [{
    "on": "message", "type": "pick", "key": "p:{seq}",
    "data": {"sku": {"field": "item.sku", "type": "string", "required": True},
             "quantity": {"field": "item.qty", "type": "int"}}}]}


def test_dry_run_of_a_mapped_device_shows_its_events_and_why_others_are_dead_letters(
) -> None:
    seen: list[Observation] = []
    dev = MqttDevice.model_validate({"id": "pick-1", "driver": "mqtt", "broker": "site",
                                     "topic": "t/pick", "mapping": MAPPING})
    ingest = DriverIngest("S", [dev], DryRunHandoff(seen.append), "mqtt",
                          pipeline=ObservingPipeline)
    pipe = ingest.device("pick-1")
    for n, doc in enumerate([{"seq": 1, "item": {"sku": "A", "qty": "3"}},
                             {"seq": 2, "item": {"qty": 1}}]):
        payload = json.dumps(doc).encode()
        pipe.accept(decode_json_message(payload, "pick-1", "t/pick", T0 + n, 4096),
                    (payload, {"topic": "t/pick"}), None)
    records = [r for o in seen for r in o.records]
    assert [type(r) for r in records] == [Event, IngestDeadLetter]
    first = records[0]
    assert isinstance(first, Event) and first.to_dict()["data"] == {"sku": "A", "quantity": 3}
    dead = records[1]
    assert isinstance(dead, IngestDeadLetter)
    assert dead.reason == "missing_field: field 'item.sku' is missing or empty"
    assert pipe.snapshot()["mapping"]["dead_letters"] == {"missing_field": 1}
    assert pipe.snapshot()["ingest_errors"] == {"missing_field": 1}
