"""What every service process runs: a Bus, its outbox relay, its workers, the epoch watch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine

from services.bus.client import Bus
from services.bus.envelope import Readable
from services.bus.outbox import OutboxRelay
from services.bus.settings import BusSettings
from services.bus.worker import GiveUp, Handler, OnDeadLetter, Worker

log = logging.getLogger("yibao.bus.runtime")


class ServiceRuntime:
    def __init__(self, service: str, settings: BusSettings, bootstrap: str, engine: Engine) -> None:
        self.service = service
        self.bus = Bus(settings, bootstrap, client_id=f"yibao-{service}")
        self.relay = OutboxRelay(engine, service, self.bus, keep_sent_s=settings.outbox_republish_window_s)
        self.workers: list[Worker] = []
        self.bus.on_new_epoch(self._republish)

    def add_worker(self, group: str, handlers: Mapping[str, Handler],
                   on_give_up: GiveUp | None = None, on_dead_letter: OnDeadLetter | None = None,
                   slow: bool = False, read_as: Mapping[str, Readable] | None = None) -> Worker:
        w = Worker(self.bus, group, handlers, on_give_up, on_dead_letter, slow, read_as)
        self.workers.append(w)
        return w

    async def start(self, watch_epoch: bool = True) -> None:
        await self.bus.start()
        self.relay.start()
        # each consumer's group join waits on the broker (session/2): join them all at once
        await asyncio.gather(*(w.start() for w in self.workers))
        if watch_epoch:
            self.bus.watch_epoch()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        for w in self.workers:
            await w.wait_assigned(timeout)

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))  # each finishes its batch in hand
        await self.relay.stop()
        await self.bus.stop()

    def health(self) -> tuple[bool, list[dict[str, Any]]]:
        """(ok, each consumer's state): ok while the producer runs and no consumer loop is down."""
        consumers = [c for w in self.workers for c in w.health()]
        ok = self.bus.producer is not None and all(c["state"] == "running" for c in consumers)
        return ok, consumers

    async def _republish(self) -> None:
        self.relay.republish_recent(self.bus.settings.outbox_republish_window_s)
