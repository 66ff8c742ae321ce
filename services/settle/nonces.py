"""Hospitals' x-tif-nonces, kept durably and written together.

On SQLite they live in a file of their own beside the settle database (`nonce_engine`): SQLite has
one writer per file, and in the settle file every nonce write queued behind the hop workers'
transactions and held them up in turn, with the waiting side's event loop blocked in the busy
handler. On a server database (PostgreSQL) they stay in the settle database.

Every signed request waits until its nonce is committed (or found there already), so a replayed
request is refused after a restart and by every API process. Requests that arrive together share
one transaction: the first to take the writer's lock writes every nonce queued by then, and the
others find theirs done; a transaction per request was the largest cost of the hospital
interface (docs/performance.md)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import BigInteger, Engine
from sqlmodel import Field, SQLModel

from services.bus.db import create_tables, make_engine
from services.bus.sql import Statement


class GatewayNonce(SQLModel, table=True):
    """An x-tif-nonce already used by a hospital, kept for the signature window so that a replayed
    signed request is refused after a restart too."""

    __tablename__ = "settle_gateway_nonce"

    fixmedins_code: str = Field(primary_key=True, max_length=12)
    nonce: str = Field(primary_key=True, max_length=64)
    seen_ms: int = Field(sa_type=BigInteger, index=True)


NONCES = GatewayNonce.__table__  # type: ignore[attr-defined]
# the driver's rowcount says whether the row was new (SQLite and PostgreSQL both take this form)
_INSERT = Statement("""INSERT INTO settle_gateway_nonce (fixmedins_code, nonce, seen_ms)
                       VALUES (:fixmedins_code, :nonce, :seen_ms) ON CONFLICT DO NOTHING""")
PRUNE_EVERY_MS = 10_000


def nonce_engine(settle_engine: Engine) -> Engine:
    """Where the nonces go: `<settle file>-nonces.db` beside a SQLite settle database, else the
    settle database itself."""
    db = settle_engine.url.database
    if settle_engine.dialect.name != "sqlite" or not db or db == ":memory:":
        return settle_engine
    path = Path(db)
    return make_engine(f"sqlite:///{path.with_name(path.stem + '-nonces.db')}")


@dataclass
class _Pending:
    fixmedins_code: str
    nonce: str
    seen_ms: int
    first: bool = False
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class NonceLog:
    """`first_use` is the gate's durable check: False when the hospital used the nonce before."""

    def __init__(self, engine: Engine, window_s: int) -> None:
        self.engine, self.window_s = engine, window_s
        create_tables(engine, [GatewayNonce])
        self.transactions = 0
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._writer = threading.Lock()
        self._pruned_ms = 0

    def first_use(self, fixmedins_code: str, nonce: str, now: float) -> bool:
        mine = _Pending(fixmedins_code, nonce, int(now * 1000))
        with self._queue_lock:
            self._queue.append(mine)
        with self._writer:
            if not mine.done.is_set():  # nobody took it before us: write it, and all queued with it
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._write(batch)
        if mine.error is not None:
            raise mine.error
        return mine.first

    def _write(self, batch: list[_Pending]) -> None:
        newest = max(p.seen_ms for p in batch)
        try:
            with self.engine.begin() as c:
                if c.dialect.name == "postgresql":  # a nonce lost with the last few ms before a crash is
                    c.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")  # worth less than an fsync
                if newest - self._pruned_ms >= PRUNE_EVERY_MS:  # older than the window: refused by their timestamp
                    c.execute(NONCES.delete().where(NONCES.c.seen_ms < newest - self.window_s * 1000))
                    self._pruned_ms = newest
                for p in batch:  # a nonce twice in one batch: the second finds the first
                    p.first = _INSERT.count(c, {"fixmedins_code": p.fixmedins_code, "nonce": p.nonce,
                                                "seen_ms": p.seen_ms}) == 1
            self.transactions += 1
        except BaseException as exc:  # every request of the batch learns it (the gate answers it)
            for p in batch:
                p.error, p.first = exc, False
        finally:
            for p in batch:
                p.done.set()
