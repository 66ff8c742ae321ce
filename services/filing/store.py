"""Filing's tables: the filings it owns and its own view of enroll.events."""

from __future__ import annotations

from datetime import date

from sqlalchemy import BigInteger, Text
from sqlmodel import Column, Field, SQLModel

from services.bus.inbox import InboxRecord
from services.bus.outbox import OUTBOX_TABLES
from services.filing.domain import EnrolmentStatus


class EnrolmentView(SQLModel, table=True):
    __tablename__ = "filing_enrolment_view"

    psn_no: str = Field(primary_key=True, max_length=30)
    insuplc_admdvs: str = Field(primary_key=True, max_length=6)
    insutype: str = Field(primary_key=True, max_length=3)
    psn_insu_stas: str = Field(max_length=1)
    paid_through: date | None = None
    death_date: date | None = None
    version: int = 0

    def status(self) -> EnrolmentStatus:
        return EnrolmentStatus(self.psn_no, self.insuplc_admdvs, self.insutype, self.psn_insu_stas,
                               self.paid_through, self.death_date)


class Filing(SQLModel, table=True):
    __tablename__ = "filing_filing"

    fil_id: str = Field(primary_key=True, max_length=40)
    psn_no: str = Field(index=True, max_length=30)
    insuplc_admdvs: str = Field(max_length=6)
    fil_type: str = Field(max_length=30)
    target_admdvs: str = Field(max_length=6)
    begndate: date
    enddate: date | None = Field(default=None, index=True)
    status: str = Field(max_length=10, index=True)
    commitment: bool = False
    materials: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    late: bool = False
    referral_fixmedins_code: str | None = Field(default=None, max_length=12)
    change: str = Field(default="approved", max_length=10)
    version: int = 1
    created_ms: int = Field(sa_type=BigInteger)


TABLES: list[type[SQLModel]] = [EnrolmentView, Filing, InboxRecord, *OUTBOX_TABLES]
