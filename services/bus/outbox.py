"""Transactional outbox: events are rows written with the state change; a relay publishes them.

A row is one record: its headers, and where it goes: `topic` and `key`, and in `fanout` any
further (topic, key) the same record goes to (an answer sent to the hospital, the monitor and the
waiting API is stored once, not three times). A row is marked sent when every send of it is
acknowledged; if one fails, all of its sends go again (consumers are idempotent).

Its value lives apart, in `bus_outbox_value` under the row's id: marking a row sent, leasing it
and re-publishing it rewrite the row, and SQLite rewrites a row's whole record, a 70-KB answer
included (~240 µs a row against ~3 µs without it). Rows written before that table existed keep
their value in `bus_outbox.value`; rows written since leave it empty, and the relay reads either."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel
from sqlalchemy import BigInteger, Engine, Index, LargeBinary, func, or_, select, update
from sqlmodel import Column, Field, SQLModel

from services.bus.db import Tx, after_commit
from services.bus.envelope import Headers, encode, make_headers, now_ms
from services.bus.sql import Statement
from services.metrics import OUTBOX as OUTBOX_PUBLISHED

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
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # b"": in bus_outbox_value
    headers: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    fanout: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))  # JSON [[topic, key]]
    created_ms: int = Field(sa_type=BigInteger)
    sent_ms: int | None = Field(default=None, sa_type=BigInteger)
    lease_owner: str | None = Field(default=None, max_length=40)
    lease_until: int | None = Field(default=None, sa_type=BigInteger)


class OutboxValue(SQLModel, table=True):
    """The value of the outbox row with the same id, apart from the row (see the module's doc)."""

    __tablename__ = "bus_outbox_value"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


OUTBOX_TABLES: list[type[SQLModel]] = [OutboxRow, OutboxValue]  # what a service with an outbox creates
OUTBOX = OutboxRow.__table__  # type: ignore[attr-defined]
VALUES = OutboxValue.__table__  # type: ignore[attr-defined]
INSERT = Statement("""INSERT INTO bus_outbox (service, topic, "key", value, headers, fanout, created_ms, lease_owner,
                                               lease_until)
                       VALUES (:service, :topic, :key, :value, :headers, :fanout, :created_ms, :lease_owner,
                               :lease_until)
                       RETURNING id""")
INSERT_VALUE = Statement("INSERT INTO bus_outbox_value (id, value) VALUES (:id, :value)")
MARK_SENT = Statement("UPDATE bus_outbox SET sent_ms = :sent_ms WHERE id = :id")
RELEASE = Statement("UPDATE bus_outbox SET lease_until = NULL WHERE id = :id")  # for the poll to send it again


Target = tuple[str, str | None]  # a topic and the record's key on it


@dataclass(frozen=True)
class Staged:
    id: int
    targets: tuple[Target, ...]
    value: bytes
    headers: Headers


def targets_of(topic: str, key: str | None, fanout: bytes | None) -> tuple[Target, ...]:
    """A row's (topic, key) pairs: its own, then its fan-out's."""
    return ((topic, key), *((t, k) for t, k in orjson.loads(fanout))) if fanout else ((topic, key),)


# The relay of each (engine, service) in this process: a commit hands its rows straight to it.
_RELAYS: dict[tuple[int, str], OutboxRelay] = {}


def add(session: Tx, service: str, topic: str, key: str | None, event: BaseModel,
        headers: Headers | None = None, source: str | None = None, value: bytes | None = None,
        fanout: Sequence[Target] = (), **header_args: object) -> None:
    """Stage an event in the caller's transaction; it is published only if that commits.

    `value`: the event already encoded, when the caller needed the bytes too. `fanout`: further
    topics (and keys) the same record goes to, stored once with it. When this
    process runs the service's relay, the row is leased to it and handed over at commit, so
    it is published at once without being read back; otherwise the relay's poll finds it."""
    hs = headers if headers is not None else make_headers(
        event, source or f"/yibao/{service}", **header_args)  # type: ignore[arg-type]
    body = value if value is not None else encode(event)
    conn = session.connection()
    relay = _RELAYS.get((id(conn.engine), service))
    if relay is not None and relay.engine is not conn.engine:
        relay = None
    more = orjson.dumps([[t, k] for t, k in fanout]) if fanout else None
    inserted = INSERT.one(conn, {
        "service": service, "topic": topic, "key": key, "value": b"",
        "headers": orjson.dumps([[k, v.decode()] for k, v in hs]), "fanout": more, "created_ms": now_ms(),
        "lease_owner": relay.owner if relay else None,
        "lease_until": now_ms() + relay.lease_ms if relay else None,
    })
    assert inserted is not None
    row_id = int(inserted[0])
    INSERT_VALUE.run(conn, {"id": row_id, "value": body})
    if relay is not None:  # committed rows go to the relay, rolled-back ones nowhere
        after_commit(session, partial(relay.hand_over, Staged(row_id, ((topic, key), *fanout), body, hs)))


class OutboxRelay:
    """Publishes committed rows and marks them sent.

    The fast path: a commit in this process hands its rows over (already leased to this relay)
    and they are sent at once, without waiting for the acknowledgements of earlier sends;
    acknowledged rows are marked sent in batches. The poll, twice a second and when notified,
    publishes what the fast path did not: rows of other processes, rows whose send failed, rows
    whose relay died (after its lease ran out), rows marked for re-publishing. After such a
    failure, a row may go out after newer ones; consumers are idempotent and views versioned.
    """

    def __init__(self, engine: Engine, service: str, bus: Bus, batch: int = 500,
                 keep_sent_s: int = 600, lease_ms: int = LEASE_MS) -> None:
        self.engine, self.service, self.bus, self.batch = engine, service, bus, batch
        self.keep_sent_s = keep_sent_s  # sent rows are kept this long, for a re-publish
        self.lease_ms = lease_ms
        self.poll_s = 0.5
        self.mark_s = 0.05
        self._pruned = now_ms()
        self._wake = asyncio.Event()
        self._poll_now = True
        self._ready: list[Staged] = []
        self._acked: list[int] = []
        self._failed: list[int] = []
        self._inflight: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.owner = uuid.uuid4().hex[:16]
        self.published = 0

    def notify(self) -> None:
        """Ask for a poll of the table soon; safe from the loop and from worker threads."""
        self._poll_now = True
        self._call(self._wake.set)

    def hand_over(self, row: Staged) -> None:
        """A committed row leased to this relay: send it now (called at commit, any thread)."""
        self._call(self._take, row)

    def _take(self, row: Staged) -> None:
        self._ready.append(row)
        self._wake.set()

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: the poll finds the row after its lease
                loop.call_soon_threadsafe(fn, *args)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        _RELAYS[(id(self.engine), self.service)] = self
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.service}")

    async def stop(self) -> None:
        """Send what was handed over, wait for the acknowledgements, then publish what is left."""
        _RELAYS.pop((id(self.engine), self.service), None)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(Exception):
            await self._send_ready()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=10)
        self._settle_acks()
        await self.drain_once()
        self._loop = None

    async def _run(self) -> None:
        last_poll = marked = 0.0
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):  # with acks to mark, come back for them soon
                await asyncio.wait_for(self._wake.wait(), timeout=self.mark_s if self._acked else self.poll_s)
            self._wake.clear()
            try:
                await self._send_ready()
                # one UPDATE per mark_s for the rows acknowledged meanwhile, not one per wake-up
                if self._failed or len(self._acked) >= self.batch or loop.time() - marked >= self.mark_s:
                    self._settle_acks()
                    marked = loop.time()
                if self._poll_now or loop.time() - last_poll >= self.poll_s:
                    self._poll_now = False
                    last_poll = loop.time()
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

    async def _send(self, row: Staged) -> asyncio.Future[Any]:
        """Send a row to each of its targets; the future is done when every send is acknowledged."""
        if len(row.targets) == 1:
            topic, key = row.targets[0]
            return await self.bus.send_raw(topic, key, row.value, row.headers)
        return asyncio.gather(*[await self.bus.send_raw(t, k, row.value, row.headers) for t, k in row.targets])

    async def _send_ready(self) -> None:
        rows, self._ready = self._ready, []
        for i, r in enumerate(rows):
            try:
                fut = await self._send(r)
            except Exception:
                self._failed.extend(x.id for x in rows[i:])  # the poll sends them
                self._poll_now = True
                raise
            fut.add_done_callback(partial(self._acknowledged, r.id))
            self._inflight.add(fut)

    def _acknowledged(self, row_id: int, fut: asyncio.Future[Any]) -> None:
        self._inflight.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            self._failed.append(row_id)
            self._poll_now = True
        else:
            self._acked.append(row_id)
        self._wake.set()

    def _settle_acks(self) -> None:
        """Mark acknowledged rows sent; give failed ones' leases back for the poll."""
        acked, self._acked = self._acked, []
        failed, self._failed = self._failed, []
        if not acked and not failed:
            return
        with self.engine.begin() as c:
            sent = now_ms()
            MARK_SENT.run_many(c, [{"id": i, "sent_ms": sent} for i in acked])
            RELEASE.run_many(c, [{"id": i} for i in failed])
        self.published += len(acked)
        OUTBOX_PUBLISHED.labels(self.service).inc(len(acked))

    async def drain_once(self) -> int:
        """Lease a batch of unsent rows, publish them in order, mark them sent.

        The lease lets several processes relay from one database (SQLite has no SKIP LOCKED):
        a row is published by the process holding its lease; a lease left by a crashed
        process expires and another relay takes the row over.
        """
        now = now_ms()
        free = or_(OUTBOX.c.lease_until.is_(None), OUTBOX.c.lease_until < now)
        with self.engine.begin() as c:
            candidates = c.execute(
                select(OUTBOX.c.id, OUTBOX.c.topic, OUTBOX.c.key, func.coalesce(VALUES.c.value, OUTBOX.c.value).label("value"),
                       OUTBOX.c.headers, OUTBOX.c.fanout)
                .select_from(OUTBOX.outerjoin(VALUES, VALUES.c.id == OUTBOX.c.id))
                .where(OUTBOX.c.service == self.service, OUTBOX.c.sent_ms.is_(None), free)  # ix_outbox_pending
                .order_by(OUTBOX.c.id).limit(self.batch)).all()
            if not candidates:
                return 0
            leased = {r[0] for r in c.execute(
                update(OUTBOX)
                .where(OUTBOX.c.id.in_([r.id for r in candidates]), OUTBOX.c.sent_ms.is_(None), free)
                .values(lease_owner=self.owner, lease_until=now + self.lease_ms)
                .returning(OUTBOX.c.id))}
        rows = [r for r in candidates if r.id in leased]  # another relay may hold the rest
        if not rows:
            return 0
        futures = []
        for r in rows:
            hs = [(k, v.encode()) for k, v in orjson.loads(r.headers)]
            futures.append(await self._send(Staged(r.id, targets_of(r.topic, r.key, r.fanout), r.value, hs)))
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r, res in zip(rows, results, strict=True):
            (self._failed if isinstance(res, BaseException) else self._acked).append(r.id)
        self._settle_acks()
        failures = [res for res in results if isinstance(res, BaseException)]
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(rows)} sends failed: {failures[0]!r}")
        return len(rows)

    def republish_recent(self, window_s: int) -> int:
        """After the broker lost its data: publish again what was sent in the last window."""
        since = now_ms() - window_s * 1000
        with self.engine.begin() as c:
            n = c.execute(
                update(OUTBOX).where(OUTBOX.c.service == self.service, OUTBOX.c.sent_ms >= since)
                .values(sent_ms=None, lease_until=None)
            ).rowcount or 0
        log.warning("broker epoch changed: re-publishing %d recent %s events", n, self.service)
        self.notify()
        return n

    def prune(self, older_than_s: int) -> None:
        """Forget rows sent long ago (past the republish window)."""
        cutoff = now_ms() - older_than_s * 1000
        old = (OUTBOX.c.service == self.service, OUTBOX.c.sent_ms < cutoff)
        with self.engine.begin() as c:
            c.execute(VALUES.delete().where(VALUES.c.id.in_(select(OUTBOX.c.id).where(*old))))
            c.execute(OUTBOX.delete().where(*old))
