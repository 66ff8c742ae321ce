"""Hot-path statements run on the driver's cursor of the caller's connection, inside its transaction.

SQLAlchemy's Core spends about 30 µs of CPU on each statement before and after the driver's ~5 µs
(the compiled-cache lookup, parameter processing, the result's wrapping). A settlement runs a
couple of dozen statements, so the insured and treatment cities' hops use `Statement`s instead:
SQL text written once with `:name` parameters, rendered once per driver (sqlite3 takes `:name`,
psycopg `%(name)s`) and executed on the driver's cursor. No type processing happens: parameters
must be what the driver stores (int, str, bytes, None), and what comes back is the driver's
(a date is text on SQLite; see `as_date`). The driver's errors are raised as SQLAlchemy's
(`sqlalchemy.exc.IntegrityError` and the rest), as Core would raise them.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, overload

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

_NAME = re.compile(r"(?<![:\w]):(\w+)")


class Statement:
    """One SQL statement with `:name` parameters, run on a connection's driver cursor."""

    def __init__(self, sql: str) -> None:
        self.sql = " ".join(sql.split())
        self._pyformat = _NAME.sub(r"%(\1)s", self.sql.replace("%", "%%"))

    def text_for(self, conn: Connection) -> str:
        return self._pyformat if conn.dialect.paramstyle == "pyformat" else self.sql

    def run(self, conn: Connection, params: dict[str, Any] | None = None) -> Any:
        """The driver's cursor after executing; read it with fetchone(), fetchall(), rowcount."""
        return self._execute(conn, params or {}, many=False)

    def run_many(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """The statement once per parameter set, in one driver call."""
        if rows:
            self._execute(conn, rows, many=True)

    def _execute(self, conn: Connection, params: Any, many: bool) -> Any:
        sql = self.text_for(conn)
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            (cur.executemany if many else cur.execute)(sql, params)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect,
                                      ismulti=many) from exc
        return cur

    def one(self, conn: Connection, params: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
        row = self.run(conn, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, conn: Connection, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.run(conn, params).fetchall()]

    def count(self, conn: Connection, params: dict[str, Any] | None = None) -> int:
        """Rows an INSERT, UPDATE or DELETE changed."""
        return int(self.run(conn, params).rowcount)


@overload
def as_date(value: None) -> None: ...
@overload
def as_date(value: date | str) -> date: ...
def as_date(value: date | str | None) -> date | None:
    """A DATE column as read by the driver: psycopg gives a date, sqlite3 the ISO text SQLAlchemy wrote."""
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(value)
