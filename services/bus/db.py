"""Database engines: SQLite under var/ by default, PostgreSQL where a URL says so."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, SQLModel, create_engine


def database_url(service: str, var_dir: Path, url: str | None = None) -> str:
    """`url` (the settings' database for this service), else a SQLite file per service under var_dir."""
    if url:
        return url
    var_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{var_dir / (service + '.db')}"


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def create_tables(engine: Engine, tables: Sequence[type[SQLModel]]) -> None:
    """Create what is missing; several processes of one service may race here at start-up."""
    for attempt in range(5):
        try:
            SQLModel.metadata.create_all(engine, tables=[t.__table__ for t in tables])  # type: ignore[attr-defined]
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))  # another process created it meanwhile: check again


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: everything written inside commits together or not at all."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


class Tx(Protocol):
    """What writers on the hot path need of a transaction: its connection, and `info` for what
    runs after it commits (`after_commit`). An ORM Session is one; so is a `Unit`."""

    @property
    def info(self) -> dict[Any, Any]: ...

    def connection(self) -> Connection: ...


class Unit:
    """A transaction on a Core connection, for writers that need no ORM objects: an ORM Session
    costs ~0.1 ms more per transaction than the connection under it."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.info: dict[Any, Any] = {}

    def connection(self) -> Connection:
        return self._conn


@contextmanager
def unit(engine: Engine) -> Iterator[Unit]:
    """Like `transaction`, on a Core connection: commits at the end, or rolls back what raised."""
    with engine.begin() as conn:
        u = Unit(conn)
        yield u
    _committed(u.info)


_AFTER_COMMIT = "yibao.after_commit"


def after_commit(tx: Tx, fn: Callable[[], None]) -> None:
    """Run `fn` once the transaction has committed; never if it rolls back."""
    tx.info.setdefault(_AFTER_COMMIT, []).append(fn)


def _committed(info: dict[Any, Any]) -> None:
    for fn in info.pop(_AFTER_COMMIT, ()):
        fn()


# Every ORM session (sqlmodel's included) runs them too.
event.listen(OrmSession, "after_commit", lambda session: _committed(session.info))
event.listen(OrmSession, "after_rollback", lambda session, *_: session.info.pop(_AFTER_COMMIT, None))
