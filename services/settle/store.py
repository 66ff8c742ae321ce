"""Settle's tables: claims at the treatment side; views, ledger and accumulators at the insured city."""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    LargeBinary,
    RowMapping,
    bindparam,
    insert,
    select,
    update,
)
from sqlmodel import Column, Field, SQLModel

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


def result_of(rec: ClaimRecord) -> dict[str, Any] | None:
    """The stored SettlementResult in its JSON form (as it went to the hospital's topics)."""
    return orjson.loads(rec.result) if rec.result else None


class PersonView(SQLModel, table=True):
    """The insured city's view of enroll.events: one row per enrolment (person, region, insutype)."""

    __tablename__ = "settle_person_view"

    psn_no: str = Field(primary_key=True, max_length=30)
    insuplc_admdvs: str = Field(primary_key=True, max_length=6)
    insutype: str = Field(primary_key=True, max_length=3)
    psn_name: str
    gend: str
    brdy: date | None = None
    psn_type: str
    psn_insu_stas: str
    begndate: date | None = None
    benefit_from: date | None = None
    paid_through: date | None = None
    death_date: date | None = None
    voucher_active: bool = False
    cvlserv_flag: bool = False
    cert_digest: str | None = Field(default=None, max_length=64, index=True)
    card_digest: str | None = Field(default=None, max_length=64, index=True)
    hardship: bytes = Field(default=b"[]", sa_column=Column(LargeBinary, nullable=False, default=b"[]"))
    acct_balc_fen: int = 0
    version: int = 0



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
    insutype: str = Field(default="310", max_length=3)
    acc_delta: bytes = Field(default=b"{}", sa_column=Column(LargeBinary, nullable=False, default=b"{}"))
    refd_setl_id: str | None = Field(default=None, max_length=30)  # a reversal: the settlement it reverses
    reversed_by: str | None = Field(default=None, max_length=30)  # a settlement: its reversal, once made
    clr_period: str | None = Field(default=None, max_length=7, index=True)  # the clearing month it went into
    outcome: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_ms: int = Field(sa_type=BigInteger)


class VoidedRequest(SQLModel, table=True):
    """A request undone by 2601 before it reached the insured city: if it arrives later, it is refused."""

    __tablename__ = "settle_voided"

    msgid: str = Field(primary_key=True, max_length=30)
    by_msgid: str = Field(max_length=30)  # the 2601 that voided it
    psn_no: str = Field(max_length=30)
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
    chronic_paid: int = 0
    maf_dedc_used: int = 0
    maf_paid: int = 0


class AccountRow(SQLModel, table=True):
    """个人账户 balance in fen, at the insured city."""

    __tablename__ = "settle_account"

    psn_no: str = Field(primary_key=True, max_length=30)
    balance_fen: int = 0


class Encounter(SQLModel, table=True):
    """就诊 at the treatment city: registered (2201/2401), fees uploaded (2204/2301), then settled."""

    __tablename__ = "settle_encounter"

    mdtrt_id: str = Field(primary_key=True, max_length=30)
    fixmedins_code: str = Field(index=True, max_length=12)
    psn_no: str = Field(max_length=30)
    insuplc_admdvs: str = Field(max_length=6)
    mdtrtarea_admvs: str = Field(max_length=6)
    insutype: str = Field(max_length=3)
    med_type: str = Field(max_length=6)
    mdtrt_cert_type: str = Field(max_length=2)
    dise_codg: str | None = Field(default=None, max_length=20)
    begntime: date
    status: str = Field(max_length=10)  # open | cancelled | settled
    created_ms: int = Field(sa_type=BigInteger)


class EncounterFee(SQLModel, table=True):
    """One uploaded fee line with the treatment city's split of it."""

    __tablename__ = "settle_encounter_fee"

    mdtrt_id: str = Field(primary_key=True, max_length=30)
    feedetl_sn: str = Field(primary_key=True, max_length=30)
    line: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    split: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_ms: int = Field(sa_type=BigInteger)


class EncounterDiagnoses(SQLModel, table=True):
    """An encounter's diagnoses (diseinfo of 2401 or 2203), the latest list sent."""

    __tablename__ = "settle_encounter_diagnoses"

    mdtrt_id: str = Field(primary_key=True, max_length=30)
    diagnoses: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # JSON list of Diagnosis
    updated_ms: int = Field(sa_type=BigInteger)


class LocalAnswer(SQLModel, table=True):
    """The answer to a request the treatment city handles itself (2202, 2203, 2204/2205, 2301/2302, 3201/3202),
    kept so that the same msgid again gets the same answer."""

    __tablename__ = "settle_local_answer"

    msgid: str = Field(primary_key=True, max_length=30)
    fixmedins_code: str = Field(max_length=12)
    infno: str = Field(max_length=5)
    answer: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_ms: int = Field(sa_type=BigInteger)


class ClearingRun(SQLModel, table=True):
    """A closed clearing month (清算期): its statements are final; later rows go to the next month."""

    __tablename__ = "settle_clearing_run"

    period: str = Field(primary_key=True, max_length=7)
    rows: int
    closed_ms: int = Field(sa_type=BigInteger)


class ClearingStatement(SQLModel, table=True):
    """清算单: what one insured province owes one treatment province for one month, net of reversals."""

    __tablename__ = "settle_clearing_statement"

    period: str = Field(primary_key=True, max_length=7)
    insured_prov: str = Field(primary_key=True, max_length=6)
    treat_prov: str = Field(primary_key=True, max_length=6)
    settlements: int
    reversals: int
    carried: int  # rows of earlier months that arrived after their month was closed
    medfee_fen: int
    fund_fen: int
    acct_fen: int
    cash_fen: int


