"""Test helpers: wait on conditions (never a fixed sleep), read topics with a plain consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

if TYPE_CHECKING:
    from tests.conftest import BrokerUnderTest

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


async def read_topic(broker: BrokerUnderTest, topic: str, count: int, timeout: float = 20.0) -> list[Any]:
    """At least `count` records of a registry topic from its start, waiting up to `timeout` for them."""
    end = time.monotonic() + timeout
    while True:
        records = await read_all(broker, topic)
        if len(records) >= count or time.monotonic() > end:
            return records
        await asyncio.sleep(POLL_S)


async def read_all(broker: BrokerUnderTest, topic: str) -> list[Any]:
    """Every record of a registry topic up to its end offsets as they are now."""
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                         fetch_max_wait_ms=50)
    await c.start()
    try:
        await c._client.force_metadata_update()
        name = broker.topic(topic)
        tps = [TopicPartition(name, p) for p in sorted(c.partitions_for_topic(name) or {0})]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        out: list[Any] = []
        give_up = time.monotonic() + 30
        while any([await c.position(tp) < ends[tp] for tp in tps]) and time.monotonic() < give_up:
            for recs in (await c.getmany(timeout_ms=200)).values():
                out.extend(recs)
        return out
    finally:
        await c.stop()


async def read_until(broker: BrokerUnderTest, topic: str, done: Callable[[list[Any]], bool],
                     timeout: float = 20.0, what: str = "the records") -> list[Any]:
    """Every record of `topic` once `done(records)` holds: what was just published may still be on
    its way (the outbox relay and the producer), so read again until it is there."""
    end = time.monotonic() + timeout
    while True:
        records = await read_all(broker, topic)
        if done(records):
            return records
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting on {topic} for {what}")
        await asyncio.sleep(POLL_S)


def headers_of(record: Any) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers or ()}
