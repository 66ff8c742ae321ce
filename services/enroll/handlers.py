"""Enroll handlers. The REST API and the inbound topic end here; each change commits with its events.

A change to an enrolment writes, in one transaction: the enrolment row (version + 1), a history
row, `EnrolmentUpdated` on enroll.events and, when the person is now actively enrolled in two
provinces in one scheme family, a `DuplicateDetected` on enroll.duplicates (outbox).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from itertools import groupby
from typing import Any

import orjson
from sqlalchemy import Engine, func, insert
from sqlalchemy import select as sa_select
from sqlmodel import Session, select

from schemas.common import Insutype
from schemas.events import (
    ContributionReminder,
    DuplicateDetected,
    DuplicateEnrolment,
    EnrolmentFields,
    EnrolmentRecord,
    EnrolmentUpdated,
    EnrolPerson,
    Hardship,
    RegisterPerson,
    TransferEnrolment,
)
from schemas.regions import covers_region, pooling_regions
from services.bus import outbox
from services.bus.db import transaction
from services.bus.envelope import encode, now_ms
from services.credentials import card_digest, cert_digest, issue_ectoken, seal
from services.enroll.domain import (
    RULES_FILE,
    EnrollRefusedError,
    EnrolmentRules,
    benefit_from,
    effective_paid_through,
    lapse_due,
    mask_certno,
    new_psn_no,
    parse_certno,
    rules_for,
)
from services.enroll.store import (
    Duplicate,
    Enrolment,
    EnrolmentHistory,
    Person,
    ReminderSent,
    add_enrolment,
    add_person,
    enrolments_of,
    person_by_certno,
)

log = logging.getLogger("yibao.enroll")
SERVICE = "enroll"
ENROLMENT = Enrolment.__table__  # type: ignore[attr-defined]
HISTORY = EnrolmentHistory.__table__  # type: ignore[attr-defined]


class UnknownRegionError(EnrollRefusedError):
    code = "UNKNOWN_REGION"


class WrongProvinceError(EnrollRefusedError):
    code = "WRONG_PROVINCE"


class UnknownPersonError(LookupError):
    code = "UNKNOWN_PERSON"


class UnknownDuplicateError(LookupError):
    pass


@dataclass
class EnrollContext:
    engine: Engine
    rules: dict[str, EnrolmentRules] = field(default_factory=lambda: EnrolmentRules.load(RULES_FILE))
    today: Callable[[], date] = date.today


def check_region(admdvs: str, field_name: str) -> None:
    if admdvs not in pooling_regions():
        raise UnknownRegionError(
            f"{field_name} {admdvs} 不是本平台的统筹区; known: {', '.join(sorted(pooling_regions()))}")


def check_province(province: str | None, *regions: str) -> None:
    """A provincial platform may publish only for its own pooling regions."""
    if province and not any(covers_region(province, r) for r in regions):
        raise WrongProvinceError(f"省级平台 {province} 不能报送 {'/'.join(regions)} 的参保记录：只能报送本省统筹区的记录")


# --- persons --------------------------------------------------------------------------------


def _find_or_register(s: Session, certno: str, psn_name: str, admdvs: str) -> tuple[Person, bool]:
    ident = parse_certno(certno)
    found = person_by_certno(s, ident.certno)
    if found is not None:
        return found, False
    p = Person(psn_no=new_psn_no(admdvs), certno=ident.certno, psn_name=psn_name, gend=ident.gend,
               brdy=ident.brdy, admdvs=admdvs, created_ms=now_ms())
    add_person(s, p)
    log.info("person %s registered (%s)", p.psn_no, mask_certno(p.certno))
    return p, True


def register_person(ctx: EnrollContext, cmd: RegisterPerson) -> tuple[Person, bool]:
    """Returns the person and whether it was new; the same ID number twice is the same person."""
    parse_certno(cmd.certno)
    check_region(cmd.admdvs, "admdvs")
    with transaction(ctx.engine) as s:
        return _find_or_register(s, cmd.certno, cmd.psn_name, cmd.admdvs)


def hardship_of(p: Person) -> list[Hardship]:
    return [Hardship.model_validate(h) for h in orjson.loads(p.hardship)]


# --- enrolments -------------------------------------------------------------------------------


def enrol_person(ctx: EnrollContext, cmd: EnrolPerson) -> Enrolment:
    """参保登记 of a registered person (the counter's path)."""
    with transaction(ctx.engine) as s:
        person = s.get(Person, cmd.psn_no)
        if person is None:
            raise UnknownPersonError(f"人员编号 {cmd.psn_no} 未登记，请先登记人员 (POST /persons)")
        e = _enrol(ctx, s, person, cmd)
    return e


def apply_record(ctx: EnrollContext, cmd: EnrolmentRecord, province: str | None = None) -> Enrolment:
    """A provincial record, from the REST API or from enroll.inbound."""
    with transaction(ctx.engine) as s:
        e = apply_record_in(ctx, s, cmd, province)
    return e


def apply_record_in(ctx: EnrollContext, s: Session, cmd: EnrolmentRecord, province: str | None) -> Enrolment:
    parse_certno(cmd.certno)
    check_fields(cmd)
    check_province(province, cmd.insuplc_admdvs)
    person, _ = _find_or_register(s, cmd.certno, cmd.psn_name, cmd.insuplc_admdvs)
    return _enrol(ctx, s, person, cmd)


def check_fields(f: EnrolmentFields) -> None:
    """Every check that can refuse a record, made before anything is written."""
    check_region(f.insuplc_admdvs, "insuplc_admdvs")
    if f.insutype in (Insutype.RESIDENT, Insutype.RESIDENT_CRITICAL) and f.acct_balc:
        raise EnrollRefusedError("acct_balc: 居民医保 (390) 没有个人账户，请填 0", "NO_PERSONAL_ACCOUNT")


def _enrol(ctx: EnrollContext, s: Session, person: Person, f: EnrolmentFields) -> Enrolment:
    check_fields(f)
    today = ctx.today()
    enrol_date = f.enrol_date or today
    begndate = f.begndate or enrol_date
    if f.hardship:
        person.hardship = orjson.dumps([h.model_dump(mode="json") for h in f.hardship]).decode()
    if f.death_date:
        person.death_date = f.death_date
    if f.card_no and f.card_sn:
        person.card_no, person.card_sn = f.card_no, f.card_sn
    s.add(person)
    e = enrolments_of(s, person.psn_no).get((f.insuplc_admdvs, f.insutype))
    new = e is None
    if e is None:
        e = Enrolment(psn_no=person.psn_no, insuplc_admdvs=f.insuplc_admdvs, insutype=f.insutype,
                      family=Insutype(f.insutype).family, psn_type=f.psn_type, psn_insu_stas=f.psn_insu_stas,
                      version=0, updated_ms=now_ms())
        add_enrolment(s, e)
    was_active = not new and e.psn_insu_stas == "1"
    e.psn_type, e.psn_insu_stas = f.psn_type, f.psn_insu_stas
    e.paid_through = effective_paid_through(f.paid_through, f.missing_periods)
    e.missing_periods = orjson.dumps(f.missing_periods).decode()
    e.contrib_months = f.contrib_months or e.contrib_months
    e.emp_no, e.voucher_active, e.cvlserv_flag, e.acct_balc = f.emp_no, f.voucher_active, f.cvlserv_flag, f.acct_balc
    if f.psn_insu_stas == "1" and not was_active:  # a new or re-activated enrolment: when benefits start
        e.begndate = begndate
        e.benefit_from = benefit_from(rules_for(ctx.rules, f.insuplc_admdvs), f.insutype, person.brdy,
                                      begndate, enrol_date)
    change = "enrolled" if new else "changed"
    if person.death_date and person.death_date <= today:
        e.psn_insu_stas, change = "4", "deceased"
        for other in enrolments_of(s, person.psn_no).values():  # death ends every enrolment
            if other is not e and other.psn_insu_stas == "1":
                other.psn_insu_stas = "4"
                _save(s, person, other, "deceased", person.death_date)
    _save(s, person, e, change, begndate if new else enrol_date)
    log.info("person %s %s in %s insutype %s status %s (benefits from %s)", person.psn_no, change,
             e.insuplc_admdvs, e.insutype, e.psn_insu_stas, e.benefit_from)
    return e


def _event(p: Person, e: Enrolment, change: str) -> EnrolmentUpdated:
    return EnrolmentUpdated(
        psn_no=p.psn_no, psn_name=seal(p.psn_name), gend=p.gend, brdy=p.brdy,
        insuplc_admdvs=e.insuplc_admdvs, insutype=e.insutype, psn_type=e.psn_type,
        psn_insu_stas=e.psn_insu_stas, begndate=e.begndate, benefit_from=e.benefit_from,
        paid_through=e.paid_through, contrib_months=e.contrib_months, emp_no=e.emp_no,
        voucher_active=e.voucher_active, cvlserv_flag=e.cvlserv_flag, acct_balc=e.acct_balc,
        hardship=hardship_of(p), death_date=p.death_date, cert_digest=cert_digest(p.certno),
        card_digest=card_digest(p.card_no, p.card_sn) if p.card_no and p.card_sn else None, change=change,
        version=e.version,
    )


def _save(s: Session, person: Person, e: Enrolment, change: str, effective: date) -> None:
    e.version += 1
    e.updated_ms = now_ms()
    s.add(e)
    event = _event(person, e, change)
    value = encode(event)
    s.connection().execute(insert(HISTORY).values(  # Core: one row per change, never read back here
        psn_no=e.psn_no, insuplc_admdvs=e.insuplc_admdvs, insutype=e.insutype, version=e.version,
        effective=effective, change=change, snapshot=value, recorded_ms=e.updated_ms))
    outbox.add(s, SERVICE, "enroll.events", e.psn_no, event, source=f"/yibao/enroll/{e.insuplc_admdvs}",
               value=value)
    if e.psn_insu_stas == "1":
        _detect_duplicates(s, e)


# --- transfers (转移接续) ------------------------------------------------------------------------


def transfer(ctx: EnrollContext, cmd: TransferEnrolment, province: str | None = None) -> Enrolment:
    with transaction(ctx.engine) as s:
        e = transfer_in(ctx, s, cmd, province)
    return e


def transfer_in(ctx: EnrollContext, s: Session, cmd: TransferEnrolment, province: str | None) -> Enrolment:
    check_region(cmd.from_admdvs, "from_admdvs")
    check_region(cmd.to_admdvs, "to_admdvs")
    check_province(province, cmd.from_admdvs, cmd.to_admdvs)
    if cmd.psn_no:
        person = s.get(Person, cmd.psn_no)
    else:
        assert cmd.certno
        person = person_by_certno(s, parse_certno(cmd.certno).certno)
    if person is None:
        raise UnknownPersonError(f"人员 {cmd.psn_no or mask_certno(cmd.certno or '')} 未登记，无法转移")
    src = enrolments_of(s, person.psn_no).get((cmd.from_admdvs, cmd.insutype))
    if src is None or src.psn_insu_stas != "1":
        raise EnrollRefusedError(f"人员 {person.psn_no} 在 {cmd.from_admdvs} 没有正常参保的险种 {cmd.insutype}，无法转出",
                                 "NOT_ENROLLED_AT_SOURCE")
    src.psn_insu_stas = "4"
    _save(s, person, src, "transferred_out", cmd.transfer_date)
    dst = enrolments_of(s, person.psn_no).get((cmd.to_admdvs, cmd.insutype))
    earlier = dst.contrib_months if dst and dst.psn_insu_stas != "1" else 0
    if dst is None:
        dst = Enrolment(psn_no=person.psn_no, insuplc_admdvs=cmd.to_admdvs, insutype=cmd.insutype,
                        family=src.family, psn_type=src.psn_type, psn_insu_stas="1", version=0,
                        updated_ms=now_ms())
        add_enrolment(s, dst)
    dst.psn_type = cmd.psn_type or src.psn_type
    dst.psn_insu_stas = "1"
    dst.begndate = dst.benefit_from = cmd.transfer_date  # continuous cover: no waiting period
    dst.paid_through, dst.missing_periods = src.paid_through, src.missing_periods
    dst.contrib_months = src.contrib_months + earlier  # 缴费年限 carried over
    dst.emp_no = cmd.emp_no
    dst.voucher_active, dst.cvlserv_flag, dst.acct_balc = src.voucher_active, src.cvlserv_flag, src.acct_balc
    _save(s, person, dst, "transferred_in", cmd.transfer_date)
    _resolve_for(s, person.psn_no, f"转移接续 {cmd.from_admdvs}→{cmd.to_admdvs}")
    log.info("person %s transferred %s → %s (%s), %d months carried", person.psn_no, cmd.from_admdvs,
             cmd.to_admdvs, cmd.insutype, dst.contrib_months)
    return dst


# --- duplicates (重复参保) -----------------------------------------------------------------------


def dup_id(psn_no: str, a: tuple[str, str], b: tuple[str, str]) -> str:
    x, y = sorted([a, b])
    return f"DUP-{psn_no}-{x[0]}{x[1]}-{y[0]}{y[1]}"


def _detect_duplicates(s: Session, e: Enrolment) -> None:
    others = [o for o in enrolments_of(s, e.psn_no).values() if o.family == e.family and o.psn_insu_stas == "1"]
    for o in others:
        if o.insuplc_admdvs[:2] == e.insuplc_admdvs[:2]:
            continue
        key = dup_id(e.psn_no, (o.insuplc_admdvs, o.insutype), (e.insuplc_admdvs, e.insutype))
        d = s.get(Duplicate, key)
        if d is not None and d.status == "open":
            continue
        (a_adm, a_ins), (b_adm, b_ins) = sorted([(o.insuplc_admdvs, o.insutype), (e.insuplc_admdvs, e.insutype)])
        d = d or Duplicate(dup_id=key, psn_no=e.psn_no, family=e.family, a_admdvs=a_adm, a_insutype=a_ins,
                           b_admdvs=b_adm, b_insutype=b_ins, status="open", detected_ms=now_ms())
        d.status, d.resolution, d.detected_ms, d.resolved_ms = "open", None, now_ms(), None
        s.add(d)
        outbox.add(s, SERVICE, "enroll.duplicates", e.psn_no, _dup_event(s, d), source="/yibao/enroll/duplicates")
        log.warning("duplicate enrolment %s: %s in %s and %s", key, e.psn_no, a_adm, b_adm)


def _dup_event(s: Session, d: Duplicate) -> DuplicateDetected:
    sides = []
    for adm, ins in ((d.a_admdvs, d.a_insutype), (d.b_admdvs, d.b_insutype)):
        e = enrolments_of(s, d.psn_no).get((adm, ins))
        sides.append(DuplicateEnrolment(insuplc_admdvs=adm, insutype=ins,
                                        begndate=e.begndate if e else None))
    return DuplicateDetected(dup_id=d.dup_id, psn_no=d.psn_no, family=d.family, enrolments=sides,
                             status=d.status, resolution=d.resolution, detected_ms=d.detected_ms)


def _resolve_for(s: Session, psn_no: str, why: str) -> None:
    """Close open duplicates of a person whose two sides are no longer both active."""
    for d in s.exec(select(Duplicate).where(Duplicate.psn_no == psn_no, Duplicate.status == "open")).all():
        held = enrolments_of(s, psn_no)
        a, b = held.get((d.a_admdvs, d.a_insutype)), held.get((d.b_admdvs, d.b_insutype))
        if a and b and a.psn_insu_stas == "1" and b.psn_insu_stas == "1":
            continue
        d.status, d.resolution, d.resolved_ms = "resolved", why, now_ms()
        s.add(d)
        outbox.add(s, SERVICE, "enroll.duplicates", psn_no, _dup_event(s, d), source="/yibao/enroll/duplicates")


def resolve_duplicate(ctx: EnrollContext, key: str, end_admdvs: str, reason: str) -> Duplicate:
    """End one side of a duplicate (终止参保 in `end_admdvs`); the other stays."""
    with transaction(ctx.engine) as s:
        d = s.get(Duplicate, key)
        if d is None:
            raise UnknownDuplicateError(f"重复参保记录 {key} 不存在")
        if d.status != "open":
            raise EnrollRefusedError(f"重复参保记录 {key} 已处理：{d.resolution}", "ALREADY_RESOLVED")
        sides = {d.a_admdvs: d.a_insutype, d.b_admdvs: d.b_insutype}
        if end_admdvs not in sides:
            raise EnrollRefusedError(f"end_admdvs 须为 {' 或 '.join(sides)} 之一", "NOT_A_SIDE")
        e = enrolments_of(s, d.psn_no).get((end_admdvs, sides[end_admdvs]))
        person = s.get(Person, d.psn_no)
        assert e is not None and person is not None
        e.psn_insu_stas = "4"
        _save(s, person, e, "duplicate_ended", ctx.today())
        _resolve_for(s, d.psn_no, f"终止 {end_admdvs} 的参保：{reason or '重复参保处理'}")
        s.flush()
        s.refresh(d)
    return d


def duplicates(engine: Engine, status: str | None = None, limit: int = 100) -> list[Duplicate]:
    with Session(engine) as s:
        q = select(Duplicate)
        if status:
            q = q.where(Duplicate.status == status)
        return list(s.exec(q.order_by(Duplicate.detected_ms.desc()).limit(limit)).all())  # type: ignore[attr-defined]


def check_duplicates(engine: Engine) -> dict[str, Any]:
    """The batch check over the whole registry, compared with what was detected as events arrived."""
    q = (sa_select(ENROLMENT.c.psn_no, ENROLMENT.c.family, ENROLMENT.c.insuplc_admdvs, ENROLMENT.c.insutype)
         .where(ENROLMENT.c.psn_insu_stas == "1").order_by(ENROLMENT.c.psn_no))
    batch: set[str] = set()
    with Session(engine) as s:
        for _, rows in groupby(s.connection().execute(q), key=lambda r: r[0]):
            mine = list(rows)
            for i, (p, fam, adm, ins) in enumerate(mine):  # pairs in one family, different provinces
                for _, fam2, adm2, ins2 in mine[i + 1:]:
                    if fam == fam2 and adm[:2] != adm2[:2]:
                        batch.add(dup_id(p, (adm, ins), (adm2, ins2)))
        incremental = set(s.exec(select(Duplicate.dup_id).where(Duplicate.status == "open")).all())
        persons = s.exec(select(func.count()).select_from(Person)).one()
    return {"persons": persons, "batch": len(batch), "incremental_open": len(incremental),
            "missed_by_incremental": sorted(batch - incremental)[:50],
            "stale_in_incremental": sorted(incremental - batch)[:50], "consistent": batch == incremental}


# --- lapse reminders (断保提醒) ----------------------------------------------------------------------


def scan_lapses(ctx: EnrollContext, today: date | None = None) -> dict[str, int]:
    """Remind each person (and employer) whose current contribution is unpaid past its due day, once."""
    day = today or ctx.today()
    cols = (ENROLMENT.c.psn_no, ENROLMENT.c.insuplc_admdvs, ENROLMENT.c.insutype, ENROLMENT.c.paid_through,
            ENROLMENT.c.emp_no)
    persons = 0
    employers: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [None, None, 0])
    with transaction(ctx.engine) as s:
        sent = {(r.subject, r.period) for r in s.exec(select(ReminderSent)).all()}
        rows = s.connection().execute(sa_select(*cols).where(ENROLMENT.c.psn_insu_stas == "1")).all()
        for psn_no, adm, ins, paid, emp in rows:
            due = lapse_due(rules_for(ctx.rules, adm), ins, paid, day)
            if due is None:
                continue
            period, due_day = due
            if emp:
                acc = employers[(emp, period)]
                acc[0], acc[1], acc[2] = adm, due_day, acc[2] + 1
            subject = f"psn:{psn_no}:{adm}:{ins}"
            if (subject, period) in sent:
                continue
            s.add(ReminderSent(subject=subject, period=period, sent_ms=now_ms()))
            outbox.add(s, SERVICE, "enroll.reminders", psn_no, ContributionReminder(
                kind="person", insuplc_admdvs=adm, period=period, due_date=due_day, psn_no=psn_no,
                insutype=ins, emp_no=emp,
                message=f"您在 {adm} 的 {period} 期医保费未缴（应于 {due_day} 前缴纳），断缴将影响医保待遇，请及时缴费"),
                source=f"/yibao/enroll/{adm}")
            persons += 1
        n_emp = 0
        for (emp, period), (adm, due_day, count) in employers.items():
            subject = f"emp:{emp}"
            if (subject, period) in sent:
                continue
            s.add(ReminderSent(subject=subject, period=period, sent_ms=now_ms()))
            outbox.add(s, SERVICE, "enroll.reminders", emp, ContributionReminder(
                kind="employer", insuplc_admdvs=adm, period=period, due_date=due_day, emp_no=emp, persons=count,
                message=f"单位 {emp} 有 {count} 名职工 {period} 期医保费未缴（应于 {due_day} 前缴纳），请及时足额缴纳"),
                source=f"/yibao/enroll/{adm}")
            n_emp += 1
    return {"persons_reminded": persons, "employers_reminded": n_emp}


