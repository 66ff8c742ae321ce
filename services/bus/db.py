"""Database engines: SQLite under var/ by default, PostgreSQL where a URL says so."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
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
