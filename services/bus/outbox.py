"""Transactional outbox: events are rows written with the state change; a relay publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

import orjson
from pydantic import BaseModel
from sqlalchemy import BigInteger, Engine, Index, LargeBinary, insert, or_, select, update
from sqlmodel import Column, Field, Session, SQLModel

from services.bus.envelope import Headers, encode, make_headers, now_ms

if TYPE_CHECKING:
    from services.bus.client import Bus

log = logging.getLogger("yibao.bus.outbox")
LEASE_MS = 30_000


class OutboxRow(SQLModel, table=True):
    __tablename__ = "bus_outbox"
    # the relay's question, "what is still to send, in order", answered from the index alone
    __table_args__ = (Index("ix_outbox_pending", "service", "sent_ms", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    service: str = Field(max_length=40)
    topic: str = Field(max_length=200)
    key: str | None = Field(default=None, max_length=200)
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_ms: int = Field(sa_type=BigInteger)
    sent_ms: int | None = Field(default=None, sa_type=BigInteger)
    lease_owner: str | None = Field(default=None, max_length=40)
    lease_until: int | None = Field(default=None, sa_type=BigInteger)


def add(session: Session, service: str, topic: str, key: str | None, event: BaseModel,
        headers: Headers | None = None, source: str | None = None, value: bytes | None = None,
        **header_args: object) -> None:
    """Stage an event in the caller's transaction; it is published only if that commits.

    `value`: the event already encoded, when the caller needed the bytes too."""
    hs = headers if headers is not None else make_headers(
        event, source or f"/yibao/{service}", **header_args)  # type: ignore[arg-type]
    # a Core insert: the ORM's unit of work costs more than the row itself on the hot path
    session.connection().execute(insert(OUTBOX).values(
        service=service, topic=topic, key=key, value=value if value is not None else encode(event),
        headers=orjson.dumps([[k, v.decode()] for k, v in hs]), created_ms=now_ms(),
    ))


OUTBOX = OutboxRow.__table__  # type: ignore[attr-defined]


class OutboxRelay:
    """Publishes unsent rows in order and marks them sent; wakes at once when notified."""

    def __init__(self, engine: Engine, service: str, bus: Bus, batch: int = 500,
                 keep_sent_s: int = 600) -> None:
        self.engine, self.service, self.bus, self.batch = engine, service, bus, batch
        self.keep_sent_s = keep_sent_s  # sent rows are kept this long, for a re-publish
        self.gather_s = 0.003
        self._pruned = now_ms()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.owner = uuid.uuid4().hex[:16]
        self.published = 0

    def notify(self) -> None:
        """Wake the relay; safe from the loop and from worker threads."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.service}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.drain_once()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # no news: poll anyway
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            # Under load many commits notify within a few ms: gather them into one drain.
            await asyncio.sleep(self.gather_s)
            self._wake.clear()
            try:
                while await self.drain_once() == self.batch:
                    pass
                if now_ms() - self._pruned > 60_000:
                    self.prune(self.keep_sent_s)
                    self._pruned = now_ms()
            except asyncio.CancelledError:
                raise
            except Exception:  # broker away or database busy: the rows stay, try again soon
                log.warning("outbox relay for %s failed; will retry", self.service, exc_info=True)
                await asyncio.sleep(0.5)

    async def drain_once(self) -> int:
        """Lease a batch of unsent rows, publish them in order, mark them sent.

        The lease lets several processes relay from one database (SQLite has no SKIP LOCKED):
        a row is published by the process holding its lease; a lease left by a crashed
        process expires and another relay takes the row over.
        """
        now = now_ms()
        free = or_(OUTBOX.c.lease_until.is_(None), OUTBOX.c.lease_until < now)
        with Session(self.engine) as s, s.begin():
            c = s.connection()
            candidates = c.execute(
                select(OUTBOX.c.id, OUTBOX.c.topic, OUTBOX.c.key, OUTBOX.c.value, OUTBOX.c.headers)
                .where(OUTBOX.c.service == self.service, OUTBOX.c.sent_ms.is_(None), free)  # ix_outbox_pending
                .order_by(OUTBOX.c.id).limit(self.batch)).all()
            if not candidates:
                return 0
            leased = {r[0] for r in c.execute(
                update(OUTBOX)
                .where(OUTBOX.c.id.in_([r.id for r in candidates]), OUTBOX.c.sent_ms.is_(None), free)
                .values(lease_owner=self.owner, lease_until=now + LEASE_MS)
                .returning(OUTBOX.c.id))}
        rows = [r for r in candidates if r.id in leased]  # another relay may hold the rest
        if not rows:
            return 0
        futures = []
        for r in rows:
            hs = [(k, v.encode()) for k, v in orjson.loads(r.headers)]
            futures.append(await self.bus.send_raw(r.topic, r.key, r.value, hs))
        results = await asyncio.gather(*futures, return_exceptions=True)
        sent = [r.id for r, res in zip(rows, results, strict=True) if not isinstance(res, BaseException)]
        with Session(self.engine) as s, s.begin():
            if sent:
                s.connection().execute(update(OUTBOX).where(OUTBOX.c.id.in_(sent)).values(sent_ms=now_ms()))
            failed = [r.id for r in rows if r.id not in set(sent)]
            if failed:  # give the lease back at once: the next round retries them
                s.connection().execute(update(OUTBOX).where(OUTBOX.c.id.in_(failed)).values(lease_until=None))
        self.published += len(sent)
        if len(sent) < len(rows):
            first = next(res for res in results if isinstance(res, BaseException))
            raise RuntimeError(f"{len(rows) - len(sent)} of {len(rows)} sends failed: {first!r}")
        return len(rows)

    def republish_recent(self, window_s: int) -> int:
        """After the broker lost its data: publish again what was sent in the last window."""
        since = now_ms() - window_s * 1000
        with Session(self.engine) as s, s.begin():
            n = s.connection().execute(
                update(OUTBOX).where(OUTBOX.c.service == self.service, OUTBOX.c.sent_ms >= since)
                .values(sent_ms=None, lease_until=None)
            ).rowcount or 0
        log.warning("broker epoch changed: re-publishing %d recent %s events", n, self.service)
        self.notify()
        return n

    def prune(self, older_than_s: int) -> None:
        """Forget rows sent long ago (past the republish window)."""
        cutoff = now_ms() - older_than_s * 1000
        with Session(self.engine) as s, s.begin():
            s.connection().execute(OUTBOX.delete().where(OUTBOX.c.service == self.service,
                                                         OUTBOX.c.sent_ms < cutoff))
