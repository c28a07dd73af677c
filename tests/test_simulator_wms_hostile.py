"""The WMS simulator's hostile mode, over loopback with a real aiohttp client."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from simulators.wms import (
    LANDING_PATH,
    MALFORMED_REJECTED_VARIANTS,
    FaultError,
    Faults,
    WmsSimulator,
    add_arguments,
    faults_from_args,
    validate_faults,
)

GiB = 1024**3


def batch(*ids: str) -> dict[str, Any]:
    return {"events": [{"event_id": i, "type": "scan", "data": {}} for i in ids]}


@pytest.fixture
async def sim() -> AsyncIterator[WmsSimulator]:
    async with WmsSimulator(keep_events=1000) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def set_faults(http: aiohttp.ClientSession, sim: WmsSimulator, **patch: Any) -> Any:
    async with http.post(sim.control_url + "/control/faults", json=patch) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def assert_nothing_accepted(sim: WmsSimulator, hostile: int) -> None:
    stats = sim.stats()
    assert stats["received"] == 0
    assert stats["unique"] == 0
    assert sim.accepted_ids() == set()
    assert stats["hostile_requests"] == hostile


# -- validation and CLI ----------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"hostile": "teapot"}, "hostile"),
        ({"hostile": 3}, "hostile"),
        ({"hostile_count": -2}, "hostile_count"),
        ({"hostile_count": True}, "hostile_count"),
        ({"hostile_body_bytes": -1}, "hostile_body_bytes"),
        ({"hostile_redirect_to": "elsewhere"}, "hostile_redirect_to"),
        ({"hostile_interval_ms": 0}, "hostile_interval_ms"),
    ],
)
def test_bad_hostile_settings_name_the_key(patch: dict[str, Any], key: str) -> None:
    with pytest.raises(FaultError) as err:
        validate_faults(patch)
    assert err.value.key == key
    assert key in str(err.value)


async def test_control_api_rejects_bad_hostile_and_applies_nothing(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    body = {"hostile": "garbage_2xx", "hostile_count": -5}
    async with http.post(sim.control_url + "/control/faults", json=body) as resp:
        assert resp.status == 400
        doc = await resp.json()
    assert doc["key"] == "hostile_count"
    assert sim.faults.hostile is None
    doc = await set_faults(http, sim, hostile="html_5xx", hostile_count=-1)
    assert doc["hostile"] == "html_5xx" and doc["hostile_count"] == -1


def test_cli_flags_set_hostile_faults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    faults = faults_from_args(parser.parse_args([
        "--hostile", "huge_body", "--hostile-body-bytes", "4096",
        "--hostile-redirect-to", "self", "--hostile-interval-ms", "5",
        "--hostile-variant", "id_object",
    ]))
    assert faults.hostile_variant == "id_object"
    assert faults.hostile == "huge_body"
    assert faults.hostile_count == -1, "from the command line a hostile WMS stays hostile"
    assert faults.hostile_body_bytes == 4096
    assert faults.hostile_redirect_to == "self"
    assert faults.hostile_interval_ms == 5.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--hostile", "teapot"])
    assert Faults().hostile_body_bytes == GiB


# -- the modes --------------------------------------------------------------------


async def test_garbage_2xx_then_normal_after_count(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, sim, hostile="garbage_2xx", hostile_count=2)
    for _ in range(2):
        async with http.post(sim.url, json=batch("a", "b")) as resp:
            assert resp.status == 200
            text = await resp.text()
            assert resp.content_type == "text/html"
        assert text.startswith("<!DOCTYPE html>")
        with pytest.raises(ValueError):
            json.loads(text)
    assert_nothing_accepted(sim, hostile=2)
    async with http.post(sim.url, json=batch("a", "b")) as resp:
        assert resp.status == 200
        assert (await resp.json())["accepted"] == 2
    stats = sim.stats()
    assert stats["unique"] == 2 and stats["received"] == 2
    assert stats["requests"] == 3 and stats["status_counts"] == {"200": 3}
    assert [r.get("hostile") for r in sim.requests] == ["garbage_2xx", "garbage_2xx", None]


async def test_malformed_rejected_cycles_through_variants(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, sim, hostile="malformed_rejected", hostile_count=-1)
    docs = []
    for _ in MALFORMED_REJECTED_VARIANTS[:3]:
        async with http.post(sim.url, json=batch("e1", "e2")) as resp:
            assert resp.status == 200
            docs.append(await resp.json())
    assert docs[0]["rejected"] == [{"event_id": ["x"], "reason": "bad"}]
    assert isinstance(docs[1]["rejected"][0]["event_id"], dict)
    assert docs[2]["rejected"] == "all of them"
    assert_nothing_accepted(sim, hostile=3)
    # The fourth is a real partial rejection whose reason is not a string:
    # true to what it says, the rest of the batch is accepted.
    async with http.post(sim.url, json=batch("e1", "e2", "e3")) as resp:
        doc = await resp.json()
    assert doc["rejected"] == [{"event_id": "e1", "reason": {"code": 17, "text": "tote blocked"}}]
    assert doc["accepted"] == 2
    assert sim.accepted_ids() == {"e2", "e3"}
    stats = sim.stats()
    assert stats["received"] == 3 and stats["rejected"] == 1 and stats["hostile_requests"] == 4
    assert [r["variant"] for r in sim.requests] == list(MALFORMED_REJECTED_VARIANTS)
    assert sim.faults.hostile_count == -1, "-1 stays until changed"


async def test_malformed_rejected_pinned_variant(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, sim, hostile="malformed_rejected", hostile_count=-1,
                     hostile_variant="rejected_not_list")
    for _ in range(3):
        async with http.post(sim.url, json=batch("e1")) as resp:
            assert (await resp.json())["rejected"] == "all of them"
    assert_nothing_accepted(sim, hostile=3)
    with pytest.raises(FaultError, match="hostile_variant"):
        validate_faults({"hostile_variant": "id_banana"})


async def test_redirect_302_to_landing_page_accepts_nothing(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, sim, hostile="redirect", hostile_count=-1)
    async with http.post(sim.url, json=batch("a"), allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    assert location == sim.control_url + LANDING_PATH
    async with http.get(location) as resp:
        assert resp.status == 200
        assert "WMS portal" in await resp.text()
    # The trap: a client following the 302 turns the POST into a GET and ends in a 200.
    async with http.post(sim.url, json=batch("a")) as resp:
        assert resp.status == 200
        assert len(resp.history) == 1
    assert_nothing_accepted(sim, hostile=2)
    assert sim.requests[0]["location"] == location


async def test_redirect_307_to_control_listener_really_accepts(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, sim, hostile="redirect_307", hostile_count=-1)
    async with http.post(sim.url, json=batch("a"), allow_redirects=False) as resp:
        assert resp.status == 307
        assert resp.headers["Location"] == sim.control_url + sim.path
    assert_nothing_accepted(sim, hostile=1)
    # Following it (same method and body) is delivery at the moved endpoint.
    async with http.post(sim.url, json=batch("a", "b")) as resp:
        assert resp.status == 200
        assert (await resp.json())["accepted"] == 2
    assert sim.accepted_ids() == {"a", "b"}
    assert sim.stats()["hostile_requests"] == 2
    assert sim.requests[-1]["listener"] == "control"


async def test_redirect_307_to_itself_loops(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, sim, hostile="redirect_307", hostile_count=-1,
                     hostile_redirect_to="self")
    with pytest.raises(aiohttp.TooManyRedirects):
        async with http.post(sim.url, json=batch("a"), max_redirects=3):
            pass
    assert sim.requests[0]["location"] == sim.url
    # aiohttp gives up after max_redirects requests; each one got the 307.
    assert_nothing_accepted(sim, hostile=3)
    assert sim.stats()["status_counts"] == {"307": 3}


async def test_huge_body_read_to_the_end_is_valid_json(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    size = 3 * 1024 * 1024 + 7
    await set_faults(http, sim, hostile="huge_body", hostile_body_bytes=size)
    async with http.post(sim.url, json=batch("a")) as resp:
        assert resp.status == 200
        assert resp.content_length == size
        body = await resp.read()
    assert len(body) == size
    assert json.loads(body)["accepted"] == 0
    assert_nothing_accepted(sim, hostile=1)


async def test_huge_body_default_gib_abandoned_then_normal(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, sim, hostile="huge_body")
    async with http.post(sim.url, json=batch("a")) as resp:
        assert resp.status == 200
        assert resp.content_length == GiB
        first = await resp.content.read(1024 * 1024)
        assert first.startswith(b'{"accepted":0')
        resp.close()  # give up: the server must stop generating
    assert_nothing_accepted(sim, hostile=1)
    async with http.post(sim.url, json=batch("a")) as resp:
        assert (await resp.json())["accepted"] == 1
    assert sim.accepted_ids() == {"a"}


async def test_endless_body_never_ends(sim: WmsSimulator, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sim, hostile="endless_body", hostile_interval_ms=10)
    timeout = aiohttp.ClientTimeout(total=0.5)
    received = 0
    with pytest.raises(TimeoutError):
        async with http.post(sim.url, json=batch("a"), timeout=timeout) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += len(chunk)
    assert received > 0
    assert_nothing_accepted(sim, hostile=1)


async def test_html_5xx(sim: WmsSimulator, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sim, hostile="html_5xx", hostile_count=1)
    async with http.post(sim.url, json=batch("a")) as resp:
        assert resp.status == 502
        assert "Bad Gateway" in await resp.text()
    async with http.post(sim.url, json=batch("a")) as resp:
        assert resp.status == 200
    stats = sim.stats()
    assert stats["status_counts"] == {"200": 1, "502": 1}
    assert stats["unique"] == 1 and stats["hostile_requests"] == 1


async def test_wrong_token_still_gets_401_and_keeps_the_count(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, sim, hostile="garbage_2xx", hostile_count=1, token="t0k")
    async with http.post(sim.url, json=batch("a")) as resp:
        assert resp.status == 401
    assert sim.faults.hostile_count == 1
    async with http.post(sim.url, json=batch("a"), headers={"Authorization": "Bearer t0k"}) as r:
        assert r.status == 200 and r.content_type == "text/html"
    assert sim.faults.hostile_count == 0


async def test_reset_clears_hostile_counters(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, sim, hostile="html_5xx", hostile_count=-1)
    async with http.post(sim.url, json=batch("a")) as resp:
        assert resp.status == 502
    await sim.reset()
    assert sim.faults.hostile is None
    assert sim.stats()["hostile_requests"] == 0
