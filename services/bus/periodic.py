"""A job a service runs on a timer (expiries, reminders): in a thread, logged, never crashing the loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("yibao.bus.periodic")


class Periodic:
    def __init__(self, name: str, interval_s: float, job: Callable[[], Any], first_after_s: float = 1.0) -> None:
        self.name, self.interval_s, self.job, self.first_after_s = name, interval_s, job, first_after_s
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def start(self) -> None:
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_after_s)
        while True:
            try:
                result = await asyncio.to_thread(self.job)
                self.runs += 1
                quiet = isinstance(result, dict) and not any(result.values())
                log.log(logging.DEBUG if quiet else logging.INFO, "%s: %s", self.name, result)
            except Exception:
                log.exception("%s failed; next run in %.0f s", self.name, self.interval_s)
            await asyncio.sleep(self.interval_s)
