"""Enroll API: the person registry (人员登记), enrolments (参保登记), transfers, duplicates, reminders.

The counter's REST calls and the provinces' enroll.inbound records end in the same handlers.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from schemas.events import EnrolmentRecord, EnrolPerson, RegisterPerson, TransferEnrolment
from services.enroll.domain import EnrollRefusedError, InvalidCertnoError, mask_certno
from services.enroll.handlers import (
    UnknownDuplicateError,
    UnknownPersonError,
    apply_record,
    check_duplicates,
    duplicates,
    enrol_person,
    find_person,
    get_person,
    hardship_of,
    history,
    register_person,
    resolve_duplicate,
    scan_lapses,
    status_at,
    transfer,
    voucher_token,
)
from services.enroll.store import Duplicate, Enrolment, Person
from services.http import ERROR_RESPONSES, add_healthz, install_error_handlers, map_errors
from services.identity import Authenticator, Caller, allow, install, not_yours

if TYPE_CHECKING:
    from services.enroll.app import EnrollService


READERS = allow("province", "supervisor", "operator", "insured")  # who may read a person


class Lookup(BaseModel):
    certno: str = Field(min_length=18, max_length=18)


class Resolve(BaseModel):
    end_admdvs: str = Field(pattern=r"^\d{6}$", description="the pooling region whose enrolment ends")
    reason: str = ""


def enrolment_json(e: Enrolment) -> dict[str, Any]:
    d = e.model_dump(mode="json", exclude={"updated_ms", "missing_periods", "family"})
    d["missing_periods"] = orjson.loads(e.missing_periods)
    return d


def person_json(p: Person, enrolments: list[Enrolment] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"psn_no": p.psn_no, "psn_name": p.psn_name, "gend": p.gend, "brdy": p.brdy.isoformat(),
                           "certno": mask_certno(p.certno), "admdvs": p.admdvs,
                           "death_date": p.death_date.isoformat() if p.death_date else None,
                           "hardship": [h.model_dump(mode="json") for h in hardship_of(p)]}
    if enrolments is not None:
        out["enrolments"] = [enrolment_json(e) for e in enrolments]
    return out


def dup_json(d: Duplicate) -> dict[str, Any]:
    return d.model_dump(mode="json")


def create_api(svc: EnrollService) -> FastAPI:
    app = FastAPI(title="yibao enroll", description="参保登记: person registry, enrolments, transfers, duplicates", responses=ERROR_RESPONSES)
    install_error_handlers(app)
    add_healthz(app, "enroll", lambda: svc.runtime.health())
    ctx = svc.ctx

    map_errors(app, {InvalidCertnoError: 422, EnrollRefusedError: 422, UnknownPersonError: 404,
                     UnknownDuplicateError: 404})
    install(app, Authenticator(svc.common.auth_key))

    async def visible_person(who: Caller, psn_no: str) -> tuple[Person, list[Enrolment]]:
        p, es = await asyncio.to_thread(get_person, svc.engine, psn_no)
        if not sees(who, p, es):
            raise not_yours(f"person {psn_no}")
        return p, es

    @app.post("/persons", tags=["persons"])
    async def register(cmd: RegisterPerson, who: Annotated[Caller, allow("province")]) -> JSONResponse:
        """Register a person by ID number; the same number again returns the same psn_no."""
        must_cover(who, cmd.admdvs, "register people of")
        p, new = await asyncio.to_thread(register_person, ctx, cmd)
        return JSONResponse(person_json(p) | {"new": new}, status_code=201 if new else 200)

    @app.post("/persons/lookup", tags=["persons"])
    async def lookup(body: Lookup, who: Annotated[Caller, allow("province", "supervisor", "operator")]) -> dict[str, Any]:
        """Find a person by ID number (in the body, so it stays out of URLs and access logs)."""
        p, es = await asyncio.to_thread(find_person, svc.engine, body.certno)
        if not sees(who, p, es):
            raise not_yours("the person with this ID number")
        return person_json(p, es)

    @app.get("/persons/{psn_no}", tags=["persons"])
    async def person(psn_no: str, who: Annotated[Caller, READERS]) -> dict[str, Any]:
        """A person (ID number masked) and every enrolment they hold."""
        return person_json(*await visible_person(who, psn_no))

    @app.post("/persons/{psn_no}/ectoken", tags=["persons"])
    async def ectoken(psn_no: str, who: Annotated[Caller, allow("insured")]) -> dict[str, Any]:
        """医保电子凭证: a short-lived token (what the app's QR code carries) for 1101 with mdtrt_cert_type 01;
        only the insured person themselves."""
        if not who.is_person(psn_no):
            raise HTTPException(403, f"{who} may ask for their own e-voucher only, not for {psn_no}")
        return await asyncio.to_thread(voucher_token, svc.engine, psn_no)

    @app.get("/persons/{psn_no}/status", tags=["persons"])
    async def status(psn_no: str, who: Annotated[Caller, READERS], on: date | None = None) -> dict[str, Any]:
        """Each enrolment as it stood on a date (default today) and whether benefits applied."""
        await visible_person(who, psn_no)
        return await asyncio.to_thread(status_at, svc.engine, psn_no, on or ctx.today())

    @app.get("/persons/{psn_no}/history", tags=["persons"])
    async def person_history(psn_no: str, who: Annotated[Caller, READERS]) -> list[dict[str, Any]]:
        """Every version of every enrolment of the person, oldest first."""
        await visible_person(who, psn_no)
        return await asyncio.to_thread(history, svc.engine, psn_no)

    @app.post("/enrolments", tags=["enrolments"], status_code=201)
    async def enrol(cmd: EnrolPerson, who: Annotated[Caller, allow("province")]) -> dict[str, Any]:
        """Enrol (or change the enrolment of) a registered person; publishes enroll.events."""
        must_cover(who, cmd.insuplc_admdvs, "enrol people in")
        return enrolment_json(await asyncio.to_thread(enrol_person, ctx, cmd))

    @app.post("/enrolments/records", tags=["enrolments"], status_code=201)
    async def record(cmd: EnrolmentRecord, who: Annotated[Caller, allow("province")]) -> dict[str, Any]:
        """A whole enrolment record by ID number (what provinces publish on enroll.inbound)."""
        e = await asyncio.to_thread(apply_record, ctx, cmd, who.scope)
        return enrolment_json(e)

    @app.post("/transfers", tags=["enrolments"], status_code=201)
    async def transfer_enrolment(cmd: TransferEnrolment, who: Annotated[Caller, allow("province")]) -> dict[str, Any]:
        """转移接续: end the enrolment in from_admdvs, continue in to_admdvs with the years carried."""
        return enrolment_json(await asyncio.to_thread(transfer, ctx, cmd, who.scope))

    @app.get("/duplicates", tags=["duplicates"])
    async def list_duplicates(who: Annotated[Caller, allow("province", "supervisor", "operator")],
                              status: Literal["open", "resolved"] | None = "open",
                              limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        """重复参保 found as enrolments arrived (newest first); a province's or supervisor's own regions."""
        found = await asyncio.to_thread(duplicates, svc.engine, status, limit)
        return [dup_json(d) for d in found if who.covers(d.a_admdvs) or who.covers(d.b_admdvs)]

    @app.post("/duplicates/{dup_id}/resolve", tags=["duplicates"])
    async def resolve(dup_id: str, body: Resolve, who: Annotated[Caller, allow("province", "operator")]) -> dict[str, Any]:
        """End the enrolment in `end_admdvs`; the other one stays. Publishes both outcomes."""
        must_cover(who, body.end_admdvs, "end enrolments in")
        return dup_json(await asyncio.to_thread(resolve_duplicate, ctx, dup_id, body.end_admdvs, body.reason))

    @app.get("/duplicates/check", tags=["duplicates"])
    async def batch_check(_: Annotated[Caller, allow("operator")]) -> dict[str, Any]:
        """The batch check over the whole registry, compared with the incremental detection."""
        return await asyncio.to_thread(check_duplicates, svc.engine)

    @app.get("/ops/stats", tags=["ops"])
    async def stats(_: Annotated[Caller, allow("operator")]) -> dict[str, Any]:
        """Counters of the enroll.inbound consumer since start: handled, retried, dead-lettered."""
        return {"inbound": dict(svc.inbound.stats)}

    @app.post("/ops/reminders/scan", tags=["ops"])
    async def reminders(_: Annotated[Caller, allow("operator")], on: date | None = None) -> dict[str, int]:
        """Run the 断保提醒 scan now (it also runs on a timer)."""
        return await asyncio.to_thread(scan_lapses, ctx, on)

    return app


def sees(who: Caller, p: Person, es: list[Enrolment]) -> bool:
    """A person is within a caller's scope when they are the person, or registered or enrolled in its region."""
    return who.is_person(p.psn_no) or who.covers(p.admdvs) or any(who.covers(e.insuplc_admdvs) for e in es)


def must_cover(who: Caller, admdvs: str, doing: str) -> None:
    if not who.covers(admdvs):
        raise HTTPException(403, f"{who} (scope {who.scope}) may not {doing} {admdvs}: outside its region")
