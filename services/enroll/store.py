"""Enroll's tables: the person registry (raw ID numbers stay here), enrolments and their history,
duplicates found, reminders sent."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import BigInteger, Text
from sqlmodel import Column, Field, Session, SQLModel, col, select

from services.bus.inbox import InboxRecord
from services.bus.outbox import OUTBOX_TABLES


class Person(SQLModel, table=True):
    __tablename__ = "enroll_person"

    psn_no: str = Field(primary_key=True, max_length=30)
    certno: str = Field(unique=True, max_length=18)
    psn_name: str = Field(max_length=50)
    gend: str = Field(max_length=1)
    brdy: date
    admdvs: str = Field(max_length=6)
    death_date: date | None = None
    hardship: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))  # JSON list
    card_no: str | None = Field(default=None, max_length=9)  # 社会保障卡, with its 卡识别码
    card_sn: str | None = Field(default=None, max_length=32)
    created_ms: int = Field(sa_type=BigInteger)


class Enrolment(SQLModel, table=True):
    """One enrolment of a person in a pooling region and insutype; every change raises version."""

    __tablename__ = "enroll_enrolment"

    psn_no: str = Field(primary_key=True, max_length=30)
    insuplc_admdvs: str = Field(primary_key=True, max_length=6)
    insutype: str = Field(primary_key=True, max_length=3)
    family: str = Field(max_length=10)
    psn_type: str = Field(max_length=2)
    psn_insu_stas: str = Field(max_length=1)
    begndate: date | None = None
    benefit_from: date | None = None
    paid_through: date | None = None
    missing_periods: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    contrib_months: int = 0
    emp_no: str | None = Field(default=None, max_length=30, index=True)
    voucher_active: bool = False
    cvlserv_flag: bool = False
    acct_balc: Decimal = Field(default=Decimal("0"), max_digits=16, decimal_places=2)
    version: int = 1
    updated_ms: int = Field(sa_type=BigInteger)


class EnrolmentHistory(SQLModel, table=True):
    """Every version of every enrolment, with the date it took effect (for status-at-a-date)."""

    __tablename__ = "enroll_history"

    id: int | None = Field(default=None, primary_key=True)
    psn_no: str = Field(index=True, max_length=30)
    insuplc_admdvs: str = Field(max_length=6)
    insutype: str = Field(max_length=3)
    version: int
    effective: date
    change: str = Field(max_length=20)
    snapshot: bytes  # the EnrolmentUpdated of that version, JSON
    recorded_ms: int = Field(sa_type=BigInteger)


class Duplicate(SQLModel, table=True):
    """重复参保 found as enrolments arrive: one person, two provinces, one scheme family."""

    __tablename__ = "enroll_duplicate"

    dup_id: str = Field(primary_key=True, max_length=80)
    psn_no: str = Field(index=True, max_length=30)
    family: str = Field(max_length=10)
    a_admdvs: str = Field(max_length=6)
    a_insutype: str = Field(max_length=3)
    b_admdvs: str = Field(max_length=6)
    b_insutype: str = Field(max_length=3)
    status: str = Field(max_length=10, index=True)  # open | resolved
    resolution: str | None = None
    detected_ms: int = Field(sa_type=BigInteger)
    resolved_ms: int | None = Field(default=None, sa_type=BigInteger)


class ReminderSent(SQLModel, table=True):
    """断保提醒 already sent: one per person (or employer) and period."""

    __tablename__ = "enroll_reminder"

    subject: str = Field(primary_key=True, max_length=60)  # psn:<psn_no>:<admdvs>:<insutype> | emp:<emp_no>
    period: str = Field(primary_key=True, max_length=7)
    sent_ms: int = Field(sa_type=BigInteger)


TABLES: list[type[SQLModel]] = [Person, Enrolment, EnrolmentHistory, Duplicate, ReminderSent, InboxRecord, *OUTBOX_TABLES]


# --- what one transaction has loaded -----------------------------------------------------------
# A batch of inbound records is applied in one transaction without autoflush: persons and their
# enrolments are loaded for the whole batch in a few IN queries, and the handlers find them (and
# the rows they add) here instead of asking the database one statement at a time.


class Loaded:
    def __init__(self) -> None:
        self.by_certno: dict[str, Person | None] = {}
        self.enrolments: dict[str, dict[tuple[str, str], Enrolment]] = {}


def loaded(s: Session) -> Loaded:
    return s.info.setdefault("enroll.loaded", Loaded())


def prefetch(s: Session, certnos: list[str], chunk: int = 500) -> None:
    cache = loaded(s)
    want = sorted({c for c in certnos if c not in cache.by_certno})
    for i in range(0, len(want), chunk):
        part = want[i:i + chunk]
        cache.by_certno.update(dict.fromkeys(part))
        for p in s.exec(select(Person).where(col(Person.certno).in_(part))).all():
            cache.by_certno[p.certno] = p
    psns = sorted({p.psn_no for p in cache.by_certno.values() if p and p.psn_no not in cache.enrolments})
    for i in range(0, len(psns), chunk):
        part = psns[i:i + chunk]
        for psn in part:
            cache.enrolments[psn] = {}
        for e in s.exec(select(Enrolment).where(col(Enrolment.psn_no).in_(part))).all():
            cache.enrolments[e.psn_no][(e.insuplc_admdvs, e.insutype)] = e


def person_by_certno(s: Session, certno: str) -> Person | None:
    cache = loaded(s)
    if certno not in cache.by_certno:
        cache.by_certno[certno] = s.exec(select(Person).where(Person.certno == certno)).first()
    return cache.by_certno[certno]


def add_person(s: Session, p: Person) -> None:
    s.add(p)
    cache = loaded(s)
    cache.by_certno[p.certno] = p
    cache.enrolments[p.psn_no] = {}


def enrolments_of(s: Session, psn_no: str) -> dict[tuple[str, str], Enrolment]:
    """(insuplc_admdvs, insutype) → enrolment, for one person."""
    cache = loaded(s)
    if psn_no not in cache.enrolments:
        rows = s.exec(select(Enrolment).where(Enrolment.psn_no == psn_no)).all()
        cache.enrolments[psn_no] = {(e.insuplc_admdvs, e.insutype): e for e in rows}
    return cache.enrolments[psn_no]


def add_enrolment(s: Session, e: Enrolment) -> None:
    s.add(e)
    enrolments_of(s, e.psn_no)[(e.insuplc_admdvs, e.insutype)] = e
