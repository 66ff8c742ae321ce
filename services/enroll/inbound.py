"""enroll.inbound: records published by provincial platforms, handled a fetched batch at a time.

Each record goes through the same handlers as the REST API. The sender is the CloudEvents
`ce_source` (`/province/<admdvs>`); a province may publish only for its own regions. Every check
that can refuse a record runs before anything is written, so a refused record leaves the batch's
transaction clean; it is dead-lettered with its reason and a `RecordRejected` goes to
enroll.rejections. Replays change nothing (inbox by ce_id).
"""

from __future__ import annotations

import asyncio

from sqlmodel import Session, col, select

from schemas.events import EnrolmentRecord, EnrolPerson, RegisterPerson, TransferEnrolment
from services.bus.db import transaction
from services.bus.envelope import Incoming, now_ms
from services.bus.inbox import InboxRecord
from services.bus.rejections import source_province
from services.bus.worker import PermanentError
from services.enroll.domain import EnrollRefusedError, InvalidCertnoError
from services.enroll.handlers import (
    EnrollContext,
    UnknownPersonError,
    _enrol,
    _find_or_register,
    apply_record_in,
    check_province,
    check_region,
    transfer_in,
)
from services.enroll.store import Person, prefetch

CONSUMER = "enroll.inbound"
REFUSALS = (EnrollRefusedError, InvalidCertnoError, UnknownPersonError)


async def handle_batch(ctx: EnrollContext, msgs: list[Incoming]) -> list[BaseException | None]:
    results = await asyncio.to_thread(_apply_batch, ctx, msgs)
    ctx.relay.notify()
    return results


def _apply_batch(ctx: EnrollContext, msgs: list[Incoming]) -> list[BaseException | None]:
    out: list[BaseException | None] = []
    with transaction(ctx.engine) as s, s.no_autoflush:
        seen = _seen(s, [m.ce_id for m in msgs])
        prefetch(s, [c for m in msgs if (c := getattr(m.event, "certno", None)) and len(c) == 18])
        for m in msgs:
            if m.ce_id in seen:
                out.append(None)  # a replay: already applied
                continue
            seen.add(m.ce_id)
            try:
                _dispatch(ctx, s, m)
            except REFUSALS as exc:
                out.append(PermanentError(str(exc), getattr(exc, "code", "REFUSED")))
                continue
            s.add(InboxRecord(consumer=CONSUMER, msg_id=m.ce_id, processed_ms=now_ms()))
            out.append(None)
    return out


def _seen(s: Session, ids: list[str]) -> set[str]:
    q = select(InboxRecord.msg_id).where(InboxRecord.consumer == CONSUMER, col(InboxRecord.msg_id).in_(ids))
    return set(s.exec(q).all())


def _dispatch(ctx: EnrollContext, s: Session, m: Incoming) -> None:
    province = source_province(m.headers.get("ce_source"))
    if province is None:
        raise EnrollRefusedError(f"ce_source {m.headers.get('ce_source')!r} 不是省级平台：应为 /province/<省代码>，"
                                 "如 /province/360000", "UNKNOWN_SENDER")
    ev = m.event
    if isinstance(ev, EnrolmentRecord):
        apply_record_in(ctx, s, ev, province)
    elif isinstance(ev, TransferEnrolment):
        transfer_in(ctx, s, ev, province)
    elif isinstance(ev, RegisterPerson):
        check_region(ev.admdvs, "admdvs")
        check_province(province, ev.admdvs)
        _find_or_register(s, ev.certno, ev.psn_name, ev.admdvs)
    elif isinstance(ev, EnrolPerson):
        check_province(province, ev.insuplc_admdvs)
        person = s.get(Person, ev.psn_no)
        if person is None:
            raise UnknownPersonError(f"人员编号 {ev.psn_no} 未登记")
        _enrol(ctx, s, person, ev)
