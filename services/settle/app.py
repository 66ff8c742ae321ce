"""Composition root of the settle service: database, reference data, workers, replies, API."""

from __future__ import annotations

from functools import partial

from sqlalchemy import Engine

from schemas.events import SettlementResult
from services.bus.db import create_tables, database_url, make_engine
from services.bus.faults import Faults
from services.bus.reply import ReplyListener
from services.bus.runtime import ServiceRuntime
from services.bus.settings import BusSettings
from services.settings import CommonSettings
from services.settle.handlers import SettleContext, apply_enrolment, apply_filing, give_up, handle_hop
from services.settle.refdata import Reference
from services.settle.settings import SettleSettings
from services.settle.store import TABLES

ALL_LEVELS = ["city", "province", "national"]


class SettleService:
    name = "settle"

    def __init__(self, bootstrap: str, *, settings: SettleSettings | None = None,
                 bus_settings: BusSettings | None = None, common: CommonSettings | None = None,
                 engine: Engine | None = None, with_api: bool = True) -> None:
        self.settings = settings or SettleSettings()
        common = common or CommonSettings()
        self.engine = engine or make_engine(database_url(self.name, common.var_dir))
        create_tables(self.engine, TABLES)
        self.runtime = ServiceRuntime(self.name, bus_settings or BusSettings(), bootstrap, self.engine)
        self.ctx = SettleContext(self.engine, self.runtime.bus, self.runtime.relay, Reference.load(),
                                 Faults.parse(self.settings.faults))
        levels = self.settings.level_list
        unknown = set(levels) - set(ALL_LEVELS)
        if unknown:
            raise ValueError(f"unknown hop level(s) {sorted(unknown)}: use {ALL_LEVELS}")
        handlers = {f"settle.{lvl}": partial(handle_hop, self.ctx) for lvl in levels}
        if "city" in levels:  # the insured city decides from its own views
            handlers["enroll.events"] = partial(apply_enrolment, self.ctx)
            handlers["filing.events"] = partial(apply_filing, self.ctx)
        group = "settle" if levels == ALL_LEVELS else "settle-" + "-".join(levels)
        self.worker = self.runtime.add_worker(group, handlers, on_give_up=partial(give_up, self.ctx))
        self.replies = ReplyListener(self.runtime.bus, SettlementResult.model_validate_json) if with_api else None
        self.app = None
        if with_api:
            from services.settle.api import create_api

            self.app = create_api(self)

    async def start(self) -> None:
        await self.runtime.start()
        if self.replies:
            await self.replies.start()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await self.runtime.wait_ready(timeout)

    async def stop(self) -> None:
        if self.replies:
            await self.replies.stop()
        await self.runtime.stop()
