"""Filing handlers: file, cancel, and keep the view of enrolments."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine
from sqlmodel import Session, select

from schemas.common import FilingType
from schemas.events import EnrolmentUpdated, FileTreatment, FilingStatus, FilingUpdated
from schemas.regions import pooling_regions
from services.bus import outbox
from services.bus.db import transaction
from services.bus.envelope import Incoming, now_ms
from services.bus.outbox import OutboxRelay
from services.bus.views import apply_state
from services.filing.domain import FilingRefusedError, validate_filing
from services.filing.store import EnrolmentView, Filing

log = logging.getLogger("yibao.filing")
SERVICE = "filing"


class UnknownFilingError(LookupError):
    pass


@dataclass
class FilingContext:
    engine: Engine
    relay: OutboxRelay


def _event(f: Filing) -> FilingUpdated:
    return FilingUpdated(fil_id=f.fil_id, psn_no=f.psn_no, insuplc_admdvs=f.insuplc_admdvs,
                         fil_type=FilingType(f.fil_type), target_admdvs=f.target_admdvs,
                         begndate=f.begndate, enddate=f.enddate, status=FilingStatus(f.status),
                         commitment=f.commitment, version=f.version)


def file_treatment(ctx: FilingContext, cmd: FileTreatment, today: date | None = None) -> Filing:
    with transaction(ctx.engine) as s:
        view = s.get(EnrolmentView, cmd.psn_no)
        end = validate_filing(
            view.status() if view else None, psn_no=cmd.psn_no, fil_type=cmd.fil_type,
            target_admdvs=cmd.target_admdvs, begndate=cmd.begndate, enddate=cmd.enddate,
            known_regions=set(pooling_regions()), today=today or date.today(),
        )
        assert view is not None
        f = Filing(fil_id=f"FIL{view.insuplc_admdvs}{secrets.token_hex(8).upper()}", psn_no=cmd.psn_no,
                   insuplc_admdvs=view.insuplc_admdvs, fil_type=cmd.fil_type, target_admdvs=cmd.target_admdvs,
                   begndate=cmd.begndate, enddate=end, status="active", commitment=cmd.commitment,
                   created_ms=now_ms())
        s.add(f)
        outbox.add(s, SERVICE, "filing.events", f.psn_no, _event(f),
                   source=f"/yibao/filing/{view.insuplc_admdvs}")
    ctx.relay.notify()
    log.info("filing %s: %s %s → %s", f.fil_id, f.psn_no, f.fil_type, f.target_admdvs)
    return f


def cancel_filing(ctx: FilingContext, fil_id: str) -> Filing:
    with transaction(ctx.engine) as s:
        f = s.get(Filing, fil_id)
        if f is None:
            raise UnknownFilingError(f"备案 {fil_id} 不存在")
        if f.status != "active":
            raise FilingRefusedError(f"备案 {fil_id} 状态为 {f.status}，不能再撤销")
        f.status, f.version = "cancelled", f.version + 1
        s.add(f)
        outbox.add(s, SERVICE, "filing.events", f.psn_no, _event(f), source=f"/yibao/filing/{f.insuplc_admdvs}")
    ctx.relay.notify()
    return f


def filings_of(engine: Engine, psn_no: str) -> list[Filing]:
    with Session(engine) as s:
        return list(s.exec(select(Filing).where(Filing.psn_no == psn_no)).all())


def get_filing(engine: Engine, fil_id: str) -> Filing:
    with Session(engine) as s:
        f = s.get(Filing, fil_id)
    if f is None:
        raise UnknownFilingError(f"备案 {fil_id} 不存在")
    return f


async def apply_enrolment(ctx: FilingContext, msg: Incoming) -> None:
    e: EnrolmentUpdated = msg.event
    with transaction(ctx.engine) as s:
        apply_state(s, "filing.enrolment-view", msg.ce_id, EnrolmentView, {"psn_no": e.psn_no}, e,
                    ("insuplc_admdvs", "psn_insu_stas", "paid_through", "version"))
