"""The settle service's routes for operators, provinces and supervisors: one claim's trace
across the hops, clearing (预付金, monthly statements), injected faults, counters, what the
insured city knows of a person, and the console."""

from __future__ import annotations

import asyncio
import logging
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response

from services.bus.faults import Fault
from services.console import add_console
from services.identity import Caller, allow, not_yours
from services.ops import add_ops_routes, hop_records
from services.settle import clearing
from services.settle.clearing import ClearingError, advance_funds
from services.settle.handlers import claim_status, person_status
from services.settle.store import result_of

if TYPE_CHECKING:
    from services.settle.app import SettleService

log = logging.getLogger("yibao.settle.api")


def add_operations(app: FastAPI, svc: SettleService) -> None:
    async def claim_trace(msgid: str) -> dict[str, Any] | None:
        rec = await asyncio.to_thread(claim_status, svc.engine, msgid)
        if rec is None:
            return None
        records = await hop_records(svc.runtime.bus, msgid, rec.created_ms - 1000)
        result = result_of(rec)
        last = records[-1] if records else None
        now = (f"answered: {rec.status}" if rec.status != "pending" else
               f"on {last['topic']} (partition {last['partition']}, key {last['key']})" if last else "not yet on a hop")
        if last and last["topic"].endswith(".dlq"):
            now += f"; dead-lettered on {last['topic']}: {last['reason']}"
        return {"msgid": msgid, "infno": rec.infno, "fixmedins_code": rec.fixmedins_code, "status": rec.status,
                "received_ms": rec.created_ms, "now": now, "records": records,
                "hop_trace": result["trace"] if result else []}

    @app.get("/ops/trace/{msgid}", tags=["ops"])
    async def trace(msgid: str, _: Annotated[Caller, allow("operator")]) -> dict[str, Any]:
        """One claim across every hop: its status, every record of it on the hop topics (retries and
        dead letters too) with times and attempts, the hop trace of its answer, and where it is now."""
        found = await claim_trace(msgid)
        if found is None:
            raise HTTPException(404, f"no request with msgid {msgid} was received here")
        return found

    @app.get("/clearing/advance-funds", tags=["clearing"])
    async def advance(who: Annotated[Caller, allow("operator", "province", "supervisor")]) -> list[dict[str, Any]]:
        """预付金 per (insured province, treatment province): amount, used since the last clearing, level
        (a province or supervisor sees the pairs its region is part of)."""
        return of_pairs(who, await asyncio.to_thread(advance_funds, svc.engine))

    @app.post("/clearing/{period}/run", tags=["clearing"])
    async def clearing_run(period: str, _: Annotated[Caller, allow("operator")]) -> list[dict[str, Any]]:
        """Close a month and return its statements per province pair (the same ones if already closed)."""
        try:
            return await asyncio.to_thread(clearing.run, svc.engine, period, svc.ctx.ref.advance)
        except ClearingError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    @app.get("/clearing/{period}", tags=["clearing"], response_model=None)
    async def clearing_statements(period: str, who: Annotated[Caller, allow("operator", "province", "supervisor")],
                                  format: Literal["json", "csv"] = "json") -> Any:
        """The statements of a closed month, as JSON or CSV (?format=csv); a province's own pairs."""
        try:
            rows = of_pairs(who, await asyncio.to_thread(clearing.statements, svc.engine, period))
        except ClearingError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if format == "csv":
            return Response(clearing.as_csv(rows), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f"attachment; filename=clearing-{period}.csv"})
        return rows

    @app.get("/ops/faults", tags=["ops"])
    async def get_faults(_: Annotated[Caller, allow("operator")]) -> list[Fault]:
        """Faults in force (in every settle process)."""
        return svc.ctx.faults.listed()

    @app.put("/ops/faults", tags=["ops"])
    async def put_fault(fault: Fault, who: Annotated[Caller, allow("operator")]) -> list[Fault]:
        """Make a hop down, slow or failing, in every settle process; all zero/false removes it."""
        if fault.level not in ("city", "province", "national"):
            raise HTTPException(422, f"level {fault.level!r}: use city, province or national")
        svc.ctx.faults.set(fault)
        log.warning("%s set fault %s", who, fault.model_dump_json())
        await svc.publish_faults()
        return svc.ctx.faults.listed()

    @app.delete("/ops/faults", tags=["ops"])
    async def clear_faults(who: Annotated[Caller, allow("operator")]) -> list[Fault]:
        """Remove every injected fault, in every settle process."""
        svc.ctx.faults.clear()
        log.warning("%s cleared every fault", who)
        await svc.publish_faults()
        return []

    @app.get("/ops/stats", tags=["ops"])
    async def stats(_: Annotated[Caller, allow("operator")]) -> dict[str, Any]:
        """Counters of the hop workers and the outbox relay."""
        return {"worker": svc.worker.stats if svc.worker else None,
                "outbox_published": svc.runtime.relay.published}

    add_person_status(app, svc)
    add_ops_routes(app, svc.runtime.bus)
    add_console(app, svc.runtime.bus, svc.common.auth_key, svc.ctx.faults.listed, claim_trace,
                lambda: asyncio.to_thread(advance_funds, svc.engine),
                lambda period: asyncio.to_thread(clearing.statements, svc.engine, period),
                lambda: svc.settings.monitor_url)


def add_person_status(app: FastAPI, svc: SettleService) -> None:
    @app.get("/persons/{psn_no}/status", tags=["persons"])
    async def status(psn_no: str, who: Annotated[Caller, allow("operator", "province", "supervisor", "insured")],
                     year: int | None = Query(None, ge=2000, le=2100)) -> dict[str, Any]:
        """What the insured city knows of a person: enrolment, filings, year-to-date accumulators
        (a province or supervisor: people insured in its region; an insured person: their own)."""
        found = await asyncio.to_thread(person_status, svc.engine, psn_no, year or date.today().year)
        if found is None or not (who.is_person(psn_no) or any(
                who.covers(e["insuplc_admdvs"]) for e in found["enrolments"])):  # type: ignore[attr-defined]
            raise not_yours(f"an enrolment of {psn_no} at its insured city")
        return found


def of_pairs(who: Caller, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of province pairs (clearing, advance funds) the caller's region is part of."""
    return [r for r in rows if who.covers(r["insured_prov"]) or who.covers(r["treat_prov"])]
