"""The common shape of a service process: its database, its Kafka runtime, its API."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import SQLModel

from services import tracing
from services.bus.db import create_tables, database_url, make_engine
from services.bus.periodic import Periodic
from services.bus.runtime import ServiceRuntime
from services.bus.settings import BusSettings
from services.settings import CommonSettings


class Service:
    """Subclasses set name and tables, add workers and timers (`every`) in __init__, and build `app`."""

    name: str = ""
    tables: Sequence[type[SQLModel]] = ()
    port: int = 0
    nice: int = 0  # the process's CPU priority below the others' (run_service applies it)

    def __init__(self, bootstrap: str, *, bus_settings: BusSettings | None = None,
                 common: CommonSettings | None = None, engine: Engine | None = None) -> None:
        self.common = common or CommonSettings()
        tracing.configure(self.name, kind=self.common.otel)
        self.engine = engine or make_engine(database_url(self.name, self.common.var_dir,
                                                         self.common.database_of(self.name)))
        create_tables(self.engine, self.tables)
        self.runtime = ServiceRuntime(self.name, bus_settings or BusSettings(), bootstrap, self.engine)
        self.app: FastAPI | None = None
        self.timers: list[Periodic] = []

    def every(self, timer: Periodic) -> Periodic:
        """A job on a timer, started after the workers and stopped before them."""
        self.timers.append(timer)
        return timer

    async def start(self) -> None:
        await self.runtime.start()
        for t in self.timers:
            t.start()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await self.runtime.wait_ready(timeout)

    async def stop(self) -> None:
        for t in self.timers:
            await t.stop()
        await self.runtime.stop()
