"""Filing API: file, look up, change and cancel cross-province filings (异地就医备案)."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import FastAPI, HTTPException

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
from services.identity import Authenticator, Caller, allow, install, not_yours

if TYPE_CHECKING:
    from services.filing.app import FilingService


FILERS = allow("insured", "province")
READERS = allow("insured", "province", "supervisor", "operator")


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
    install(app, Authenticator(svc.common.auth_key))

    async def for_filer(who: Caller, fil_id: str) -> str | None:
        """The province to check the filing against (the handlers refuse another province's filing);
        an insured person may touch only their own filings."""
        if who.role == "insured" and not who.is_person((await asyncio.to_thread(get_filing, svc.engine, fil_id)).psn_no):
            raise not_yours(f"filing {fil_id}")
        return who.scope if who.role == "province" else None

    @app.post("/filings", tags=["filings"], status_code=201)
    async def file(cmd: FileTreatment, who: Annotated[Caller, FILERS]) -> dict[str, Any]:
        """File a treatment away from the insured region; publishes filing.events. The insured person
        files for themselves (the national app), or their insured province's platform for them.

        `notice` in the answer tells about late filing (补办) and no-filing-needed pairs."""
        if who.role == "insured" and not who.is_person(cmd.psn_no):
            raise HTTPException(403, f"{who} may file for themselves only, not for {cmd.psn_no}")
        province = who.scope if who.role == "province" else None
        f, notice = await asyncio.to_thread(file_treatment, ctx, cmd, province)
        return filing_json(f, notice)

    @app.get("/filings/{fil_id}", tags=["filings"])
    async def one(fil_id: str, who: Annotated[Caller, READERS]) -> dict[str, Any]:
        """One filing."""
        f = await asyncio.to_thread(get_filing, svc.engine, fil_id)
        if not sees(who, f):
            raise not_yours(f"filing {fil_id}")
        return filing_json(f)

    @app.get("/persons/{psn_no}/filings", tags=["filings"])
    async def of_person(psn_no: str, who: Annotated[Caller, READERS]) -> list[dict[str, Any]]:
        """Every filing of a person (a province's or supervisor's: those its region is part of)."""
        return [filing_json(f) for f in await asyncio.to_thread(filings_of, svc.engine, psn_no) if sees(who, f)]

    @app.patch("/filings/{fil_id}", tags=["filings"])
    async def change(fil_id: str, body: ChangeBody, who: Annotated[Caller, FILERS]) -> dict[str, Any]:
        """Change place, type or end date of an active filing (long-term: after the holding period)."""
        cmd = ChangeFiling(fil_id=fil_id, **body.model_dump(exclude_none=True))
        f, notice = await asyncio.to_thread(change_filing, ctx, cmd, await for_filer(who, fil_id))
        return filing_json(f, notice)

    @app.delete("/filings/{fil_id}", tags=["filings"])
    async def cancel(fil_id: str, who: Annotated[Caller, FILERS], reason: str = "") -> dict[str, Any]:
        """Cancel an active filing (long-term: after the holding period); publishes filing.events."""
        province = await for_filer(who, fil_id)
        return filing_json(await asyncio.to_thread(cancel_filing, ctx, CancelFiling(fil_id=fil_id, reason=reason),
                                                   province))

    @app.post("/ops/expire", tags=["ops"])
    async def expire(_: Annotated[Caller, allow("operator")], on: date | None = None) -> dict[str, int]:
        """Expire temporary filings past their end date now (it also runs on a timer)."""
        return await asyncio.to_thread(expire_due, ctx, on)

    return app


def sees(who: Caller, f: Filing) -> bool:
    return who.is_person(f.psn_no) or who.covers(f.insuplc_admdvs) or who.covers(f.target_admdvs)
