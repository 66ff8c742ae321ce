"""The city hops of one fetched batch share transactions: one failing claim costs the others nothing."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from schemas.events import HopAction, SettlementHop
from services.bus.envelope import decode, encode, make_headers, now_ms
from services.bus.worker import PermanentError
from services.settle import handlers
from services.settle.domain import plan_route, split_line
from services.settle.infnos import Reading, claim_of
from services.settle.interface import FsiRequest
from tests.e2e.stack import GZ_HOSPITAL, Stack, claim_body, ledger_rows

pytestmark = pytest.mark.integration


def at_the_insured_city(stack: Stack, psn: str) -> Any:
    """A claim as it reaches the insured city's compute step (split at the treatment city)."""
    claim = claim_of(FsiRequest(**claim_body(psn, GZ_HOSPITAL, "440100", "360100")), now_ms() + 60_000,
                     Reading(stack.settle.engine, stack.settle.common.cert_digest_key))
    route = plan_route("440100", "360100")
    pos = next(i for i, step in enumerate(route) if step.action is HopAction.COMPUTE)
    ref = stack.settle.ctx.ref
    hop = SettlementHop(claim=claim, route=route, pos=pos, hosp_lv="3",
                        split=[split_line(line, ref.catalogue.get(line.med_list_codg), "3", claim.med_type)
                               for line in claim.fees])
    return decode("settle.city", b"360100", encode(hop), make_headers(hop, "/test", correlation_id=claim.msgid))


async def test_a_claim_that_fails_inside_a_shared_transaction_is_redone_alone(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    people = [await stack.person("360100") for _ in range(4)]
    for p in people:
        await stack.file(p, "440100")
    msgs = [at_the_insured_city(stack, p) for p in people]
    bad = msgs[2].event.claim.msgid
    decide = handlers._decide

    def failing(ctx: Any, conn: Any, hop: SettlementHop, enrolments: Any) -> Any:
        if hop.claim.msgid == bad:
            raise RuntimeError("the ledger's disk is full")
        return decide(ctx, conn, hop, enrolments)

    monkeypatch.setattr(handlers, "_decide", failing)
    monkeypatch.setattr(handlers, "YIELD_AFTER_S", 60.0)  # all four in one transaction, whatever the machine
    with caplog.at_level(logging.WARNING, "yibao.settle"):
        errors = await handlers.city_hops(stack.settle.ctx, msgs)
    assert "a shared transaction of 3 claims failed" in caplog.text  # it failed at the third
    assert [type(e).__name__ if e else None for e in errors] == [None, None, "RuntimeError", None]
    assert [len(ledger_rows(stack, m.event.claim.msgid)) for m in msgs] == [1, 1, 0, 1]

    # the worker retries it, the others come again (a redelivery): each is settled once
    monkeypatch.setattr(handlers, "_decide", decide)
    again = [decode(m.topic, b"360100", m.value, m.raw_headers) for m in msgs]  # the same messages again
    assert await handlers.city_hops(stack.settle.ctx, again) == [None] * 4
    assert [len(ledger_rows(stack, m.event.claim.msgid)) for m in msgs] == [1, 1, 1, 1]


async def test_a_city_batch_answers_each_message_for_itself(stack: Stack) -> None:
    psn = await stack.person("360100")
    await stack.file(psn, "440100")
    good = at_the_insured_city(stack, psn)
    wrong = at_the_insured_city(stack, psn)
    wrong.event.pos = len(wrong.event.route)  # beyond the route: retrying cannot help
    errors = await handlers.city_hops(stack.settle.ctx, [wrong, good])
    assert isinstance(errors[0], PermanentError) and "beyond a route" in str(errors[0])
    assert errors[1] is None and len(ledger_rows(stack, good.event.claim.msgid)) == 1