class AdvanceFund(SQLModel, table=True):
    """预付金 of an insured province at a treatment province: fund used since the last clearing."""

    __tablename__ = "settle_advance_fund"

    insured_prov: str = Field(primary_key=True, max_length=6)
    treat_prov: str = Field(primary_key=True, max_length=6)
    amount_fen: int
    used_fen: int = 0
    level: str = Field(default="normal", max_length=6)
    updated_ms: int = Field(sa_type=BigInteger)


TABLES: list[type[SQLModel]] = [ClaimRecord, PersonView, FilingView, LedgerEntry, VoidedRequest, AccumulatorRow,
                                AccountRow, Encounter, EncounterFee, EncounterDiagnoses, LocalAnswer, ClearingRun, ClearingStatement, AdvanceFund,
                                InboxRecord, OutboxRow]


# --- Core queries for the insured city's hot path (one settlement = a handful of statements) ---

PERSONS = PersonView.__table__  # type: ignore[attr-defined]
FILINGS = FilingView.__table__  # type: ignore[attr-defined]
LEDGER = LedgerEntry.__table__  # type: ignore[attr-defined]
ACCUMULATORS = AccumulatorRow.__table__  # type: ignore[attr-defined]
ACCOUNTS = AccountRow.__table__  # type: ignore[attr-defined]
VOIDED = VoidedRequest.__table__  # type: ignore[attr-defined]
ACC_FIELDS = ("dedc_used_ip", "dedc_used_op", "hifp_paid_ip", "hifp_paid_op", "compliant_selfpay", "critical_paid",
              "chronic_paid", "maf_dedc_used", "maf_paid")


# Statements built once, executed with parameters: building a statement per call cost more than
# running it (profiled at ~45 µs a statement on the insured city's hot path).
_ENROLMENTS = select(PERSONS).where(PERSONS.c.psn_no == bindparam("psn_no"))
_FILINGS = select(FILINGS).where(FILINGS.c.psn_no == bindparam("psn_no"))
_ACC_KEY = (ACCUMULATORS.c.psn_no == bindparam("k_psn_no"), ACCUMULATORS.c.year == bindparam("k_year"),
            ACCUMULATORS.c.insutype == bindparam("k_insutype"))
_ACC_LOAD = select(*(ACCUMULATORS.c[f] for f in ACC_FIELDS)).where(*_ACC_KEY)
_ACC_UPDATE = update(ACCUMULATORS).where(*_ACC_KEY)
_ACC_INSERT = insert(ACCUMULATORS)
_BALANCE = select(ACCOUNTS.c.balance_fen).where(ACCOUNTS.c.psn_no == bindparam("psn_no"))
_BALANCE_UPDATE = update(ACCOUNTS).where(ACCOUNTS.c.psn_no == bindparam("k_psn_no"))
_ACCOUNT_INSERT = insert(ACCOUNTS)
_VOIDED_BY = select(VOIDED.c.by_msgid).where(VOIDED.c.msgid == bindparam("msgid"))


def voided_by(c: Connection, msgid: str) -> str | None:
    """The 2601 that undid `msgid` before it was settled here, if one did."""
    return c.execute(_VOIDED_BY, {"msgid": msgid}).scalar()


def person_of_row(r: RowMapping) -> PersonState:
    return PersonState(psn_no=r["psn_no"], psn_name=r["psn_name"], gend=r["gend"],
                       insuplc_admdvs=r["insuplc_admdvs"], insutype=r["insutype"], psn_type=r["psn_type"],
                       psn_insu_stas=r["psn_insu_stas"], paid_through=r["paid_through"],
                       voucher_active=r["voucher_active"], begndate=r["begndate"],
                       benefit_from=r["benefit_from"], death_date=r["death_date"], brdy=r["brdy"],
                       cvlserv_flag=r["cvlserv_flag"], hardship=r["hardship"] or b"[]")


def load_enrolments(c: Connection, psn_no: str) -> list[PersonState]:
    return [person_of_row(r) for r in c.execute(_ENROLMENTS, {"psn_no": psn_no}).mappings().all()]


def filings_of(c: Connection, psn_no: str) -> list[FilingState]:
    rows = c.execute(_FILINGS, {"psn_no": psn_no}).mappings().all()
    return [FilingState(fil_id=r["fil_id"], fil_type=FilingType(r["fil_type"]), target_admdvs=r["target_admdvs"],
                        begndate=r["begndate"], enddate=r["enddate"], status=r["status"]) for r in rows]


def load_accumulators(c: Connection, psn_no: str, year: int, insutype: str) -> Accumulators | None:
    r = c.execute(_ACC_LOAD, {"k_psn_no": psn_no, "k_year": year, "k_insutype": insutype}).mappings().first()
    return Accumulators(**r) if r is not None else None


def save_accumulators(c: Connection, psn_no: str, year: int, insutype: str, acc: Accumulators,
                      existed: bool) -> None:
    values: dict[str, object] = {f: getattr(acc, f) for f in ACC_FIELDS}
    if existed:
        c.execute(_ACC_UPDATE, values | {"k_psn_no": psn_no, "k_year": year, "k_insutype": insutype})
    else:
        c.execute(_ACC_INSERT, values | {"psn_no": psn_no, "year": year, "insutype": insutype})


def load_balance(c: Connection, psn_no: str) -> int:
    r = c.execute(_BALANCE, {"psn_no": psn_no}).first()
    return int(r[0]) if r is not None else 0


def save_balance(c: Connection, psn_no: str, balance_fen: int) -> None:
    if not c.execute(_BALANCE_UPDATE, {"k_psn_no": psn_no, "balance_fen": balance_fen}).rowcount:
        c.execute(_ACCOUNT_INSERT, {"psn_no": psn_no, "balance_fen": balance_fen})


