"""filing.inbound: filings, changes and cancellations published by provincial platforms.

Same handlers as the REST API; the sender (`ce_source` = `/province/<admdvs>`) must be the
person's insured province. Refused records go to filing.inbound.dlq with their reason and a
`RecordRejected` on filing.rejections; replays change nothing (inbox by ce_id).

A filing for a person with no enrolment in this service's view is retried (the bus's retry
topic, backoff and budget) before it is refused: a province that publishes an enrolment and a
filing together has them on two topics, and the enrolment reaches this view through the enroll
service, so the filing may well arrive first.
"""

from __future__ import annotations

import asyncio
from functools import partial

from sqlmodel import Session

from schemas.events import CancelFiling, ChangeFiling, FileTreatment
from services.bus.envelope import Incoming
from services.bus.intake import apply_batch
from services.bus.rejections import source_province
from services.filing.domain import FilingRefusedError
from services.filing.handlers import (
    FilingContext,
    UnknownFilingError,
    cancel_in,
    change_in,
    file_in,
)

CONSUMER = "filing.inbound"
NOT_SEEN_YET = frozenset({"NOT_ENROLLED"})  # refusals the enrolment view may still catch up with


async def handle_batch(ctx: FilingContext, msgs: list[Incoming]) -> list[BaseException | None]:
    return await asyncio.to_thread(partial(apply_batch, retry_codes=NOT_SEEN_YET), ctx.engine, CONSUMER, msgs,
                                   partial(_dispatch, ctx), (FilingRefusedError, UnknownFilingError))


def _dispatch(ctx: FilingContext, s: Session, m: Incoming) -> None:
    province = source_province(m.headers.get("ce_source"))
    if province is None:
        raise FilingRefusedError(f"ce_source {m.headers.get('ce_source')!r} 不是省级平台：应为 /province/<省代码>",
                                 "UNKNOWN_SENDER")
    ev = m.event
    if isinstance(ev, FileTreatment):
        file_in(ctx, s, ev, province)
    elif isinstance(ev, ChangeFiling):
        change_in(ctx, s, ev, province)
    elif isinstance(ev, CancelFiling):
        cancel_in(ctx, s, ev, province)
