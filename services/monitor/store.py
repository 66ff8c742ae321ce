"""Monitor's tables: alerts raised."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel

from services.bus.inbox import InboxRecord
from services.bus.outbox import OutboxRow


class Alert(SQLModel, table=True):
    __tablename__ = "monitor_alert"

    alert_id: str = Field(primary_key=True, max_length=40)
    rule_id: str = Field(max_length=20)
    rule_name: str
    fixmedins_code: str = Field(index=True, max_length=12)
    msgid: str = Field(index=True, max_length=30)
    psn_no: str = Field(max_length=30)
    setl_id: str | None = None
    vola_cont: str
    vola_amt: Decimal = Field(max_digits=16, decimal_places=2)
    sev_deg: str
    feedetl_sn: str = ""
    status: str = "open"
    raised_ms: int = Field(sa_type=BigInteger)


TABLES: list[type[SQLModel]] = [Alert, InboxRecord, OutboxRow]
