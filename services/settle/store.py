"""Settle's tables: claims at the treatment side; views, ledger and accumulators at the insured city."""

from __future__ import annotations

from datetime import date

from sqlalchemy import BigInteger, LargeBinary
from sqlmodel import Column, Field, Session, SQLModel, select

from schemas.common import FilingType
from services.bus.inbox import InboxRecord
from services.bus.outbox import OutboxRow
from services.settle.benefits import Accumulators
from services.settle.domain import FilingState, PersonState


class ClaimRecord(SQLModel, table=True):
    """One hospital request by msgid: pending until its result comes back."""

    __tablename__ = "settle_claim"

    msgid: str = Field(primary_key=True, max_length=30)
    infno: str = Field(max_length=5)
    fixmedins_code: str = Field(index=True, max_length=12)
    insuplc_admdvs: str = Field(max_length=6)
    psn_no: str = Field(max_length=30)
    status: str = Field(max_length=10)  # pending | settled | failed
    result: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    created_ms: int = Field(sa_type=BigInteger)
    updated_ms: int = Field(sa_type=BigInteger)


class PersonView(SQLModel, table=True):
    """The insured city's view of enroll.events."""

    __tablename__ = "settle_person_view"

    psn_no: str = Field(primary_key=True, max_length=30)
    psn_name: str
    gend: str
    insuplc_admdvs: str = Field(max_length=6)
    insutype: str
    psn_type: str
    psn_insu_stas: str
    paid_through: date | None = None
    voucher_active: bool = False
    acct_balc_fen: int = 0
    version: int = 0

    def state(self) -> PersonState:
        return PersonState(
            psn_no=self.psn_no, psn_name=self.psn_name, gend=self.gend,
            insuplc_admdvs=self.insuplc_admdvs, insutype=self.insutype, psn_type=self.psn_type,
            psn_insu_stas=self.psn_insu_stas, paid_through=self.paid_through,
            voucher_active=self.voucher_active,
        )


class FilingView(SQLModel, table=True):
    """The insured city's view of filing.events."""

    __tablename__ = "settle_filing_view"

    fil_id: str = Field(primary_key=True, max_length=40)
    psn_no: str = Field(index=True, max_length=30)
    fil_type: str
    target_admdvs: str = Field(max_length=6)
    begndate: date
    enddate: date | None = None
    status: str
    version: int = 0

    def state(self) -> FilingState:
        return FilingState(
            fil_id=self.fil_id, fil_type=FilingType(self.fil_type), target_admdvs=self.target_admdvs,
            begndate=self.begndate, enddate=self.enddate, status=self.status,
        )


class LedgerEntry(SQLModel, table=True):
    """The insured city's ledger: one row per settlement, written exactly once per msgid."""

    __tablename__ = "settle_ledger"

    setl_id: str = Field(primary_key=True, max_length=30)
    msgid: str = Field(unique=True, max_length=30)
    psn_no: str = Field(index=True, max_length=30)
    insuplc_admdvs: str = Field(max_length=6)
    mdtrtarea_admvs: str = Field(max_length=6)
    fixmedins_code: str = Field(max_length=12)
    year: int
    medfee_fen: int
    fund_fen: int
    hifp_fen: int
    acct_fen: int
    cash_fen: int
    outcome: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_ms: int = Field(sa_type=BigInteger)


class AccumulatorRow(SQLModel, table=True):
    """人员累计信息 per person, year and insutype."""

    __tablename__ = "settle_accumulator"

    psn_no: str = Field(primary_key=True, max_length=30)
    year: int = Field(primary_key=True)
    insutype: str = Field(primary_key=True, max_length=3)
    dedc_used_ip: int = 0
    dedc_used_op: int = 0
    hifp_paid_ip: int = 0
    hifp_paid_op: int = 0
    compliant_selfpay: int = 0
    critical_paid: int = 0

    def values(self) -> Accumulators:
        return Accumulators(
            dedc_used_ip=self.dedc_used_ip, dedc_used_op=self.dedc_used_op,
            hifp_paid_ip=self.hifp_paid_ip, hifp_paid_op=self.hifp_paid_op,
            compliant_selfpay=self.compliant_selfpay, critical_paid=self.critical_paid,
        )

    def apply(self, acc: Accumulators) -> None:
        for name, value in vars(acc).items():
            setattr(self, name, value)


class AccountRow(SQLModel, table=True):
    """个人账户 balance in fen, at the insured city."""

    __tablename__ = "settle_account"

    psn_no: str = Field(primary_key=True, max_length=30)
    balance_fen: int = 0


TABLES: list[type[SQLModel]] = [ClaimRecord, PersonView, FilingView, LedgerEntry, AccumulatorRow, AccountRow,
          InboxRecord, OutboxRow]


def filings_of(s: Session, psn_no: str) -> list[FilingState]:
    return [f.state() for f in s.exec(select(FilingView).where(FilingView.psn_no == psn_no)).all()]


def ledger_for(s: Session, msgid: str) -> LedgerEntry | None:
    return s.exec(select(LedgerEntry).where(LedgerEntry.msgid == msgid)).first()
