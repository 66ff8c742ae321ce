"""Settle's tables: claims at the treatment side; views, ledger and accumulators at the insured city."""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
from sqlalchemy import BigInteger, Connection, LargeBinary
from sqlmodel import Column, Field, SQLModel

from schemas.common import FilingType
from services.bus.inbox import InboxRecord
from services.bus.outbox import OUTBOX_TABLES
from services.bus.sql import Statement, as_date
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
                                InboxRecord, *OUTBOX_TABLES]


# --- the insured city's hot path (one settlement = a handful of statements) ---

LEDGER = LedgerEntry.__table__  # type: ignore[attr-defined]
VOIDED = VoidedRequest.__table__  # type: ignore[attr-defined]
ACC_FIELDS = ("dedc_used_ip", "dedc_used_op", "hifp_paid_ip", "hifp_paid_op", "compliant_selfpay", "critical_paid",
              "chronic_paid", "maf_dedc_used", "maf_paid")


# The hot path's statements run on the driver's cursor (services.bus.sql): Core cost ~30 µs each.
_PERSON = ("psn_no, psn_name, gend, insuplc_admdvs, insutype, psn_type, psn_insu_stas, paid_through, voucher_active, "
           "begndate, benefit_from, death_date, brdy, cvlserv_flag, hardship")
_ENROLMENTS = Statement(f"SELECT {_PERSON} FROM settle_person_view WHERE psn_no = :psn_no")
_HOLDERS_BY_DIGEST = Statement(f"""SELECT {_PERSON} FROM settle_person_view WHERE insuplc_admdvs = :insuplc
                                   AND (cert_digest = :digest OR card_digest = :digest)""")
_HOLDERS_BY_PSN = Statement(f"SELECT {_PERSON} FROM settle_person_view WHERE insuplc_admdvs = :insuplc AND psn_no = :psn_no")
_FILINGS = Statement("""SELECT fil_id, fil_type, target_admdvs, begndate, enddate, status FROM settle_filing_view
                        WHERE psn_no = :psn_no""")
_ACC_WHERE = "WHERE psn_no = :psn_no AND year = :year AND insutype = :insutype"
_ACC_LOAD = Statement(f"SELECT {', '.join(ACC_FIELDS)} FROM settle_accumulator {_ACC_WHERE}")
_ACC_YEAR = Statement(f"SELECT insutype, {', '.join(ACC_FIELDS)} FROM settle_accumulator WHERE psn_no = :psn_no AND year = :year")
_ACC_UPDATE = Statement(f"UPDATE settle_accumulator SET {', '.join(f'{f} = :{f}' for f in ACC_FIELDS)} {_ACC_WHERE}")
_ACC_INSERT = Statement(f"""INSERT INTO settle_accumulator (psn_no, year, insutype, {', '.join(ACC_FIELDS)})
                            VALUES (:psn_no, :year, :insutype, {', '.join(f':{f}' for f in ACC_FIELDS)})""")
_BALANCE = Statement("SELECT balance_fen FROM settle_account WHERE psn_no = :psn_no")
_BALANCE_UPDATE = Statement("UPDATE settle_account SET balance_fen = :balance_fen WHERE psn_no = :psn_no")
_ACCOUNT_INSERT = Statement("INSERT INTO settle_account (psn_no, balance_fen) VALUES (:psn_no, :balance_fen)")
_VOIDED_BY = Statement("SELECT by_msgid FROM settle_voided WHERE msgid = :msgid")


def voided_by(c: Connection, msgid: str) -> str | None:
    """The 2601 that undid `msgid` before it was settled here, if one did."""
    r = _VOIDED_BY.one(c, {"msgid": msgid})
    return None if r is None else str(r[0])


def _person(r: tuple[Any, ...]) -> PersonState:
    return PersonState(psn_no=r[0], psn_name=r[1], gend=r[2], insuplc_admdvs=r[3], insutype=r[4], psn_type=r[5],
                       psn_insu_stas=r[6], paid_through=as_date(r[7]), voucher_active=bool(r[8]),
                       begndate=as_date(r[9]), benefit_from=as_date(r[10]), death_date=as_date(r[11]),
                       brdy=as_date(r[12]), cvlserv_flag=bool(r[13]), hardship=bytes(r[14] or b"[]"))


def load_enrolments(c: Connection, psn_no: str) -> list[PersonState]:
    return [_person(r) for r in _ENROLMENTS.all(c, {"psn_no": psn_no})]


def load_holders(c: Connection, insuplc: str, cert_digest: str | None, psn_no: str) -> list[PersonState]:
    """The enrolments at `insuplc` of whoever holds this credential digest (ID card or
    social-security card: matched by digest, never by the number), or of psn_no without one."""
    if cert_digest:
        rows = _HOLDERS_BY_DIGEST.all(c, {"insuplc": insuplc, "digest": cert_digest})
    else:
        rows = _HOLDERS_BY_PSN.all(c, {"insuplc": insuplc, "psn_no": psn_no})
    return [_person(r) for r in rows]


def filings_of(c: Connection, psn_no: str) -> list[FilingState]:
    return [FilingState(fil_id=r[0], fil_type=FilingType(r[1]), target_admdvs=r[2], begndate=as_date(r[3]),
                        enddate=as_date(r[4]), status=r[5]) for r in _FILINGS.all(c, {"psn_no": psn_no})]


def load_accumulators(c: Connection, psn_no: str, year: int, insutype: str) -> Accumulators | None:
    r = _ACC_LOAD.one(c, {"psn_no": psn_no, "year": year, "insutype": insutype})
    return Accumulators(**dict(zip(ACC_FIELDS, r, strict=True))) if r is not None else None


def accumulators_of_year(c: Connection, psn_no: str, year: int) -> dict[str, Accumulators]:
    """insutype → that year's accumulators."""
    return {r[0]: Accumulators(**dict(zip(ACC_FIELDS, r[1:], strict=True))) for r in _ACC_YEAR.all(c, {"psn_no": psn_no, "year": year})}


def save_accumulators(c: Connection, psn_no: str, year: int, insutype: str, acc: Accumulators,
                      existed: bool) -> None:
    values: dict[str, object] = {f: getattr(acc, f) for f in ACC_FIELDS}
    values |= {"psn_no": psn_no, "year": year, "insutype": insutype}
    (_ACC_UPDATE if existed else _ACC_INSERT).run(c, values)


def load_balance(c: Connection, psn_no: str) -> int:
    r = _BALANCE.one(c, {"psn_no": psn_no})
    return int(r[0]) if r is not None else 0


def save_balance(c: Connection, psn_no: str, balance_fen: int) -> None:
    if not _BALANCE_UPDATE.count(c, {"psn_no": psn_no, "balance_fen": balance_fen}):
        _ACCOUNT_INSERT.run(c, {"psn_no": psn_no, "balance_fen": balance_fen})


