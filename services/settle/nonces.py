"""Hospitals' x-tif-nonces, kept durably and written together.

On SQLite they live in a file of their own beside the settle database (`nonce_engine`): SQLite has
one writer per file, and in the settle file every nonce write queued behind the hop workers'
transactions and held them up in turn, with the waiting side's event loop blocked in the busy
handler. On a server database (PostgreSQL) they stay in the settle database.

Every signed request waits until its nonce is committed (or found there already), so a replayed
request is refused after a restart and by every API process. The request awaits it on the event
loop, and every nonce that arrived in the meantime goes into the same transaction: a transaction
per request was the largest cost of the hospital interface (docs/performance.md). On SQLite the
transaction runs on the loop: the file has no other writer, a commit is 50–90 µs of CPU, and
handing it to a thread and back added ~170 µs to each request that arrived alone. On PostgreSQL
it runs in the log's own thread: there the commit waits for the server, and the loop must not."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
PRUNE_EVERY_MS = 1_000  # a second of nonces at a time: on SQLite, where the loop writes, ~1 ms to delete at 300/s


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


class NonceLog:
    """`first_use` is the gate's durable check: False when the hospital used the nonce before."""

    def __init__(self, engine: Engine, window_s: int, in_thread: bool | None = None) -> None:
        self.engine, self.window_s = engine, window_s
        create_tables(engine, [GatewayNonce])
        self.transactions = 0
        self._waiting: list[tuple[_Pending, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._due_on: asyncio.AbstractEventLoop | None = None  # SQLite: the loop a write is due on, None when none is
        self.in_thread = engine.dialect.name != "sqlite" if in_thread is None else in_thread
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nonces") if self.in_thread else None
        self._pruned_ms = 0

    async def first_use(self, fixmedins_code: str, nonce: str, now: float) -> bool:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((_Pending(fixmedins_code, nonce, int(now * 1000)), answer))
        if not self.in_thread:
            if self._due_on is not loop:  # after the callbacks already due: requests read in the same turn join
                self._due_on = loop
                loop.call_soon(self._write_on_loop)
        elif self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = loop.create_task(self._write_waiting(), name="nonce-writer")
        return await answer

    def _write_on_loop(self) -> None:
        """Every nonce waiting, in one transaction, here on the loop (SQLite)."""
        self._due_on = None
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        self._write([p for p, _ in batch])
        self._answer(batch)

    async def _write_waiting(self) -> None:
        """Until none is waiting: every nonce waiting, in one transaction in the log's thread."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting, []
            pending = [p for p, _ in batch]
            try:
                await loop.run_in_executor(self._thread, self._write, pending)
            except asyncio.CancelledError:  # the loop is closing: nobody is told a nonce was used
                for _, answer in batch:
                    answer.cancel()
                raise
            except Exception as exc:  # the thread could not run it: every request learns it
                for p in pending:
                    p.error = exc
            self._answer(batch)

    @staticmethod
    def _answer(batch: list[tuple[_Pending, asyncio.Future[bool]]]) -> None:
        for p, answer in batch:
            if answer.done():  # its request went away meanwhile
                continue
            if p.error is not None:
                answer.set_exception(p.error)
            else:
                answer.set_result(p.first)

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
