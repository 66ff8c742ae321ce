"""Monitor's tables: alerts and the cases supervisors work, and the history the stateful rules read
(settled encounters, watched item uses, traceability codes sold, persons' death and hardship),
written in the same transaction as the claim's inbox record, so a restarted monitor has it all and
judges no claim twice."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import BigInteger, Index
from sqlmodel import Field, SQLModel

from services.bus.inbox import InboxRecord
from services.bus.outbox import OUTBOX_TABLES


class Alert(SQLModel, table=True):
    __tablename__ = "monitor_alerts"

    alert_id: str = Field(primary_key=True, max_length=80, description="rule id + the claim (or what the rule groups by)")
    rule_id: str = Field(index=True, max_length=24)
    rule_name: str
    family: str = Field(max_length=8)
    sev_deg: str = Field(max_length=8, description="严重程度: 明确违规 / 高度可疑 / 可疑")
    phase: str = Field(max_length=10, description="precheck (事中) or post (事后)")
    fixmedins_code: str = Field(index=True, max_length=12)
    mdtrtarea_admvs: str = Field(index=True, max_length=6)
    msgid: str = Field(index=True, max_length=30)
    psn_no: str = Field(max_length=30)
    setl_id: str | None = None
    vola_cont: str
    vola_amt: Decimal = Field(max_digits=16, decimal_places=2)
    feedetl_sn: str = ""
    case_id: str | None = Field(None, index=True, max_length=40)
    raised_ms: int = Field(sa_type=BigInteger, index=True)


class Case(SQLModel, table=True):
    """A supervisor's case over one hospital's alerts: open → investigating → confirmed / dismissed,
    the amount recovered, the hospital's appeal (申诉) and its answer; every step in `history`."""

    __tablename__ = "monitor_cases"

    case_id: str = Field(primary_key=True, max_length=40)
    fixmedins_code: str = Field(index=True, max_length=12)
    mdtrtarea_admvs: str = Field(index=True, max_length=6)
    status: str = Field(max_length=16)
    title: str
    vola_amt: Decimal = Field(max_digits=16, decimal_places=2)
    recovered_amt: Decimal = Field(Decimal("0.00"), max_digits=16, decimal_places=2)
    appeal: str | None = None
    appeal_answer: str | None = None
    history: bytes = b"[]"  # JSON list of {at_ms, by, action, note}
    opened_by: str
    updated_ms: int = Field(sa_type=BigInteger)


class EpisodeRow(SQLModel, table=True):
    """A settled encounter, for 分解住院, 同时多机构就医, 聚集性就医, 高频就诊, 因病返贫."""

    __tablename__ = "monitor_episodes"
    __table_args__ = (Index("ix_monitor_episodes_psn_begn", "psn_no", "begntime"),
                      Index("ix_monitor_episodes_hosp_day", "fixmedins_code", "begntime"))

    msgid: str = Field(primary_key=True, max_length=30)
    psn_no: str = Field(max_length=30)
    fixmedins_code: str = Field(max_length=12)
    mdtrtarea_admvs: str = Field(max_length=6)
    insuplc_admdvs: str = Field(max_length=6)
    inpatient: bool
    begntime: date
    endtime: date
    diagnoses: str = ""  # comma-separated ICD codes
    medfee: Decimal = Field(max_digits=16, decimal_places=2)
    selfpay: Decimal = Field(max_digits=16, decimal_places=2)
    reversed: bool = False


class ItemUse(SQLModel, table=True):
    """Uses of the items a frequency rule watches (e.g. HbA1c), per person and day."""

    __tablename__ = "monitor_item_uses"
    __table_args__ = (Index("ix_monitor_item_uses_psn_code_day", "psn_no", "code", "day"),)

    msgid: str = Field(primary_key=True, max_length=30)
    feedetl_sn: str = Field(primary_key=True, max_length=30)
    psn_no: str = Field(max_length=30)
    code: str = Field(max_length=50)
    day: date
    cnt: Decimal = Field(max_digits=16, decimal_places=4)


class TraceSold(SQLModel, table=True):
    """The first settlement that sold a pack with this 药品追溯码."""

    __tablename__ = "monitor_trace_codes"

    code: str = Field(primary_key=True, max_length=100)
    msgid: str = Field(max_length=30)
    fixmedins_code: str = Field(max_length=12)


class PersonFacts(SQLModel, table=True):
    """What enrolment says of a person that rules need: death, hardship identities (困难群众)."""

    __tablename__ = "monitor_persons"

    psn_no: str = Field(primary_key=True, max_length=30)
    death_date: date | None = None
    hardship: bytes = b"[]"  # JSON list of {hardship_type, begndate, enddate}
    version: int = 0


class ItemMonth(SQLModel, table=True):
    """An item's quantity billed by a hospital in a month (the statistical outliers' counts)."""

    __tablename__ = "monitor_item_months"

    month: str = Field(primary_key=True, max_length=7)
    code: str = Field(primary_key=True, max_length=50)
    fixmedins_code: str = Field(primary_key=True, max_length=12)
    cnt: Decimal = Field(max_digits=18, decimal_places=4)


class HospitalMonth(SQLModel, table=True):
    """A hospital's settled claims in a month."""

    __tablename__ = "monitor_hospital_months"

    month: str = Field(primary_key=True, max_length=7)
    fixmedins_code: str = Field(primary_key=True, max_length=12)
    claims: int


TABLES: list[type[SQLModel]] = [Alert, Case, EpisodeRow, ItemUse, TraceSold, PersonFacts, ItemMonth, HospitalMonth,
                                InboxRecord, *OUTBOX_TABLES]
