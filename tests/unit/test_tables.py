"""A table made by an older version takes the nullable columns added since (services/bus/db.py
`add_missing_columns`), on SQLite and PostgreSQL; a column that cannot be added says what to do."""

from __future__ import annotations

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    inspect,
    select,
)

from services.bus.db import add_missing_columns


def shape(*extra: Column) -> Table:  # type: ignore[type-arg]
    return Table("tables_old", MetaData(), Column("id", Integer, primary_key=True), Column("name", String(20)),
                 *extra)


def test_a_new_nullable_column_is_added_and_old_rows_keep_theirs(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = engine_factory("tables")
    old = shape()
    old.metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(old.insert().values(id=1, name="before"))
    new = shape(Column("fanout", LargeBinary, nullable=True))
    add_missing_columns(engine, [new])
    add_missing_columns(engine, [new])  # a second start (or a second process) finds it there
    assert [c["name"] for c in inspect(engine).get_columns("tables_old")] == ["id", "name", "fanout"]
    with engine.begin() as c:
        c.execute(new.insert().values(id=2, name="after", fanout=b"[]"))
        assert c.execute(select(new.c.name, new.c.fanout).order_by(new.c.id)).all() == [("before", None),
                                                                                         ("after", b"[]")]


def test_a_new_required_column_is_refused_with_what_to_do(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = engine_factory("tables")
    shape().metadata.create_all(engine)
    with pytest.raises(RuntimeError, match="lacks column created_ms.*make clean"):
        add_missing_columns(engine, [shape(Column("created_ms", Integer, nullable=False))])
