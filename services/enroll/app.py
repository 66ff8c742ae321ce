"""Composition root of the enroll service: the inbound worker, the reminder timer, the API."""

from __future__ import annotations

from functools import partial
from typing import Any

from services.bus import rejections
from services.bus.periodic import Periodic
from services.bus.worker import BatchHandler
from services.enroll.domain import EnrolmentRules
from services.enroll.handlers import EnrollContext, scan_lapses
from services.enroll.inbound import handle_batch
from services.enroll.settings import EnrollSettings
from services.enroll.store import TABLES
from services.service import Service


class EnrollService(Service):
    name = "enroll"
    tables = TABLES

    def __init__(self, bootstrap: str, *, settings: EnrollSettings | None = None, **kw: Any) -> None:
        super().__init__(bootstrap, **kw)
        self.settings = settings or EnrollSettings()
        self.port = self.settings.port
        self.ctx = EnrollContext(self.engine, EnrolmentRules.load(self.settings.rules_file))
        self.inbound = self.runtime.add_worker(
            "enroll", {"enroll.inbound": BatchHandler(partial(handle_batch, self.ctx))},
            on_dead_letter=rejections.publisher(self.runtime.bus, "enroll.rejections", self.name, shows_key=False),
            slow=True)  # provinces' bulk records: throughput, not latency
        self.reminders = self.every(Periodic("enroll-reminders", self.settings.reminder_interval_s,
                                             partial(scan_lapses, self.ctx), first_after_s=30))
        from services.enroll.api import create_api

        self.app = create_api(self)
