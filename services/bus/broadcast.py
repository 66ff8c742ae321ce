"""A topic every process of a service reads whole, without a consumer group (ops.faults)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.bus.client import Bus
from services.bus.envelope import BadMessageError, Incoming, decode

log = logging.getLogger("yibao.bus.broadcast")


class Broadcast:
    """Reads a single-partition topic from the beginning by manual assignment; applies each event."""

    def __init__(self, bus: Bus, topic: str, apply: Callable[[Incoming], None]) -> None:
        self.bus, self.topic, self.apply = bus, topic, apply
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.applied = 0
        bus.on_new_epoch(self._restart)

    async def start(self) -> None:
        consumer = self.bus.consumer(group_id=None, slow=True)
        await consumer.start()
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name=f"broadcast-{self.topic}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()

    async def _restart(self) -> None:
        await self.stop()
        await self.start()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("%s: fetch failed", self.topic, exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for rec in records:
                    self._apply(rec)

    def _apply(self, rec: Any) -> None:
        try:
            self.apply(decode(self.topic, rec.key, rec.value, rec.headers, rec.partition, rec.offset))
            self.applied += 1
        except BadMessageError as exc:  # nobody to retry for: say so and go on
            log.warning("%s@%d ignored: %s", self.topic, rec.offset, exc)
