"""Composition root of the monitor service."""

from __future__ import annotations

from functools import partial
from typing import Any

from services.monitor.handlers import MonitorContext, check_settlement
from services.monitor.settings import MonitorSettings
from services.monitor.store import TABLES
from services.service import Service


class MonitorService(Service):
    name = "monitor"
    tables = TABLES

    def __init__(self, bootstrap: str, *, settings: MonitorSettings | None = None, **kw: Any) -> None:
        super().__init__(bootstrap, **kw)
        self.settings = settings or MonitorSettings()
        self.port = self.settings.port
        self.ctx = MonitorContext(self.engine, self.runtime.relay)
        self.runtime.add_worker("monitor", {"settle.completed": partial(check_settlement, self.ctx)})
        from services.monitor.api import create_api

        self.app = create_api(self)
