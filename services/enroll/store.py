"""Enroll's tables: the person registry (raw ID numbers stay here) and enrolments."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel

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
    created_ms: int = Field(sa_type=BigInteger)


class Enrolment(SQLModel, table=True):
    """The person's current enrolment; every change raises version and emits EnrolmentUpdated."""

    __tablename__ = "enroll_enrolment"

    psn_no: str = Field(primary_key=True, max_length=30)
    insuplc_admdvs: str = Field(max_length=6)
    insutype: str = Field(max_length=3)
    psn_type: str = Field(max_length=2)
    psn_insu_stas: str = Field(max_length=1)
    paid_through: date | None = None
    voucher_active: bool = False
    cvlserv_flag: bool = False
    acct_balc: Decimal = Field(default=Decimal("0"), max_digits=16, decimal_places=2)
    version: int = 1
    updated_ms: int = Field(sa_type=BigInteger)


TABLES: list[type[SQLModel]] = [Person, Enrolment, InboxRecord, OutboxRow]
