"""Enroll's tables: the person registry (raw ID numbers stay here), enrolments and their history,
duplicates found, reminders sent."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import BigInteger, Index, Text
from sqlmodel import Column, Field, SQLModel

from services.bus.inbox import InboxRecord
from services.bus.outbox import OutboxRow


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

    __table_args__ = (Index("ix_enrolment_active_family", "family", "psn_insu_stas"),)


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


TABLES: list[type[SQLModel]] = [Person, Enrolment, EnrolmentHistory, Duplicate, ReminderSent, InboxRecord, OutboxRow]
