"""Composition root of the filing service."""

from __future__ import annotations

from functools import partial
from typing import Any

from services.filing.handlers import FilingContext, apply_enrolment
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
        self.ctx = FilingContext(self.engine, self.runtime.relay)
        self.runtime.add_worker("filing", {"enroll.events": partial(apply_enrolment, self.ctx)})
        from services.filing.api import create_api

        self.app = create_api(self)
