"""Request-reply over Kafka: one single-partition reply topic per API instance, read by manual
assignment (no consumer group, so no group-join wait), results matched by correlation id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.topics import REPLY_PREFIX
from services.bus.client import Bus, instance_id
from services.bus.envelope import CORRELATION, header_dict

log = logging.getLogger("yibao.bus.reply")


class ReplyListener:
    def __init__(self, bus: Bus, parse: Callable[[bytes], object]) -> None:
        self.bus, self.parse = bus, parse
        self.topic = REPLY_PREFIX + instance_id()
        self._waiting: dict[str, asyncio.Future[object]] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        bus.on_new_epoch(self._restart)

    async def start(self) -> None:
        await self.bus.create_topic(self.topic, 1)
        consumer = self.bus.consumer(group_id=None)
        await consumer.start()
        consumer.assign([TopicPartition(self.topic, 0)])
        await consumer.seek_to_beginning(TopicPartition(self.topic, 0))
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="reply-listener")

    async def stop(self, delete: bool = True) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()
        if delete:
            try:
                await self.bus.delete_topic(self.topic)
            except Exception:
                log.debug("could not delete %s", self.topic)

    async def _restart(self) -> None:
        await self.stop(delete=False)
        await self.start()

    def expect(self, correlation_id: str) -> asyncio.Future[object]:
        fut = self._waiting.get(correlation_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._waiting[correlation_id] = fut
        return fut

    def forget(self, correlation_id: str) -> None:
        self._waiting.pop(correlation_id, None)

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=200)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("reply fetch failed", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for rec in records:
                    cid = header_dict(rec.headers).get(CORRELATION)
                    fut = self._waiting.pop(cid, None) if cid else None
                    if fut is not None and not fut.done():
                        try:
                            fut.set_result(self.parse(rec.value))
                        except Exception as exc:  # a reply we cannot read is that request's error
                            fut.set_exception(exc)
