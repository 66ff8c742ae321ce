"""Composition root of the monitor service."""

from __future__ import annotations

from functools import partial
from typing import Any

from services.bus.periodic import Periodic
from services.bus.worker import BatchHandler
from services.monitor.aggregate import judge_outliers
from services.monitor.catalogue import RuleBook
from services.monitor.facts import SettledView
from services.monitor.handlers import MonitorContext, apply_person, check_batch
from services.monitor.settings import MonitorSettings
from services.monitor.store import TABLES
from services.service import Service
from services.settle.refdata import load_catalogue


class MonitorService(Service):
    name = "monitor"
    tables = TABLES

    def __init__(self, bootstrap: str, *, settings: MonitorSettings | None = None, **kw: Any) -> None:
        super().__init__(bootstrap, **kw)
        self.settings = settings or MonitorSettings()
        self.port = self.settings.port
        self.nice = self.settings.nice
        self.ctx = MonitorContext(self.engine, RuleBook(self.common.rules_file), load_catalogue())
        # alerts are for supervisors, seconds are fine: batches (one transaction each), fewer fetches
        self.runtime.add_worker("monitor", {"settle.completed": BatchHandler(partial(check_batch, self.ctx)),
                                            "enroll.events": partial(apply_person, self.ctx)}, slow=True,
                                read_as={"settle.completed": SettledView})
        self.outliers = self.every(Periodic("monitor-outliers", self.settings.outlier_interval_s,
                                            partial(judge_outliers, self.ctx)))
        from services.monitor.api import create_api

        self.app = create_api(self)
