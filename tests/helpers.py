"""Test helpers: wait on conditions (never a fixed sleep), read topics with a plain consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

T = TypeVar("T")
POLL_S = 0.05


async def wait_until(probe: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `probe` (sync or async) until it returns something truthy."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 20.0,
                     partitions: int | None = None) -> list[Any]:
    """Read at least `count` records from the start of every partition of `topic`."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         fetch_max_wait_ms=50)
    await c.start()
    await c._client.force_metadata_update()
    try:
        parts = partitions or len(c.partitions_for_topic(topic) or {0})
        tps = [TopicPartition(topic, p) for p in range(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        out: list[Any] = []
        end = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < end:
            batch = await c.getmany(timeout_ms=200)
            for recs in batch.values():
                out.extend(recs)
        return out
    finally:
        await c.stop()


async def read_until(bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout: float = 20.0,
                     what: str = "the records") -> list[Any]:
    """Every record of `topic` once `done(records)` holds: what was just published may still be on
    its way (the outbox relay and the producer's linger), so read again until it is there."""
    end = time.monotonic() + timeout
    while True:
        records = await read_topic(bootstrap, topic, 10**6, timeout=0.5)  # everything there is
        if done(records):
            return records
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting on {topic} for {what}")


def headers_of(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers or ()}
