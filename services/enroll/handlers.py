"""Enroll handlers: register a person, enrol them; each change commits with its event."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session, select

from schemas.events import EnrolmentUpdated, EnrolPerson, RegisterPerson
from schemas.regions import pooling_regions
from services.bus import outbox
from services.bus.db import transaction
from services.bus.envelope import now_ms
from services.bus.outbox import OutboxRelay
from services.enroll.domain import mask_certno, new_psn_no, parse_certno
from services.enroll.store import Enrolment, Person

log = logging.getLogger("yibao.enroll")
SERVICE = "enroll"


class UnknownRegionError(ValueError):
    pass


class UnknownPersonError(LookupError):
    pass


@dataclass
class EnrollContext:
    engine: Engine
    relay: OutboxRelay


def check_region(admdvs: str, field: str) -> None:
    if admdvs not in pooling_regions():
        raise UnknownRegionError(
            f"{field} {admdvs} 不是本平台的统筹区; known: {', '.join(sorted(pooling_regions()))}")


def register_person(ctx: EnrollContext, cmd: RegisterPerson) -> tuple[Person, bool]:
    """Returns the person and whether it was new; the same ID number twice is the same person."""
    ident = parse_certno(cmd.certno)
    check_region(cmd.admdvs, "admdvs")
    with transaction(ctx.engine) as s:
        found = s.exec(select(Person).where(Person.certno == ident.certno)).first()
        if found is not None:
            return found, False
        p = Person(psn_no=new_psn_no(cmd.admdvs), certno=ident.certno, psn_name=cmd.psn_name,
                   gend=ident.gend, brdy=ident.brdy, admdvs=cmd.admdvs, created_ms=now_ms())
        s.add(p)
    log.info("person %s registered (%s)", p.psn_no, mask_certno(p.certno))
    return p, True


def enrol_person(ctx: EnrollContext, cmd: EnrolPerson) -> Enrolment:
    check_region(cmd.insuplc_admdvs, "insuplc_admdvs")
    with transaction(ctx.engine) as s:
        person = s.get(Person, cmd.psn_no)
        if person is None:
            raise UnknownPersonError(f"人员编号 {cmd.psn_no} 未登记，请先登记人员 (POST /persons)")
        e = s.get(Enrolment, cmd.psn_no)
        version = e.version + 1 if e else 1
        e = e or Enrolment(psn_no=cmd.psn_no, insuplc_admdvs=cmd.insuplc_admdvs, insutype=cmd.insutype,
                           psn_type=cmd.psn_type, psn_insu_stas=cmd.psn_insu_stas, updated_ms=now_ms())
        for k in ("insuplc_admdvs", "insutype", "psn_type", "psn_insu_stas", "paid_through",
                  "voucher_active", "cvlserv_flag", "acct_balc"):
            setattr(e, k, getattr(cmd, k))
        e.version, e.updated_ms = version, now_ms()
        s.add(e)
        event = EnrolmentUpdated(
            psn_no=person.psn_no, psn_name=person.psn_name, gend=person.gend,
            brdy=person.brdy, insuplc_admdvs=cmd.insuplc_admdvs, insutype=cmd.insutype,
            psn_type=cmd.psn_type, psn_insu_stas=cmd.psn_insu_stas, paid_through=cmd.paid_through,
            voucher_active=cmd.voucher_active, cvlserv_flag=cmd.cvlserv_flag, acct_balc=cmd.acct_balc,
            version=version,
        )
        outbox.add(s, SERVICE, "enroll.events", person.psn_no, event,
                   source=f"/yibao/enroll/{cmd.insuplc_admdvs}")
    ctx.relay.notify()
    log.info("person %s enrolled in %s insutype %s status %s", cmd.psn_no, cmd.insuplc_admdvs,
             cmd.insutype, cmd.psn_insu_stas)
    return e


def get_person(engine: Engine, psn_no: str) -> tuple[Person, Enrolment | None]:
    with Session(engine) as s:
        p = s.get(Person, psn_no)
        if p is None:
            raise UnknownPersonError(f"人员编号 {psn_no} 未登记")
        return p, s.get(Enrolment, psn_no)