# --- queries ------------------------------------------------------------------------------------------


def get_person(engine: Engine, psn_no: str) -> tuple[Person, list[Enrolment]]:
    with Session(engine) as s:
        p = s.get(Person, psn_no)
        if p is None:
            raise UnknownPersonError(f"人员编号 {psn_no} 未登记")
        return p, list(s.exec(select(Enrolment).where(Enrolment.psn_no == psn_no)).all())


def voucher_token(engine: Engine, psn_no: str) -> dict[str, Any]:
    """医保电子凭证: a short-lived token for the person's active enrolment, when the voucher is activated."""
    p, es = get_person(engine, psn_no)
    active = [e for e in es if e.psn_insu_stas == "1"]
    if not active:
        raise EnrollRefusedError(f"人员 {psn_no} 没有正常参保的险种，不能生成医保电子凭证", "NOT_ACTIVE")
    e = next((x for x in active if x.voucher_active), None)
    if e is None:
        raise EnrollRefusedError(f"人员 {psn_no} 的医保电子凭证未激活：请先在国家医保服务平台激活", "VOUCHER_INACTIVE")
    token, exp = issue_ectoken(p.psn_no, e.insuplc_admdvs)
    return {"ectoken": token, "insuplc_admdvs": e.insuplc_admdvs, "expires_at": exp}


