"""OpenTelemetry: every hop of a claim is a span of one trace, the one its traceparent names."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services import tracing
from tests.e2e.stack import GZ_HOSPITAL, Stack
from tests.helpers import wait_until

pytestmark = pytest.mark.one_database


async def test_every_hop_of_a_claim_is_a_span_of_the_claims_trace(stack: Stack) -> None:
    exporter = InMemorySpanExporter()
    tracing.configure("test", exporter)
    try:
        psn = await stack.person("360100")
        await stack.file(psn, "440100")
        ans = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100")
        assert ans["infcode"] == 0, ans

        def spans() -> list | None:  # type: ignore[type-arg]
            mine = [s for s in exporter.get_finished_spans() if s.attributes.get("yibao.msgid") == ans["msgid"]]
            return mine if len(mine) >= 9 else None  # nine hops, and the result's consumers
        mine = await wait_until(spans, what="a span per hop")
        topics = [s.attributes["messaging.destination.name"] for s in mine]
        assert topics.count("settle.city") >= 3 and topics.count("settle.province") == 4, topics
        assert topics.count("settle.national") == 2
        first = (await stack.operator("settle").get("/ops/topics/settle.city/messages",
                                                     params={"msgid": ans["msgid"]})).json()[0]
        trace_id = first["headers"]["traceparent"].split("-")[1]
        assert {f"{s.context.trace_id:032x}" for s in mine} == {trace_id}  # one trace: the claim's
    finally:
        tracing.reset()
