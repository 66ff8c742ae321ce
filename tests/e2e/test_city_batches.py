"""The city hops of one fetched batch: each message is answered for itself (services.bus.shared
has the shared transactions' own tests)."""

from __future__ import annotations

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


async def test_a_city_batch_answers_each_message_for_itself(stack: Stack) -> None:
    psn = await stack.person("360100")
    await stack.file(psn, "440100")
    good = at_the_insured_city(stack, psn)
    wrong = at_the_insured_city(stack, psn)
    wrong.event.pos = len(wrong.event.route)  # beyond the route: retrying cannot help
    errors = await handlers.city_hops(stack.settle.ctx, [wrong, good])
    assert isinstance(errors[0], PermanentError) and "beyond a route" in str(errors[0])
    assert errors[1] is None and len(ledger_rows(stack, good.event.claim.msgid)) == 1
