"""Composition root of the settle service: reference data, hop workers, replies, API."""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson

from schemas.events import FaultsChanged
from services.bus.broadcast import Broadcast
from services.bus.envelope import Readable
from services.bus.faults import Fault, Faults
from services.bus.reply import ReplyListener
from services.bus.worker import BatchHandler, Handler
from services.monitor.catalogue import RuleBook
from services.service import Service
from services.settle.handlers import (
    SettleContext,
    apply_enrolment,
    apply_filing,
    city_hops,
    give_up,
    relay_hop,
)
from services.settle.hopreader import RelayReader
from services.settle.refdata import Reference
from services.settle.settings import SettleSettings
from services.settle.store import TABLES

ALL_LEVELS = ["city", "province", "national"]


class SettleService(Service):
    name = "settle"
    tables = TABLES

    def __init__(self, bootstrap: str, *, settings: SettleSettings | None = None,
                 with_api: bool = True, **kw: Any) -> None:
        super().__init__(bootstrap, **kw)
        self.settings = settings or SettleSettings()
        self.port = self.settings.port
        self.ctx = SettleContext(self.engine, self.runtime.bus,
                                 Reference.load(advance_file=self.settings.advance_funds_file),
                                 Faults.parse(self.settings.faults), RuleBook(self.common.rules_file))
        levels = self.settings.level_list
        unknown = set(levels) - set(ALL_LEVELS)
        if unknown:
            raise ValueError(f"unknown hop level(s) {sorted(unknown)}: use {ALL_LEVELS}")
        handlers: dict[str, Handler] = {
            f"settle.{lvl}": BatchHandler(partial(city_hops, self.ctx)) if lvl == "city" else partial(relay_hop, self.ctx)
            for lvl in levels}
        if "city" in levels:  # the insured city decides from its own views
            handlers["enroll.events"] = partial(apply_enrolment, self.ctx)
            handlers["filing.events"] = partial(apply_filing, self.ctx)
        group = "settle" if levels == ALL_LEVELS else "settle-" + "-".join(levels)
        read_as: dict[str, Readable] = {f"settle.{lvl}": RelayReader() for lvl in levels if lvl != "city"}
        if "city" in levels:
            read_as["settle.city"] = self.ctx.hops
        self.worker = (self.runtime.add_worker(group, handlers, on_give_up=partial(give_up, self.ctx),
                                               read_as=read_as)
                       if handlers else None)  # no levels: an API-only process
        self.replies = ReplyListener(self.runtime.bus, orjson.loads) if with_api else None  # answered as JSON
        # fault changes reach every settle process, whichever one's ops API was called
        self.fault_feed = Broadcast(self.runtime.bus, "ops.faults", lambda m: self.ctx.faults.replace(
            [Fault.model_validate(f) for f in m.event.faults]))
        if with_api:
            from services.settle.api import create_api

            self.app = create_api(self)

    async def start(self) -> None:
        await super().start()
        await self.fault_feed.start()
        if self.replies:
            await self.replies.start()

    async def stop(self) -> None:
        if self.replies:
            await self.replies.stop()
        await self.fault_feed.stop()
        await super().stop()

    async def publish_faults(self) -> None:
        """Tell every settle process (this one included) the faults now in force."""
        event = FaultsChanged(faults=[f.model_dump() for f in self.ctx.faults.listed()])
        await (await self.runtime.bus.send("ops.faults", self.name, event, "/yibao/settle/ops"))
