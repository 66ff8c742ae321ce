"""A hop down: its claims retry and complete once, other regions keep flowing, deadlines hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlmodel import Session, select

from schemas.common import new_msgid
from services.bus.faults import Fault
from services.settle.settings import SettleSettings
from services.settle.store import LedgerEntry
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import Stack, start_stack
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(broker: BrokerUnderTest, engine_factory) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    bus = broker.settings(retry_attempts=100, retry_backoff_ms=100, retry_backoff_max_ms=300)
    s = await start_stack(broker.bootstrap, engine_factory, bus, SettleSettings(deadline_ms=4000))
    try:
        yield s
    finally:
        await s.stop()


def ledger_count(stack: Stack, msgid: str) -> int:
    with Session(stack.settle.engine) as s:
        return len(s.exec(select(LedgerEntry).where(LedgerEntry.msgid == msgid)).all())


async def test_insured_city_down_for_a_while(stack: Stack) -> None:
    nanchang = await stack.person("360100")
    await stack.file(nanchang, "440100")
    hangzhou = await stack.person("330100")
    await stack.file(hangzhou, "440100")
    ops = stack.operator("settle")
    r = await ops.put("/ops/faults", json={"level": "city", "region": "360100", "down": True})
    assert r.status_code == 200 and r.json()[0]["down"] is True

    blocked = asyncio.create_task(stack.settle_claim(nanchang, "H44010400001", "440100", "360100"))
    await wait_until(lambda: stack.settle.worker.stats["retried"] >= 2, what="the 360100 claim to be retrying")
    other = await stack.settle_claim(hangzhou, "H44010400001", "440100", "330100")
    assert other["infcode"] == 0  # another insured city keeps flowing meanwhile
    assert not blocked.done()

    await ops.put("/ops/faults", json={"level": "city", "region": "360100"})  # back up
    assert (await ops.get("/ops/faults")).json() == []
    ans = await blocked
    assert ans["infcode"] == 0, ans
    compute = next(h for h in ans["output"]["hop_trace"] if h["action"] == "compute")
    assert compute["attempt"] >= 3  # it got through on a retry
    assert ledger_count(stack, ans["msgid"]) == 1  # and was booked once


async def test_a_claim_past_its_deadline_gets_a_timeout_and_no_ledger_entry(stack: Stack) -> None:
    nanchang = await stack.person("360100")
    await stack.file(nanchang, "440100")
    stack.settle.ctx.faults.set(Fault(level="city", region="360100", down=True))
    ans = await stack.settle_claim(nanchang, "H44010400001", "440100", "360100")
    assert ans["infcode"] == -1
    assert "超时" in ans["err_msg"] or "DEADLINE" in str(ans["output"]), ans
    stack.settle.ctx.faults.clear()
    status = await wait_until(lambda: _final_status(stack, ans["msgid"]), what="the claim to be closed")
    assert status == "failed"
    assert ledger_count(stack, ans["msgid"]) == 0


async def _final_status(stack: Stack, msgid: str) -> str | None:
    r = (await stack.http["settle"].get(f"/claims/{msgid}")).json()
    return None if r["status"] == "pending" else r["status"]  # type: ignore[no-any-return]


async def test_a_hop_still_down_after_its_retries_answers_the_hospital(broker: BrokerUnderTest, engine_factory) -> None:  # type: ignore[no-untyped-def]
    bus = broker.settings(retry_attempts=3, retry_backoff_ms=50, retry_backoff_max_ms=100)
    stack = await start_stack(broker.bootstrap, engine_factory, bus, SettleSettings(deadline_ms=20_000))
    try:
        psn = await stack.person("360100")
        await stack.file(psn, "440100")
        stack.settle.ctx.faults.set(Fault(level="national", region="*", down=True))
        ans = await stack.settle_claim(psn, "H44010400001", "440100", "360100")
        assert ans["infcode"] == -1 and ans["output"]["err_code"] == "HOP_DOWN", ans
        assert "national" in ans["err_msg"] and "重试" in ans["err_msg"]
        # given up at a relay: the answer's trace is the body's and the relays' stamps from headers
        assert [(h["level"], h["action"]) for h in ans["output"]["hop_trace"]] == [("city", "split"),
                                                                                   ("province", "relay")]
        assert ledger_count(stack, ans["msgid"]) == 0
    finally:
        await stack.stop()


async def test_stopping_the_hop_worker_mid_flight_loses_nothing(broker: BrokerUnderTest, engine_factory) -> None:  # type: ignore[no-untyped-def]
    """Graceful stop: what was in hand finishes or stays uncommitted; a restart carries on, once."""
    stack = await start_stack(broker.bootstrap, engine_factory, broker.settings(), SettleSettings(deadline_ms=30_000))
    try:
        await _stop_and_restart_mid_flight(stack)
    finally:
        await stack.stop()


async def _stop_and_restart_mid_flight(stack: Stack) -> None:
    people = [await stack.person("360100") for _ in range(3)]
    for psn in people:
        await stack.file(psn, "440100")
    claims = [asyncio.create_task(stack.settle_claim(people[i % 3], "H44010400001", "440100", "360100"))
              for i in range(24)]
    worker = stack.settle.worker
    await wait_until(lambda: worker.stats["handled"] >= 20, what="claims in flight")
    await worker.stop()
    await worker.start()
    answers = await asyncio.gather(*claims)
    assert [a["infcode"] for a in answers] == [0] * 24, [a.get("err_msg") for a in answers]
    assert all(ledger_count(stack, a["msgid"]) == 1 for a in answers)


async def test_a_result_unknown_at_the_desk_is_learnt_by_msgid_and_undone_by_2601(
        broker: BrokerUnderTest, engine_factory) -> None:  # type: ignore[no-untyped-def]
    """The way back is slow: the desk is told "result unknown" at the deadline, though the insured city
    settled. The hospital learns the truth by msgid, and 冲正 (2601) of that msgid undoes it."""
    stack = await start_stack(broker.bootstrap, engine_factory, broker.settings(),
                              SettleSettings(deadline_ms=3000, reply_grace_ms=200))
    try:
        psn = await stack.person("360100")
        await stack.file(psn, "440100")
        # the national hop is passed twice, out and back: the claim is computed before its
        # deadline and answered after it
        stack.settle.ctx.faults.set(Fault(level="national", region="360000", slow_ms=1800))
        ans = await stack.settle_claim(psn, "H44010400001", "440100", "360100")
        assert ans["infcode"] == -1 and "结果未知" in ans["err_msg"], ans
        stack.settle.ctx.faults.clear()
        claims = stack.http["settle"]

        async def settled() -> bool:
            return (await claims.get(f"/claims/{ans['msgid']}")).json()["status"] == "settled"

        await wait_until(settled, what="the claim to settle after its deadline")
        assert ledger_count(stack, ans["msgid"]) == 1
        undo = await claims.post("/fsi/callService", json={
            "infno": "2601", "msgid": new_msgid("H44010400001"), "mdtrtarea_admvs": "440100",
            "insuplc_admdvs": "360100", "fixmedins_code": "H44010400001",
            "input": {"data": {"psn_no": psn, "omsgid": ans["msgid"]}}})
        assert undo.json()["infcode"] == 0 and undo.json()["output"]["effect"] == "reversed", undo.text
        assert (await claims.get(f"/claims/{ans['msgid']}")).json()["status"] == "reversed"
    finally:
        await stack.stop()
