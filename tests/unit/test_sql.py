"""Hot-path statements on the driver's cursor (services/bus/sql.py), on SQLite and PostgreSQL: they
run inside the caller's transaction, take `:name` parameters on both drivers, and fail as Core would."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import Column, Date, Engine, Integer, MetaData, String, Table, text
from sqlalchemy.exc import IntegrityError

from services.bus.sql import Statement, as_date

META = MetaData()
ITEMS = Table("sql_items", META, Column("k", String(10), primary_key=True), Column("n", Integer),
              Column("day", Date), Column("note", String(20)))
INSERT = Statement("INSERT INTO sql_items (k, n, day, note) VALUES (:k, :n, :day, :note)")
READ = Statement("SELECT n, day, note FROM sql_items WHERE k = :k")
BUMP = Statement("UPDATE sql_items SET n = n + :by WHERE k = :k")


@pytest.fixture
def engine(engine_factory) -> Engine:
    e: Engine = engine_factory("sql")
    META.create_all(e)
    return e


def test_statements_read_and_write_in_the_callers_transaction(engine: Engine) -> None:
    with engine.begin() as c:
        INSERT.run(c, {"k": "a", "n": 1, "day": "2026-12-06", "note": "50% off, a_b"})
        assert BUMP.count(c, {"k": "a", "by": 2}) == 1
        assert BUMP.count(c, {"k": "nobody", "by": 2}) == 0
        BUMP.run_many(c, [{"k": "a", "by": 1}, {"k": "a", "by": 1}])
        BUMP.run_many(c, [])
        n, day, note = READ.one(c, {"k": "a"}) or ()
        assert (n, as_date(day), note) == (5, date(2026, 12, 6), "50% off, a_b")  # a literal % survives pyformat
    with engine.begin() as c:
        INSERT.run(c, {"k": "b", "n": 1, "day": None, "note": None})
        c.rollback()
    with engine.connect() as c:
        assert READ.one(c, {"k": "b"}) is None  # rolled back with the caller's transaction
        assert c.execute(text("SELECT count(*) FROM sql_items")).scalar() == 1  # Core sees what they wrote


def test_a_driver_error_is_raised_as_sqlalchemys(engine: Engine) -> None:
    with engine.begin() as c:
        INSERT.run(c, {"k": "a", "n": 1, "day": None, "note": None})
    with pytest.raises(IntegrityError), engine.begin() as c:
        INSERT.run(c, {"k": "a", "n": 2, "day": None, "note": None})
    with pytest.raises(IntegrityError), engine.begin() as c:
        INSERT.run_many(c, [{"k": "c", "n": 2, "day": None, "note": None}] * 2)


def test_names_are_rendered_for_each_driver() -> None:
    s = Statement("SELECT a FROM t WHERE x = :x AND y LIKE :y ESCAPE '/' AND z = '10:30' AND w::text = :w")
    assert s._pyformat == ("SELECT a FROM t WHERE x = %(x)s AND y LIKE %(y)s ESCAPE '/' AND z = '10:30' "
                           "AND w::text = %(w)s")
    assert as_date(None) is None and as_date("2026-01-02") == date(2026, 1, 2) == as_date(date(2026, 1, 2))
