"""Composition root of the filing service: enrolment view, inbound worker, expiry timer, API."""

from __future__ import annotations

from functools import partial
from typing import Any

from services.bus import rejections
from services.bus.periodic import Periodic
from services.bus.worker import BatchHandler
from services.filing.handlers import FilingContext, apply_enrolment, expire_due
from services.filing.inbound import handle_batch
from services.filing.settings import FilingSettings
from services.filing.store import TABLES
from services.service import Service


class FilingService(Service):
    name = "filing"
    tables = TABLES

    def __init__(self, bootstrap: str, *, settings: FilingSettings | None = None, **kw: Any) -> None:
        super().__init__(bootstrap, **kw)
        self.settings = settings or FilingSettings()
        self.port = self.settings.port
        self.ctx = FilingContext(self.engine)
        self.runtime.add_worker("filing", {"enroll.events": partial(apply_enrolment, self.ctx)})
        self.runtime.add_worker(
            "filing-inbound", {"filing.inbound": BatchHandler(partial(handle_batch, self.ctx))},
            on_dead_letter=rejections.publisher(self.runtime.bus, "filing.rejections", self.name),
            slow=True)  # provinces' bulk records: throughput, not latency
        self.expiry = self.every(Periodic("filing-expiry", self.settings.expiry_interval_s,
                                          partial(expire_due, self.ctx)))
        from services.filing.api import create_api

        self.app = create_api(self)
