"""Monitor API: the rule catalogue, the alerts and cases supervisors work, hospitals' own alerts
and appeals, and the 3101/3102 check a hospital may call before it settles."""

from __future__ import annotations

import asyncio
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from schemas.regions import designated_hospitals
from services.http import ERROR_RESPONSES, add_healthz, install_error_handlers
from services.identity import Authenticator, Caller, allow, install
from services.monitor import cases
from services.monitor.handlers import list_alerts
from services.monitor.precheck import check_episode
from services.monitor.review import ReviewRequest, episodes_of
from services.settle.auth import Gate

if TYPE_CHECKING:
    from services.monitor.app import MonitorService

Watchers = Annotated[Caller, allow("supervisor", "operator", "hospital")]
Supervisors = Annotated[Caller, allow("supervisor", "operator")]
Hospitals = Annotated[Caller, allow("hospital")]


class NewCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alert_ids: list[str] = Field(min_length=1, max_length=500)
    title: str = Field(min_length=1, max_length=200, description="what the case is about, in a sentence")


class CaseStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: Literal["investigate", "confirm", "dismiss", "appeal", "uphold_appeal", "reject_appeal"]
    note: str = Field("", max_length=2000, description="why; the appeal's text when the step is appeal")
    recovered_amt: Decimal | None = Field(None, ge=0, max_digits=16, decimal_places=2,
                                          description="confirm: the amount to recover (追回金额, yuan)")


def create_api(svc: MonitorService) -> FastAPI:
    app = FastAPI(title="yibao monitor", description="智能监控: the rule catalogue, alerts, cases, the 3101/3102 check",
                  responses=ERROR_RESPONSES)
    install_error_handlers(app)
    add_healthz(app, "monitor", lambda: svc.runtime.health())
    hospitals = designated_hospitals()
    gate = Gate({code: str(h["key"]) for code, h in hospitals.items()},
                schemes={code: str(h["signature"]) for code, h in hospitals.items() if h.get("signature")},
                paasids={str(h["paasid"]): code for code, h in hospitals.items() if h.get("paasid")})
    install(app, Authenticator(svc.common.auth_key, hospitals=gate.check))
    region_of = {code: str(h["admdvs"]) for code, h in hospitals.items()}

    def visible(who: Caller) -> list[str] | None:
        """The hospitals whose alerts and cases the caller sees (None: all)."""
        if who.role == "operator":
            return None
        if who.role == "hospital":
            return [who.subject]
        return [c for c, r in region_of.items() if who.covers(r)]

    def may_touch(who: Caller) -> Any:
        seen = visible(who)
        return lambda case: seen is None or case.fixmedins_code in seen

    def answer(exc: cases.CaseError) -> HTTPException:
        return HTTPException(exc.status, f"{exc.code}: {exc.message}")

    @app.get("/rules", tags=["rules"])
    async def rules(who: Watchers) -> dict[str, Any]:
        """The rule catalogue in force (it is read again when its file changes)."""
        return svc.ctx.rules.current().model_dump(mode="json")

    @app.get("/alerts", tags=["alerts"])
    async def alerts(
        who: Watchers,
        fixmedins_code: str | None = Query(None, pattern=r"^[HP]\d{11}$"),
        msgid: str | None = Query(None, max_length=30),
        rule_id: str | None = Query(None, max_length=24),
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        """Alerts, newest first. A supervisor sees the hospitals of the region they supervise, a
        hospital its own; alerts name the person by psn_no only."""
        rows = await asyncio.to_thread(list_alerts, svc.engine, fixmedins_code, msgid, limit, visible(who), rule_id)
        return [r.model_dump(mode="json") for r in rows]

    @app.post("/cases", tags=["cases"], status_code=201)
    async def new_case(body: NewCase, who: Supervisors) -> dict[str, Any]:
        """Open a case on alerts of one hospital in your region."""
        try:
            case = await asyncio.to_thread(cases.open_case, svc.engine, body.alert_ids, body.title, str(who),
                                           lambda admdvs: who.covers(admdvs))
        except cases.CaseError as exc:
            raise answer(exc) from None
        return cases.view(case)

    @app.get("/cases", tags=["cases"])
    async def list_cases(who: Watchers, status: str | None = Query(None, max_length=16),
                         limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(cases.list_cases, svc.engine, visible(who), status, limit)
        return [cases.view(c) for c in rows]

    @app.get("/cases/{case_id}", tags=["cases"])
    async def one_case(case_id: str, who: Watchers) -> dict[str, Any]:
        found = await asyncio.to_thread(cases.get_case, svc.engine, case_id)
        if found is None or not may_touch(who)(found[0]):
            raise HTTPException(404, f"no case {case_id} that you may see")
        return cases.view(*found)

    @app.post("/cases/{case_id}/steps", tags=["cases"])
    async def step(case_id: str, body: CaseStep, who: Watchers) -> dict[str, Any]:
        """Move a case: investigate, confirm (with recovered_amt) or dismiss (supervisor); appeal a
        confirmed case (the hospital, its reasons in note); uphold_appeal or reject_appeal (supervisor)."""
        try:
            case = await asyncio.to_thread(cases.take_step, svc.engine, case_id, body.step, str(who), who.role,
                                           body.note, body.recovered_amt, may_touch(who))
        except cases.CaseError as exc:
            raise answer(exc) from None
        return cases.view(case)

    @app.post("/review", tags=["rules"])
    async def review(body: ReviewRequest, who: Hospitals) -> dict[str, Any]:
        """3101 (事前, trig_scen 1–5) / 3102 (事中, trig_scen 6–10): the encounters of the request
        through the rules that need no history, gender and age included (the request carries them).
        Answers result[] in the national shape."""
        results: list[dict[str, object]] = []
        for ep in episodes_of(body, who.subject, date.today()):
            verdict = check_episode(svc.ctx.rules, ep, svc.ctx.items, with_person=True,
                                    only=body.input.data.rule_ids, trig_scen=body.input.data.trig_scen)
            results += verdict.rows
        return {"infcode": 0, "output": {"result": results}}

    return app
