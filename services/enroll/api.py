"""Enroll API: register persons (参保人员登记) and enrol them (参保登记)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

from schemas.events import EnrolPerson, RegisterPerson
from services.enroll.domain import InvalidCertnoError, mask_certno
from services.enroll.handlers import (
    UnknownPersonError,
    UnknownRegionError,
    enrol_person,
    get_person,
    register_person,
)
from services.http import add_healthz, install_error_handlers, map_errors

if TYPE_CHECKING:
    from services.enroll.app import EnrollService


def create_api(svc: EnrollService) -> FastAPI:
    app = FastAPI(title="yibao enroll", description="参保登记: person registry and enrolments")
    install_error_handlers(app)
    add_healthz(app, "enroll", lambda: svc.runtime.bus.producer is not None)

    map_errors(app, {InvalidCertnoError: 422, UnknownRegionError: 422, UnknownPersonError: 404})

    @app.post("/persons", tags=["persons"])
    async def register(cmd: RegisterPerson) -> JSONResponse:
        """Register a person by ID number; the same number again returns the same psn_no."""
        p, new = await asyncio.to_thread(register_person, svc.ctx, cmd)
        return JSONResponse({"psn_no": p.psn_no, "psn_name": p.psn_name, "gend": p.gend,
                             "brdy": p.brdy.isoformat(), "certno": mask_certno(p.certno), "new": new},
                            status_code=201 if new else 200)

    @app.get("/persons/{psn_no}", tags=["persons"])
    async def person(psn_no: str) -> dict[str, Any]:
        """A person and their current enrolment (ID number masked)."""
        p, e = await asyncio.to_thread(get_person, svc.engine, psn_no)
        return {"psn_no": p.psn_no, "psn_name": p.psn_name, "gend": p.gend, "brdy": p.brdy.isoformat(),
                "certno": mask_certno(p.certno),
                "enrolment": e.model_dump(mode="json", exclude={"updated_ms"}) if e else None}

    @app.post("/enrolments", tags=["enrolments"], status_code=201)
    async def enrol(cmd: EnrolPerson) -> dict[str, Any]:
        """Enrol (or change the enrolment of) a registered person; publishes enroll.events."""
        if cmd.insutype == "390" and cmd.acct_balc:
            raise HTTPException(422, "acct_balc: 居民医保 (390) has no personal account; leave it 0")
        e = await asyncio.to_thread(enrol_person, svc.ctx, cmd)
        return e.model_dump(mode="json", exclude={"updated_ms"})

    return app
