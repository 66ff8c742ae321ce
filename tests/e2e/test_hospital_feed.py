"""Hospitals follow their own results: the example adapter (confluent-kafka only) on
settle.hospital, and the Server-Sent Events stream of the settle API with resume."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest

from schemas.common import result_ce_id
from schemas.regions import designated_hospitals
from services.settle.auth import hospital_headers
from services.settle.stream import partition_of, results
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import Stack
from tests.helpers import headers_of, read_until

ROOT = Path(__file__).resolve().parents[2]
GZ, GZ2 = "H44010400001", "H44010600002"
pytestmark = pytest.mark.one_database


async def test_the_example_adapter_follows_only_its_hospital(stack: Stack, broker: BrokerUnderTest) -> None:
    pytest.importorskip("confluent_kafka")
    sys.path.insert(0, str(ROOT / "deploy" / "examples"))
    try:
        from hospital_adapter import follow  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    psn = await stack.person()
    await stack.file(psn, "440100")
    mine = await stack.settle_claim(psn, GZ, "440100", "360100")
    theirs = await stack.settle_claim(psn, GZ2, "440100", "360100")
    got = await asyncio.to_thread(lambda: list(follow(broker.bootstrap, GZ, group=broker.topic("t-adapter"), from_start=True, idle_s=3,
                                                            topic=broker.topic("settle.hospital"))))
    assert [r["msgid"] for r in got] == [mine["msgid"]]
    assert got[0]["outcome"]["infcode"] == 0 and got[0]["_headers"]["ce_type"] == "yibao.settle.SettlementResult.v1"
    assert theirs["msgid"] not in {r["msgid"] for r in got}


async def test_the_results_stream_resumes_after_the_last_event(stack: Stack) -> None:
    psn = await stack.person()
    await stack.file(psn, "440100")
    bus = stack.settle.runtime.bus

    async def next_event(stream: object) -> tuple[str, dict[str, object]]:
        async for chunk in stream:  # type: ignore[attr-defined]
            if chunk.startswith(b"id: "):
                head, data = chunk.decode().split("\ndata: ")
                return head.split("\n")[0][4:], json.loads(data)
        raise AssertionError("stream ended")

    stream = results(bus, GZ, None)
    assert (await anext(stream)).startswith(b": results of")  # subscribed: from now on
    first = await stack.settle_claim(psn, GZ, "440100", "360100")
    event_id, data = await asyncio.wait_for(next_event(stream), 20)
    assert data["msgid"] == first["msgid"] and event_id.startswith(f"{await partition_of(bus, GZ)}:")
    await stream.aclose()
    second = await stack.settle_claim(psn, GZ, "440100", "360100")  # while disconnected
    resumed = results(bus, GZ, event_id)
    await anext(resumed)
    _, data = await asyncio.wait_for(next_event(resumed), 20)
    assert data["msgid"] == second["msgid"]  # nothing missed, nothing repeated
    await resumed.aclose()


async def test_a_result_published_twice_reaches_the_hospital_once(stack: Stack, broker: BrokerUnderTest) -> None:
    """A result re-published (the outbox after a crash) carries the same ce_id: the stream sends it once."""
    psn = await stack.person()
    await stack.file(psn, "440100")
    bus = stack.settle.runtime.bus
    stream = results(bus, GZ, None)
    await anext(stream)
    first = await stack.settle_claim(psn, GZ, "440100", "360100")
    (copy,) = [r for r in await read_until(broker, "settle.hospital", lambda rs: bool(rs), what="the result")
               if json.loads(r.value)["msgid"] == first["msgid"]]
    assert headers_of(copy)["ce_id"] == result_ce_id(first["msgid"])
    await (await bus.send_raw("settle.hospital", GZ, copy.value, list(copy.headers)))  # the repeat
    second = await stack.settle_claim(psn, GZ, "440100", "360100")
    got: list[str] = []
    async for chunk in stream:
        if chunk.startswith(b"id: "):
            got.append(json.loads(chunk.split(b"\ndata: ")[1])["msgid"])
            if got[-1] == second["msgid"]:
                break
    await stream.aclose()
    assert got == [first["msgid"], second["msgid"]]


async def test_the_stream_is_for_the_hospital_itself(stack: Stack) -> None:
    bare = httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.settle.app), base_url="http://settle")
    try:
        r = await bare.get(f"/hospitals/{GZ}/results")
        assert r.status_code == 401
        r = await bare.get(f"/hospitals/{GZ}/results", headers=hospital_headers(GZ2, designated_hospitals()[GZ2]["key"]))
        assert r.status_code == 403
        r = await bare.get(f"/hospitals/{GZ}/results", headers=hospital_headers(GZ, designated_hospitals()[GZ]["key"])
                           | {"last-event-id": "9:12"})
        assert r.status_code == 400 and "Last-Event-ID" in r.json()["error"]
    finally:
        await bare.aclose()