def find_person(engine: Engine, certno: str) -> tuple[Person, list[Enrolment]]:
    ident = parse_certno(certno)
    with Session(engine) as s:
        p = s.exec(select(Person).where(Person.certno == ident.certno)).first()
    if p is None:
        raise UnknownPersonError(f"身份证号码 {mask_certno(ident.certno)} 未登记")
    return get_person(engine, p.psn_no)


def history(engine: Engine, psn_no: str) -> list[dict[str, Any]]:
    get_person(engine, psn_no)
    with Session(engine) as s:
        rows = s.exec(select(EnrolmentHistory).where(EnrolmentHistory.psn_no == psn_no)
                      .order_by(EnrolmentHistory.id)).all()  # type: ignore[arg-type]
        return [{"effective": r.effective.isoformat(), "change": r.change, "version": r.version,
                 "recorded_ms": r.recorded_ms, "enrolment": orjson.loads(r.snapshot)} for r in rows]


def status_at(engine: Engine, psn_no: str, day: date) -> dict[str, Any]:
    """What each of a person's enrolments was on `day`, and whether benefits applied."""
    p, _ = get_person(engine, psn_no)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for h in history(engine, psn_no):
        if date.fromisoformat(h["effective"]) <= day:
            e = h["enrolment"]
            latest[(e["insuplc_admdvs"], e["insutype"])] = h
    out = []
    for h in latest.values():
        e = h["enrolment"]
        benefit = date.fromisoformat(e["benefit_from"]) if e["benefit_from"] else None
        paid = date.fromisoformat(e["paid_through"]) if e["paid_through"] else None
        covered = (e["psn_insu_stas"] == "1" and benefit is not None and benefit <= day
                   and paid is not None and paid >= day and not (p.death_date and p.death_date < day))
        out.append({"insuplc_admdvs": e["insuplc_admdvs"], "insutype": e["insutype"],
                    "psn_insu_stas": e["psn_insu_stas"], "benefit_from": e["benefit_from"],
                    "paid_through": e["paid_through"], "since": h["effective"], "change": h["change"],
                    "benefits": covered})
    return {"psn_no": psn_no, "date": day.isoformat(), "death_date": p.death_date, "enrolments": out}
