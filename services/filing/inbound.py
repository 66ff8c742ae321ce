"""filing.inbound: filings, changes and cancellations published by provincial platforms.

Same handlers as the REST API; the sender (`ce_source` = `/province/<admdvs>`) must be the
person's insured province. Refused records go to filing.inbound.dlq with their reason and a
`RecordRejected` on filing.rejections; replays change nothing (inbox by ce_id).
"""

from __future__ import annotations

import asyncio

from schemas.events import CancelFiling, ChangeFiling, FileTreatment
from services.bus.db import transaction
from services.bus.envelope import Incoming, now_ms
from services.bus.inbox import InboxRecord
from services.bus.rejections import source_province
from services.bus.worker import PermanentError
from services.filing.domain import FilingRefusedError
from services.filing.handlers import (
    FilingContext,
    UnknownFilingError,
    cancel_in,
    change_in,
    file_in,
)

CONSUMER = "filing.inbound"


async def handle_batch(ctx: FilingContext, msgs: list[Incoming]) -> list[BaseException | None]:
    results = await asyncio.to_thread(_apply_batch, ctx, msgs)
    ctx.relay.notify()
    return results


def _apply_batch(ctx: FilingContext, msgs: list[Incoming]) -> list[BaseException | None]:
    out: list[BaseException | None] = []
    with transaction(ctx.engine) as s:
        for m in msgs:
            if s.get(InboxRecord, (CONSUMER, m.ce_id)) is not None:
                out.append(None)
                continue
            province = source_province(m.headers.get("ce_source"))
            try:
                if province is None:
                    raise FilingRefusedError(f"ce_source {m.headers.get('ce_source')!r} 不是省级平台：应为 "
                                             "/province/<省代码>", "UNKNOWN_SENDER")
                ev = m.event
                if isinstance(ev, FileTreatment):
                    file_in(ctx, s, ev, province)
                elif isinstance(ev, ChangeFiling):
                    change_in(ctx, s, ev, province)
                elif isinstance(ev, CancelFiling):
                    cancel_in(ctx, s, ev, province)
            except (FilingRefusedError, UnknownFilingError) as exc:
                out.append(PermanentError(str(exc), getattr(exc, "code", "REFUSED")))
                continue
            s.add(InboxRecord(consumer=CONSUMER, msg_id=m.ce_id, processed_ms=now_ms()))
            out.append(None)
    return out
