"""Reading a whole single-partition topic without a consumer group: no join wait, every process
sees every record (ops.faults; the per-instance reply topics)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

from services.bus.client import Bus
from services.bus.envelope import BadMessageError, Incoming, decode

log = logging.getLogger("yibao.bus.broadcast")


class Broadcast:
    """Reads a single-partition topic from the beginning by manual assignment.

    `on_record` gets each raw record; `apply` (for registry topics) each validated event.
    """

    def __init__(self, bus: Bus, topic: str, apply: Callable[[Incoming], None] | None = None,
                 on_record: Callable[[Any], None] | None = None, slow: bool = True) -> None:
        self.bus, self.topic, self.apply, self.on_record, self.slow = bus, topic, apply, on_record, slow
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.applied = 0
        bus.on_new_epoch(self._restart)

    async def start(self) -> None:
        consumer = self.bus.consumer(group_id=None, slow=self.slow)
        await consumer.start()
        tp = self.bus.tp(self.topic, 0)
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
        if self.on_record is not None:
            self.on_record(rec)
        if self.apply is not None:
            try:
                self.apply(decode(self.topic, rec.key, rec.value, rec.headers, rec.partition, rec.offset))
            except BadMessageError as exc:  # nobody to retry for: say so and go on
                log.warning("%s@%d ignored: %s", self.topic, rec.offset, exc)
                return
        self.applied += 1
