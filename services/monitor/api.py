"""Monitor API: the alerts supervisors work."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Query

from schemas.regions import designated_hospitals
from services.http import ERROR_RESPONSES, add_healthz, install_error_handlers
from services.identity import Authenticator, Caller, allow, install
from services.monitor.handlers import list_alerts

if TYPE_CHECKING:
    from services.monitor.app import MonitorService


def create_api(svc: MonitorService) -> FastAPI:
    app = FastAPI(title="yibao monitor", description="智能监控: rule hits on settled claims", responses=ERROR_RESPONSES)
    install_error_handlers(app)
    add_healthz(app, "monitor", lambda: svc.runtime.health())
    install(app, Authenticator(svc.common.auth_key))
    region_of = {code: str(h["admdvs"]) for code, h in designated_hospitals().items()}

    @app.get("/alerts", tags=["alerts"])
    async def alerts(
        who: Annotated[Caller, allow("supervisor", "operator")],
        fixmedins_code: str | None = Query(None, pattern=r"^[HP]\d{11}$"),
        msgid: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        """Alerts, newest first; filter by hospital or by claim msgid. A supervisor sees the alerts of
        hospitals in the region they supervise."""
        codes = None if who.role == "operator" else [c for c, r in region_of.items() if who.covers(r)]
        rows = await asyncio.to_thread(list_alerts, svc.engine, fixmedins_code, msgid, limit, codes)
        return [r.model_dump(mode="json") for r in rows]

    return app
