"""Request-reply over Kafka: one single-partition reply topic per API instance, read by manual
assignment (no consumer group, so no group-join wait), results matched by correlation id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from schemas.topics import REPLY_PREFIX
from services.bus.broadcast import Broadcast
from services.bus.client import Bus, instance_id
from services.bus.envelope import CORRELATION, header_dict

log = logging.getLogger("yibao.bus.reply")


class ReplyListener:
    def __init__(self, bus: Bus, parse: Callable[[bytes], object]) -> None:
        self.bus, self.parse = bus, parse
        self.topic = REPLY_PREFIX + instance_id()
        self._waiting: dict[str, asyncio.Future[object]] = {}
        bus.on_new_epoch(self._recreate_topic)  # registered first: the topic exists before the reader restarts
        self._reader = Broadcast(bus, self.topic, on_record=self._resolve, slow=False)

    async def start(self) -> None:
        await self.bus.create_topic(self.topic, 1)
        await self._reader.start()

    async def stop(self, delete: bool = True) -> None:
        await self._reader.stop()
        if delete:
            try:
                await self.bus.delete_topic(self.topic)
            except Exception:
                log.debug("could not delete %s", self.topic)

    async def _recreate_topic(self) -> None:
        await self.bus.create_topic(self.topic, 1)

    def expect(self, correlation_id: str) -> asyncio.Future[object]:
        fut = self._waiting.get(correlation_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._waiting[correlation_id] = fut
        return fut

    def forget(self, correlation_id: str) -> None:
        self._waiting.pop(correlation_id, None)

    def _resolve(self, rec: Any) -> None:
        cid = header_dict(rec.headers).get(CORRELATION)
        fut = self._waiting.pop(cid, None) if cid else None
        if fut is not None and not fut.done():
            try:
                fut.set_result(self.parse(rec.value))
            except Exception as exc:  # a reply we cannot read is that request's error
                fut.set_exception(exc)
