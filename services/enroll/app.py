"""Composition root of the enroll service."""

from __future__ import annotations

from typing import Any

from services.enroll.handlers import EnrollContext
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
        self.ctx = EnrollContext(self.engine, self.runtime.relay)
        from services.enroll.api import create_api

        self.app = create_api(self)
