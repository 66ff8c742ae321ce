"""Filing API: file, look up and cancel cross-province filings (异地就医备案)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from schemas.events import FileTreatment
from services.filing.domain import FilingRefusedError
from services.filing.handlers import (
    UnknownFilingError,
    cancel_filing,
    file_treatment,
    filings_of,
    get_filing,
)
from services.http import add_healthz, install_error_handlers, map_errors

if TYPE_CHECKING:
    from services.filing.app import FilingService


def create_api(svc: FilingService) -> FastAPI:
    app = FastAPI(title="yibao filing", description="异地就医备案: cross-province filings")
    install_error_handlers(app)
    add_healthz(app, "filing", lambda: svc.runtime.bus.producer is not None)

    map_errors(app, {FilingRefusedError: 422, UnknownFilingError: 404})

    @app.post("/filings", tags=["filings"], status_code=201)
    async def file(cmd: FileTreatment) -> dict[str, Any]:
        """File a cross-province treatment; publishes filing.events."""
        f = await asyncio.to_thread(file_treatment, svc.ctx, cmd)
        return f.model_dump(mode="json", exclude={"created_ms"})

    @app.get("/filings/{fil_id}", tags=["filings"])
    async def one(fil_id: str) -> dict[str, Any]:
        """One filing."""
        f = await asyncio.to_thread(get_filing, svc.engine, fil_id)
        return f.model_dump(mode="json", exclude={"created_ms"})

    @app.get("/persons/{psn_no}/filings", tags=["filings"])
    async def of_person(psn_no: str) -> list[dict[str, Any]]:
        """Every filing of a person."""
        fs = await asyncio.to_thread(filings_of, svc.engine, psn_no)
        return [f.model_dump(mode="json", exclude={"created_ms"}) for f in fs]

    @app.delete("/filings/{fil_id}", tags=["filings"])
    async def cancel(fil_id: str) -> dict[str, Any]:
        """Cancel an active filing; publishes filing.events."""
        f = await asyncio.to_thread(cancel_filing, svc.ctx, fil_id)
        return f.model_dump(mode="json", exclude={"created_ms"})

    return app
