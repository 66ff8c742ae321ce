"""Monitor API: the alerts supervisors work."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query

from services.http import ERROR_RESPONSES, add_healthz, install_error_handlers
from services.monitor.handlers import list_alerts

if TYPE_CHECKING:
    from services.monitor.app import MonitorService


def create_api(svc: MonitorService) -> FastAPI:
    app = FastAPI(title="yibao monitor", description="智能监控: rule hits on settled claims", responses=ERROR_RESPONSES)
    install_error_handlers(app)
    add_healthz(app, "monitor", lambda: svc.runtime.health())

    @app.get("/alerts", tags=["alerts"])
    async def alerts(
        fixmedins_code: str | None = Query(None, pattern=r"^[HP]\d{11}$"),
        msgid: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        """Alerts, newest first; filter by hospital or by claim msgid."""
        rows = await asyncio.to_thread(list_alerts, svc.engine, fixmedins_code, msgid, limit)
        return [r.model_dump(mode="json") for r in rows]

    return app
