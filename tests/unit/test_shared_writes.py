"""services.bus.shared: the writes of a fetched batch share transactions, and one that fails is
redone item by item, on a real SQLite database."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, select
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from services.bus.shared import LogLine, write_shared

META = MetaData()
ROWS = Table("rows", META, Column("id", Integer, primary_key=True), Column("note", String))
log = logging.getLogger("test.shared")


@pytest.fixture
def engine() -> Engine:
    e = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    META.create_all(e)
    return e


def insert_unless_bad(s: Session, item: int) -> LogLine:
    s.connection().execute(ROWS.insert().values(id=item, note="written"))
    if item == 3:
        raise RuntimeError("the ledger's disk is full")
    return "wrote %d", (item,)


def count(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(ROWS)).scalar_one())


async def test_one_failing_write_costs_the_others_nothing(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "test.shared"):
        errors = await write_shared(engine, [1, 2, 3, 4], insert_unless_bad, log, hold_s=60.0)
    assert "a shared transaction of 3 writes failed" in caplog.text  # all in one until the third failed
    assert [type(e).__name__ if e else None for e in errors] == [None, None, "RuntimeError", None]
    assert count(engine) == 3 and "wrote 4" in caplog.text and "wrote 3" not in caplog.text


async def test_a_short_hold_commits_in_several_transactions(engine: Engine,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "test.shared"):
        errors = await write_shared(engine, [10, 11, 12], insert_unless_bad, log, hold_s=-1.0)  # one write each
    assert errors == [None, None, None] and count(engine) == 3 and caplog.text == ""
    again = await write_shared(engine, [10, 13], insert_unless_bad, log, hold_s=-1.0)  # 10 is there already
    assert type(again[0]).__name__ == "IntegrityError" and again[1] is None and count(engine) == 4
