"""Operators: dead letters counted and redriven, topics and lag, every action audited."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from services.bus.deadletters import AUDIT_TOPIC
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import DEFAULT_LINES, FEMALE_ONLY_LINE, GZ_HOSPITAL, Stack, ledger_rows
from tests.helpers import read_topic, wait_until

CLAIMS = 100


async def redrive(stack: Stack, topic: str, **body: object) -> list[dict[str, int]]:
    r = await stack.operator("settle").post(f"/ops/dlq/{topic}/redrive", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line]


@pytest.mark.one_database  # the redrive is Kafka's; the ledger's databases are both covered elsewhere
async def test_claims_dead_lettered_while_the_insured_city_was_down_are_redriven_and_settle_once(
        stack: Stack, broker: BrokerUnderTest) -> None:
    people = [await stack.person("360100") for _ in range(4)]
    for psn in people:
        await stack.file(psn, "440100")
    ops = stack.operator("settle")
    await ops.put("/ops/faults", json={"level": "city", "region": "360100", "down": True})
    gate = asyncio.Semaphore(20)

    async def claim(i: int) -> dict[str, object]:
        async with gate:
            return await stack.settle_claim(people[i % len(people)], GZ_HOSPITAL, "440100", "360100")

    answers = await asyncio.gather(*(claim(i) for i in range(CLAIMS)))
    assert all(a["infcode"] == -1 and a["output"]["err_code"] == "HOP_DOWN" for a in answers), answers[0]
    msgids = [str(a["msgid"]) for a in answers]

    async def all_dead() -> list[dict[str, object]] | None:
        rows = (await ops.get("/ops/dlq")).json()
        return rows if sum(int(r["count"]) for r in rows if r["dlq_topic"] == "settle.city.dlq") == CLAIMS else None
    summary = await wait_until(all_dead, what=f"{CLAIMS} dead letters on settle.city.dlq")
    (row,) = [r for r in summary if r["dlq_topic"] == "settle.city.dlq"]
    assert row["original_topic"] == "settle.city" and "still failing" in row["reason"]
    letters = (await ops.get("/ops/dlq/settle.city.dlq", params={"limit": 1000})).json()
    assert sorted(d["msgid"] for d in letters) == sorted(msgids) and all(d["attempts"] >= 2 for d in letters)

    # the city back; the redrive moves them to where they failed and they settle, each once
    await ops.delete("/ops/faults")
    lines = await redrive(stack, "settle.city.dlq", reason="still failing")
    assert lines[-1] | {"done": True} == lines[-1] and lines[-1]["redriven"] == CLAIMS, lines
    assert len(lines) >= 3  # progress on the way (every 50)

    async def all_settled() -> bool:
        rows = [(await stack.http["settle"].get(f"/claims/{m}")).json()["status"] for m in msgids]
        return all(s == "settled" for s in rows)
    await wait_until(all_settled, what="every redriven claim to settle", timeout=120)
    assert all(len(ledger_rows(stack, m)) == 1 for m in msgids)

    (after,) = [r for r in (await ops.get("/ops/dlq")).json() if r["dlq_topic"] == "settle.city.dlq"]
    assert (after["count"], after["waiting"]) == (CLAIMS, 0)  # kept for the record, none waiting
    again = await redrive(stack, "settle.city.dlq")
    assert (again[-1]["redriven"], again[-1]["skipped_done"]) == (0, CLAIMS)  # never twice
    audit = await read_topic(broker, AUDIT_TOPIC, 1, timeout=10)
    action = json.loads(audit[0].value)
    assert action["action"] == "dlq.redrive" and action["by"] == "test" and len(action["touched"]) == 50

    groups = (await ops.get("/ops/groups")).json()
    assert any(g["group"].startswith("settle") for g in groups)
    topics = {t["topic"]: t for t in (await ops.get("/ops/topics")).json()}
    assert topics["settle.city.dlq"]["records"] == CLAIMS

    metrics = (await stack.http["settle"].get("/metrics")).text  # Prometheus, no token needed
    assert re.search(r'yibao_handle_seconds_bucket{group="[^"]+",le="0.005",topic="settle.city"}', metrics), \
        [ln for ln in metrics.splitlines() if "handle_seconds_bucket" in ln][:5]
    assert 'outcome="dead_lettered",topic="settle.city"' in metrics and "yibao_http_seconds" in metrics


@pytest.mark.one_database
async def test_a_redriven_letter_that_fails_again_returns_with_its_history(stack: Stack) -> None:
    psn = await stack.person("360100")
    await stack.file(psn, "440100")
    ops = stack.operator("settle")
    await ops.put("/ops/faults", json={"level": "city", "region": "360100", "down": True})
    ans = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100")
    msgid = ans["msgid"]

    async def letters() -> list[dict[str, object]] | None:
        rows = (await ops.get("/ops/dlq/settle.city.dlq", params={"msgid": msgid})).json()
        return rows or None
    first = await wait_until(letters, what="the dead letter")
    lines = await redrive(stack, "settle.city.dlq", msgid=msgid)  # the city is still down
    assert lines[-1]["redriven"] == 1

    async def back() -> list[dict[str, object]] | None:
        rows = (await ops.get("/ops/dlq/settle.city.dlq", params={"msgid": msgid})).json()
        return rows if len(rows) == 2 else None
    both = await wait_until(back, what="the letter back on the DLQ")
    assert both[0]["place"] == first[0]["place"] and both[1]["redrives"] == 1
    r = await ops.get("/ops/dlq/nope.dlq")
    assert r.status_code == 404 and "settle.city.dlq" in r.json()["error"]
    r = await stack.as_("settle", "province", "360000").get("/ops/dlq")
    assert r.status_code == 403
    await ops.delete("/ops/faults")


async def test_replaying_settle_completed_by_time_is_harmless_and_a_claim_can_be_traced(stack: Stack) -> None:
    """A day of settle.completed replayed into itself: the copies carry replayed-from and the same
    ce_id; no ledger entry, advance-fund use or alert changes."""
    since = f"{datetime.now() - timedelta(minutes=5):%Y-%m-%dT%H:%M:%S}"
    psn = await stack.person("360100")  # a man: the female-only line raises an alert
    await stack.file(psn, "440100")
    msgids = [str((await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100",
                                            lines=[*DEFAULT_LINES, FEMALE_ONLY_LINE]))["msgid"]) for _ in range(3)]
    supervisor = stack.as_("monitor", "supervisor", "440000")

    async def alerts() -> int:
        return sum([len((await supervisor.get("/alerts", params={"msgid": m})).json()) for m in msgids])
    await wait_until(lambda: _at_least(alerts, 3), what="the three alerts")
    ops = stack.operator("settle")
    funds = (await ops.get("/clearing/advance-funds")).json()
    monitor = stack.services["monitor"].runtime.workers[0]
    handled = monitor.stats["handled"]

    r = await ops.post("/ops/topics/settle.completed/replay", json={"since": since}, timeout=60)
    last = json.loads(r.text.splitlines()[-1])
    assert r.status_code == 200 and last["done"] and last["copied"] >= 3, r.text
    await wait_until(lambda: monitor.stats["handled"] >= handled + last["copied"], what="the monitor to read the copies")
    assert await alerts() == 3 and (await ops.get("/clearing/advance-funds")).json() == funds
    assert all(len(ledger_rows(stack, m)) == 1 for m in msgids)

    seen = (await ops.get("/ops/topics/settle.completed/messages", params={"msgid": msgids[0]})).json()
    assert len(seen) == 2 and seen[0]["headers"]["ce_id"] == seen[1]["headers"]["ce_id"]
    assert seen[1]["headers"]["replayed-from"] == f"settle.completed/{seen[0]['partition']}/{seen[0]['offset']}"
    assert seen[0]["value"]["msgid"] == msgids[0]
    copies = (await ops.get("/ops/topics/settle.completed/messages",
                            params={"header": f"replayed-from={seen[1]['headers']['replayed-from']}"})).json()
    assert [c["offset"] for c in copies] == [seen[1]["offset"]]  # by any header
    bad = await ops.get("/ops/topics/settle.completed/messages", params={"since": "yesterday"})
    assert bad.status_code == 422 and "ISO" in bad.json()["error"]

    # a stopped group moved back to a time reads again from there; a running one is refused
    bus = stack.settle.runtime.bus
    reader = bus.consumer("settle.completed", group_id="ops-test-reader")
    await reader.start()
    await wait_until(lambda: _drained(reader), what="the reader to reach the end")
    await reader.commit()
    await reader.stop()
    moved = await ops.post("/ops/groups/ops-test-reader/reset", params={"to": since})
    assert moved.status_code == 200, moved.text
    assert {m["to"] for m in moved.json()} == {0}  # every partition back to its first record since then
    assert sum(m["from"] for m in moved.json()) >= 6  # it had read the 3 results and their 3 copies
    busy = await ops.post("/ops/groups/monitor/reset", params={"to": since})
    assert busy.status_code == 409 and "stop its consumers" in busy.json()["error"]

    t = (await ops.get(f"/ops/trace/{msgids[0]}")).json()
    assert t["status"] == "settled" and t["now"] == "answered: settled"
    assert {r["topic"] for r in t["records"]} >= {"settle.city", "settle.province", "settle.national"}
    hops = [r for r in t["records"] if not r["topic"].endswith((".retry", ".dlq"))]
    assert sorted(int(r["step"]) for r in hops) == list(range(len(hops)))  # each record's step of the route
    assert [h["action"] for h in t["hop_trace"]][0] == "split"


async def _at_least(probe: Callable[[], Awaitable[int]], n: int) -> bool:
    return await probe() >= n


async def _drained(consumer: Any) -> bool:
    await consumer.getmany(timeout_ms=200)
    parts = consumer.assignment()
    if not parts:
        return False
    ends = await consumer.end_offsets(list(parts))
    return all([await consumer.position(tp) >= ends[tp] for tp in parts])
