"""Filing API: file, look up, change and cancel cross-province filings (异地就医备案)."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI

from schemas.common import Admdvs, Command, FilingType
from schemas.events import CancelFiling, ChangeFiling, FileTreatment
from services.filing.domain import FilingRefusedError
from services.filing.handlers import (
    UnknownFilingError,
    cancel_filing,
    change_filing,
    expire_due,
    file_treatment,
    filings_of,
    get_filing,
)
from services.filing.store import Filing
from services.http import ERROR_RESPONSES, add_healthz, install_error_handlers, map_errors

if TYPE_CHECKING:
    from services.filing.app import FilingService


class ChangeBody(Command):
    target_admdvs: Admdvs | None = None
    fil_type: FilingType | None = None
    enddate: date | None = None


def filing_json(f: Filing, notice: str | None = None) -> dict[str, Any]:
    d = f.model_dump(mode="json", exclude={"created_ms", "materials"})
    d["materials"] = orjson.loads(f.materials)
    if notice:
        d["notice"] = notice
    return d


def create_api(svc: FilingService) -> FastAPI:
    app = FastAPI(title="yibao filing", description="异地就医备案: cross-province filings", responses=ERROR_RESPONSES)
    install_error_handlers(app)
    add_healthz(app, "filing", lambda: svc.runtime.health())
    ctx = svc.ctx

    map_errors(app, {FilingRefusedError: 422, UnknownFilingError: 404})

    @app.post("/filings", tags=["filings"], status_code=201)
    async def file(cmd: FileTreatment) -> dict[str, Any]:
        """File a treatment away from the insured region; publishes filing.events.

        `notice` in the answer tells about late filing (补办) and no-filing-needed pairs."""
        f, notice = await asyncio.to_thread(file_treatment, ctx, cmd)
        return filing_json(f, notice)

    @app.get("/filings/{fil_id}", tags=["filings"])
    async def one(fil_id: str) -> dict[str, Any]:
        """One filing."""
        return filing_json(await asyncio.to_thread(get_filing, svc.engine, fil_id))

    @app.get("/persons/{psn_no}/filings", tags=["filings"])
    async def of_person(psn_no: str) -> list[dict[str, Any]]:
        """Every filing of a person."""
        return [filing_json(f) for f in await asyncio.to_thread(filings_of, svc.engine, psn_no)]

    @app.patch("/filings/{fil_id}", tags=["filings"])
    async def change(fil_id: str, body: ChangeBody) -> dict[str, Any]:
        """Change place, type or end date of an active filing (long-term: after the holding period)."""
        cmd = ChangeFiling(fil_id=fil_id, **body.model_dump(exclude_none=True))
        f, notice = await asyncio.to_thread(change_filing, ctx, cmd)
        return filing_json(f, notice)

    @app.delete("/filings/{fil_id}", tags=["filings"])
    async def cancel(fil_id: str, reason: str = "") -> dict[str, Any]:
        """Cancel an active filing (long-term: after the holding period); publishes filing.events."""
        return filing_json(await asyncio.to_thread(cancel_filing, ctx, CancelFiling(fil_id=fil_id, reason=reason)))

    @app.post("/ops/expire", tags=["ops"])
    async def expire(on: date | None = None) -> dict[str, int]:
        """Expire temporary filings past their end date now (it also runs on a timer)."""
        return await asyncio.to_thread(expire_due, ctx, on)

    return app
