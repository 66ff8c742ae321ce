"""Database engines: SQLite under var/ by default, PostgreSQL where a URL says so.

A SQLite file is written in WAL mode, and its checkpoints (copying the log back into the file, and
the only fsyncs under synchronous=NORMAL) run in a thread of the process (`Checkpointer`), not in
whichever commit crosses SQLite's automatic threshold: that commit held its event loop for the
copy and the fsync.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Table, event, inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, SQLModel, create_engine

log = logging.getLogger("yibao.db")


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
        path = engine.url.database
        on_file = path if path and path != ":memory:" and not url.startswith("sqlite:///file:") else None

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            if on_file:
                cur.execute("PRAGMA wal_autocheckpoint=0")  # CHECKPOINTS does it, off the loop
            cur.close()

        if on_file:
            CHECKPOINTS.watch(os.path.abspath(on_file))
        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


class Checkpointer:
    """Checkpoints the WAL of every SQLite file this process opened, from one thread, every
    `interval_s`: first PASSIVE (copies what no reader still needs without taking a lock, so
    writers and readers go on meanwhile), then RESTART for what the writers added meanwhile, which
    waits at most `restart_wait_s` for readers and holds writers only while it copies that rest.
    A file that is gone is forgotten. Without `background`, only `run_once` checkpoints (tests)."""

    def __init__(self, interval_s: float = 0.5, background: bool = True, restart_wait_s: float = 0.1) -> None:
        self.interval_s, self.background, self.restart_wait_s = interval_s, background, restart_wait_s
        self.paths: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, path: str) -> None:
        with self._lock:
            self.paths.add(path)
            if self._thread is None and self.background:
                self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self.run_once()

    def run_once(self) -> None:
        with self._lock:
            paths = sorted(self.paths)
        for path in paths:
            if not os.path.exists(path):
                with self._lock:
                    self.paths.discard(path)
                continue
            try:
                conn = sqlite3.connect(path, timeout=self.restart_wait_s)
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the bulk, while writers go on
                    # the rest, and the log starts again from its beginning: writers wait for this
                    # short part only (a PASSIVE checkpoint alone never catches up with them, and
                    # the log would grow without end)
                    conn.execute("PRAGMA wal_checkpoint(RESTART)")
                finally:
                    conn.close()
            except sqlite3.Error as exc:  # busy, or being replaced: the next round tries again
                log.debug("checkpoint of %s skipped: %s", path, exc)


CHECKPOINTS = Checkpointer()


def create_tables(engine: Engine, tables: Sequence[type[SQLModel]]) -> None:
    """Create what is missing, and add the nullable columns a table made by an older version
    lacks; several processes of one service may race here at start-up."""
    for attempt in range(5):
        try:
            SQLModel.metadata.create_all(engine, tables=[t.__table__ for t in tables])  # type: ignore[attr-defined]
            add_missing_columns(engine, [t.__table__ for t in tables])  # type: ignore[attr-defined]
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))  # another process created it meanwhile: check again


def add_missing_columns(engine: Engine, tables: Sequence[Table]) -> None:
    """The nullable columns a table lacks, added (`ALTER TABLE ... ADD COLUMN`): a table made by an
    older version takes a new optional column without `make clean`. Any other change to a table
    still needs its database dropped."""
    with engine.begin() as conn:
        have = inspect(conn)
        for table in tables:
            present = {c["name"] for c in have.get_columns(table.name)}
            for col in table.columns:
                if col.name in present:
                    continue
                if not col.nullable:
                    raise RuntimeError(f"table {table.name} lacks column {col.name}, which cannot be added to "
                                       "rows already there: drop the database (make clean)")
                kind = col.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}'))
                log.info("table %s: column %s added", table.name, col.name)


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
