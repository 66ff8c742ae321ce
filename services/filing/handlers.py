"""Filing handlers: file, change, cancel, expire; keep the view of enrolments.

The REST API and the provinces' filing.inbound records end here; each change commits with its
`FilingUpdated` on filing.events (outbox).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import orjson
from sqlalchemy import Engine
from sqlmodel import Session, select

from schemas.common import FilingType
from schemas.events import (
    CancelFiling,
    ChangeFiling,
    EnrolmentUpdated,
    FileTreatment,
    FilingStatus,
    FilingUpdated,
)
from schemas.filing_rules import FilingRules
from schemas.regions import covers_region, designated_hospitals, pooling_regions, provinces
from services.bus import outbox
from services.bus.db import transaction
from services.bus.envelope import Incoming, now_ms
from services.bus.views import apply_state
from services.filing.domain import (
    Decision,
    FilingRefusedError,
    check_holding,
    pick_enrolment,
    validate_filing,
)
from services.filing.store import EnrolmentView, Filing

log = logging.getLogger("yibao.filing")
SERVICE = "filing"


class UnknownFilingError(LookupError):
    code = "UNKNOWN_FILING"


@dataclass
class FilingContext:
    engine: Engine
    rules: FilingRules = field(default_factory=FilingRules.load)
    today: Callable[[], date] = date.today


def _event(f: Filing) -> FilingUpdated:
    return FilingUpdated(fil_id=f.fil_id, psn_no=f.psn_no, insuplc_admdvs=f.insuplc_admdvs,
                         fil_type=FilingType(f.fil_type), target_admdvs=f.target_admdvs,
                         begndate=f.begndate, enddate=f.enddate, status=FilingStatus(f.status),
                         commitment=f.commitment, late=f.late, referral_fixmedins_code=f.referral_fixmedins_code,
                         change=f.change, version=f.version)


def _publish(s: Session, f: Filing) -> None:
    outbox.add(s, SERVICE, "filing.events", f.psn_no, _event(f), source=f"/yibao/filing/{f.insuplc_admdvs}")


def _decide(ctx: FilingContext, insured: EnrolmentView, fil_type: FilingType, target: str, begndate: date,
            enddate: date | None, commitment: bool, materials: list[str], referral: str | None,
            changing: bool = False) -> Decision:
    return validate_filing(
        insured.status(), fil_type=fil_type, target_admdvs=target, begndate=begndate, enddate=enddate,
        commitment=commitment, materials=materials,
        referral_hospital=designated_hospitals().get(referral) if referral else None, referral_code=referral,
        rules=ctx.rules, known_regions=set(pooling_regions()), known_provinces=set(provinces()), today=ctx.today(),
        changing=changing)


def file_treatment(ctx: FilingContext, cmd: FileTreatment, province: str | None = None) -> tuple[Filing, str | None]:
    with transaction(ctx.engine) as s:
        out = file_in(ctx, s, cmd, province)
    return out


def file_in(ctx: FilingContext, s: Session, cmd: FileTreatment, province: str | None) -> tuple[Filing, str | None]:
    views = list(s.exec(select(EnrolmentView).where(EnrolmentView.psn_no == cmd.psn_no)).all())
    chosen = pick_enrolment([v.status() for v in views], cmd.psn_no, cmd.insuplc_admdvs, ctx.today())
    view = next(v for v in views if (v.insuplc_admdvs, v.insutype) == (chosen.insuplc_admdvs, chosen.insutype))
    if province and not covers_region(province, view.insuplc_admdvs):
        raise FilingRefusedError(f"省级平台 {province} 不能为参保地 {view.insuplc_admdvs} 的人员报送备案", "WRONG_PROVINCE")
    d = _decide(ctx, view, cmd.fil_type, cmd.target_admdvs, cmd.begndate, cmd.enddate, cmd.commitment,
                cmd.materials, cmd.referral_fixmedins_code)
    f = Filing(fil_id=f"FIL{view.insuplc_admdvs}{secrets.token_hex(8).upper()}", psn_no=cmd.psn_no,
               insuplc_admdvs=view.insuplc_admdvs, fil_type=cmd.fil_type, target_admdvs=cmd.target_admdvs,
               begndate=cmd.begndate, enddate=d.enddate, status="active", commitment=cmd.commitment,
               materials=orjson.dumps(cmd.materials).decode(), late=d.late,
               referral_fixmedins_code=cmd.referral_fixmedins_code, change="approved", created_ms=now_ms())
    s.add(f)
    _publish(s, f)
    log.info("filing %s: %s %s → %s%s", f.fil_id, f.psn_no, f.fil_type, f.target_admdvs, " (补办)" if f.late else "")
    return f, d.notice


def _active(s: Session, fil_id: str, province: str | None) -> Filing:
    f = s.get(Filing, fil_id)
    if f is None:
        raise UnknownFilingError(f"备案 {fil_id} 不存在")
    if province and not covers_region(province, f.insuplc_admdvs):
        raise FilingRefusedError(f"省级平台 {province} 不能变更参保地 {f.insuplc_admdvs} 的备案", "WRONG_PROVINCE")
    if f.status != "active":
        raise FilingRefusedError(f"备案 {fil_id} 状态为 {f.status}，不能再变更或撤销", "NOT_ACTIVE_FILING")
    return f


def change_filing(ctx: FilingContext, cmd: ChangeFiling, province: str | None = None) -> tuple[Filing, str | None]:
    with transaction(ctx.engine) as s:
        out = change_in(ctx, s, cmd, province)
    return out


def change_in(ctx: FilingContext, s: Session, cmd: ChangeFiling, province: str | None) -> tuple[Filing, str | None]:
    f = _active(s, cmd.fil_id, province)
    check_holding(FilingType(f.fil_type), f.begndate, ctx.rules, ctx.today(), "变更")
    fil_type = cmd.fil_type or FilingType(f.fil_type)
    target = cmd.target_admdvs or f.target_admdvs
    enddate = cmd.enddate if cmd.enddate is not None else (None if fil_type.long_term else f.enddate)
    views = list(s.exec(select(EnrolmentView).where(EnrolmentView.psn_no == f.psn_no,
                                                    EnrolmentView.insuplc_admdvs == f.insuplc_admdvs)).all())
    chosen = pick_enrolment([v.status() for v in views], f.psn_no, f.insuplc_admdvs, ctx.today())
    view = next(v for v in views if v.insutype == chosen.insutype)
    d = _decide(ctx, view, fil_type, target, f.begndate, enddate, f.commitment, orjson.loads(f.materials),
                f.referral_fixmedins_code, changing=True)
    f.fil_type, f.target_admdvs, f.enddate = fil_type, target, d.enddate
    f.change, f.version = "changed", f.version + 1
    s.add(f)
    _publish(s, f)
    return f, d.notice


def cancel_filing(ctx: FilingContext, cmd: CancelFiling, province: str | None = None) -> Filing:
    with transaction(ctx.engine) as s:
        f = cancel_in(ctx, s, cmd, province)
    return f


def cancel_in(ctx: FilingContext, s: Session, cmd: CancelFiling, province: str | None) -> Filing:
    f = _active(s, cmd.fil_id, province)
    check_holding(FilingType(f.fil_type), f.begndate, ctx.rules, ctx.today(), "撤销")
    f.status, f.change, f.version = "cancelled", "cancelled", f.version + 1
    s.add(f)
    _publish(s, f)
    log.info("filing %s cancelled%s", f.fil_id, f": {cmd.reason}" if cmd.reason else "")
    return f


def expire_due(ctx: FilingContext, today: date | None = None) -> dict[str, int]:
    """Temporary filings whose validity ended yesterday or before become `expired` (filing.events)."""
    day = today or ctx.today()
    with transaction(ctx.engine) as s:
        due = s.exec(select(Filing).where(Filing.status == "active", Filing.enddate != None,  # noqa: E711
                                          Filing.enddate < day)).all()  # type: ignore[operator]
        for f in due:
            f.status, f.change, f.version = "expired", "expired", f.version + 1
            s.add(f)
            _publish(s, f)
    if due:
        log.info("%d filings expired on %s", len(due), day)
    return {"expired": len(due)}


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
        apply_state(s, "filing.enrolment-view", msg.ce_id, EnrolmentView,
                    {"psn_no": e.psn_no, "insuplc_admdvs": e.insuplc_admdvs, "insutype": e.insutype}, e,
                    ("psn_insu_stas", "paid_through", "death_date", "version"))
