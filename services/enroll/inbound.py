"""enroll.inbound: records published by provincial platforms, handled a fetched batch at a time.

Each record goes through the same handlers as the REST API. The sender is the CloudEvents
`ce_source` (`/province/<admdvs>`); a province may publish only for its own regions. Every check
that can refuse a record runs before anything is written, so a refused record leaves the batch's
transaction clean; it is dead-lettered with its reason and a `RecordRejected` goes to
enroll.rejections. Replays change nothing (inbox by ce_id).
"""

from __future__ import annotations

import asyncio
from functools import partial

from sqlmodel import Session

from schemas.events import EnrolmentRecord, EnrolPerson, RegisterPerson, TransferEnrolment
from services.bus.envelope import Incoming
from services.bus.intake import apply_batch
from services.bus.rejections import source_province
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
    results = await asyncio.to_thread(apply_batch, ctx.engine, CONSUMER, msgs, partial(_dispatch, ctx), REFUSALS,
                                      _prefetch, autoflush=False)
    return results


def _prefetch(s: Session, msgs: list[Incoming]) -> None:
    """Persons and enrolments of the whole batch in a few queries; the handlers find them loaded."""
    prefetch(s, [c for m in msgs if (c := getattr(m.event, "certno", None)) and len(c) == 18])


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
