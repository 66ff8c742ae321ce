"""Idempotent inbox: the ids of messages a consumer has applied, written with the effect."""

from __future__ import annotations

from sqlalchemy import BigInteger
from sqlmodel import Field, Session, SQLModel, select

from services.bus.envelope import now_ms


class InboxRecord(SQLModel, table=True):
    __tablename__ = "bus_inbox"

    consumer: str = Field(primary_key=True, max_length=120)
    msg_id: str = Field(primary_key=True, max_length=120)
    processed_ms: int = Field(sa_type=BigInteger)


def already_processed(session: Session, consumer: str, msg_id: str) -> bool:
    """True when the effect of msg_id was committed before; else record it in this transaction."""
    found = session.exec(
        select(InboxRecord.msg_id).where(InboxRecord.consumer == consumer, InboxRecord.msg_id == msg_id)
    ).first()
    if found is not None:
        return True
    session.add(InboxRecord(consumer=consumer, msg_id=msg_id, processed_ms=now_ms()))
    return False
