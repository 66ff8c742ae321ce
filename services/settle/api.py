"""Settle API: the national hospital interface (POST /fsi/callService), a claim's status, the
hospital's result stream. What each infno reads and does: infnos.py; the envelope and answers:
interface.py; operators' routes: operations.py."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.exc import IntegrityError

from services.bus.envelope import now_ms
from services.credentials import reveal_names
from services.http import ERROR_RESPONSES, add_healthz, install_error_handlers, json_response
from services.identity import Authenticator, Caller, allow, install
from services.settle import encounters
from services.settle.auth import WINDOW_S, Gate
from services.settle.handlers import claim_status, submit_claim
from services.settle.infnos import (
    TRANSACTIONS,
    Local,
    Reading,
    answer_locally,
    by_person_number,
    claim_of,
    settles_encounter,
)
from services.settle.interface import Clash, FsiRequest, Replay, known_msgid, national_answer
from services.settle.nonces import NonceLog, nonce_engine
from services.settle.operations import add_operations
from services.settle.store import result_of
from services.settle.stream import partition_of, results, resume_offset

if TYPE_CHECKING:
    from services.settle.app import SettleService

Hospital = Annotated[Caller, allow("hospital")]
HospitalOrOperator = Annotated[Caller, allow("hospital", "operator")]


def create_api(svc: SettleService) -> FastAPI:
    app = FastAPI(title="yibao settle", description="跨省异地就医直接结算: hospital interface and hop chain",
                  responses=ERROR_RESPONSES)
    install_error_handlers(app, national_paths=("/fsi",))
    add_healthz(app, "settle", lambda: svc.runtime.health())
    ref = svc.ctx.ref
    known_regions = {p.admdvs for p in ref.policies} | {h.admdvs for h in ref.hospitals.values()}
    gate = Gate({code: h.key for code, h in ref.hospitals.items()}, durable=NonceLog(nonce_engine(svc.engine), WINDOW_S).first_use,
                schemes={code: h.signature for code, h in ref.hospitals.items() if h.signature},
                paasids={h.paasid: code for code, h in ref.hospitals.items() if h.paasid})
    install(app, Authenticator(svc.common.auth_key, hospitals=gate.check))
    names_key = svc.common.cert_digest_key
    reading = Reading(svc.engine, svc.common.cert_digest_key)

    def answer(req: FsiRequest, result: dict[str, Any] | None, **kw: Any) -> Response:
        return json_response(national_answer(req, result, names_key=names_key, **kw))

    @app.post("/fsi/callService", tags=["hospital"], response_model=None)
    async def call_service(req: FsiRequest, who: Hospital) -> Response:
        """The national hospital interface: one endpoint, the transaction chosen by infno.

        Signed with the x-tif-* headers; a hospital acts only for itself (fixmedins_code)."""
        received = now_ms()
        if who.subject != req.fixmedins_code:
            raise HTTPException(403, f"已认证机构 {who.subject} 不能以 {req.fixmedins_code} 的名义办理业务")
        if req.infno not in TRANSACTIONS:
            raise HTTPException(400, f"infno {req.infno} is not served here yet; served: "
                                     + ", ".join(f"{k} {t.name}" for k, t in TRANSACTIONS.items()))
        for field, code in (("mdtrtarea_admvs", req.mdtrtarea_admvs), ("insuplc_admdvs", req.insuplc_admdvs)):
            if code not in known_regions:
                raise HTTPException(400, f"{field} {code} is not a pooling region this platform knows "
                                         f"(known: {', '.join(sorted(known_regions))})")
        if TRANSACTIONS[req.infno].local is not None:  # the treatment city's own records
            return await local_request(req)
        deadline = now_ms() + svc.settings.deadline_ms
        try:  # a settlement by mdtrt_id reads the encounter: off the loop; the rest is pure
            claim = (await asyncio.to_thread(claim_of, req, deadline, reading) if settles_encounter(req)
                     else claim_of(req, deadline, reading))
        except encounters.EncounterError as exc:
            # a settlement by mdtrt_id sent again after it settled the encounter: the first answer
            known = await asyncio.to_thread(claim_status, svc.engine, req.msgid)
            if known is not None and known.status != "pending" and known.fixmedins_code == req.fixmedins_code:
                return answer(req, result_of(known))
            raise HTTPException(422, f"{exc.code}: {exc}") from None
        if by_person_number(claim):
            since = now_ms() - svc.settings.person_query_window_h * 3_600_000
            if not await asyncio.to_thread(encounters.knows_person, svc.engine, req.fixmedins_code, claim.psn_no, since):
                raise HTTPException(403, f"{req.infno} 仅凭人员编号 {claim.psn_no} 不能查询：请先以医保电子凭证、身份证或社保卡"
                                         f"办理 1101（{svc.settings.person_query_window_h} 小时内有效），或该人员在本机构有未结的就诊登记")
        assert svc.replies is not None
        fut = svc.replies.expect(claim.msgid)
        # On the loop, not in a thread: the hop workers of this process write the same SQLite
        # file, and a writer in another thread makes them wait on its lock with the loop blocked.
        existing = submit_claim(svc.ctx, claim, svc.replies.topic)
        seen = known_msgid(existing, claim)
        if existing is not None and existing.status != "pending":  # no reply is coming for it
            svc.replies.forget(claim.msgid)  # (while pending, the first request waits for it)
        if isinstance(seen, Clash):
            raise HTTPException(409, seen.message)
        if isinstance(seen, Replay):
            return answer(req, seen.result)
        wait_s = (deadline - now_ms() + svc.settings.reply_grace_ms) / 1000
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), timeout=max(wait_s, 0.1))
            return answer(req, result, timing={"received_ms": received, "replied_ms": now_ms()})  # type: ignore[arg-type]
        except (TimeoutError, ValueError):  # no reply in time, or one we cannot read: the claim's record
            svc.replies.forget(claim.msgid)
            rec = await asyncio.to_thread(claim_status, svc.engine, claim.msgid)
            if rec is not None and rec.status != "pending":
                return answer(req, result_of(rec))
            return answer(req, None, pending_msg=(
                f"结算超时：{svc.settings.deadline_ms} ms 内未完成，结果未知；请用 msgid {req.msgid} "
                "查询 GET /claims/{msgid}，或发起 2601 冲正"))

    async def local_request(req: FsiRequest) -> Response:
        """Answered here, once per msgid: the same msgid again gets the first answer."""
        first = await asyncio.to_thread(encounters.answered, svc.engine, req.msgid, req.fixmedins_code)
        if first is not None:
            return Response(first, media_type="application/json")
        try:
            body = await asyncio.to_thread(answer_once, req)
        except encounters.EncounterError as exc:
            raise HTTPException(422, f"{exc.code}: {exc}") from None
        except IntegrityError:  # the same msgid raced in and its effect won: answer what was kept first
            kept = await asyncio.to_thread(encounters.answered, svc.engine, req.msgid, req.fixmedins_code)
            if kept is None:
                raise
            body = kept
        return Response(body, media_type="application/json")

    def answer_once(req: FsiRequest) -> bytes:
        """The effect and the msgid's answer in one transaction: a resend after a crash between
        them cannot find the effect done and the answer missing."""
        with svc.engine.begin() as conn:
            body = orjson.dumps(answer_locally(req, Local(conn, svc.engine, ref.hospitals, ref.catalogue)))
            encounters.remember(conn, req.msgid, req.fixmedins_code, req.infno, body)
        return body

    @app.get("/claims/{msgid}", tags=["hospital"])
    async def get_claim(msgid: str, who: HospitalOrOperator) -> dict[str, Any]:
        """Status of a request by msgid: pending, settled or failed, with the hop trace (a hospital's own only)."""
        rec = await asyncio.to_thread(claim_status, svc.engine, msgid)
        if rec is None or (who.role == "hospital" and rec.fixmedins_code != who.subject):
            raise HTTPException(404, f"no request with msgid {msgid} was received here from {who.subject}")
        result = result_of(rec)
        if result is not None:
            result["outcome"] = reveal_names(result["outcome"], names_key)
        return {"msgid": msgid, "status": rec.status, "fixmedins_code": rec.fixmedins_code, "result": result}

    @app.get("/hospitals/{fixmedins_code}/results", tags=["hospital"], response_model=None)
    async def result_stream(fixmedins_code: str, who: HospitalOrOperator,
                            last_event_id: str | None = Header(None)) -> StreamingResponse:
        """Server-Sent Events: this hospital's settlement results as they are decided.

        Each event is a SettlementResult (JSON) with `id: <partition>:<offset>`; reconnect with
        the `Last-Event-ID` header to resume after the last one received."""
        if who.role == "hospital" and who.subject != fixmedins_code:
            raise HTTPException(403, f"已认证机构 {who.subject} 不能订阅 {fixmedins_code} 的结算结果")
        if fixmedins_code not in ref.hospitals:
            raise HTTPException(404, f"{fixmedins_code} 不是已登记的定点医药机构")
        try:
            resume_offset(last_event_id, await partition_of(svc.runtime.bus, fixmedins_code))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return StreamingResponse(results(svc.runtime.bus, fixmedins_code, last_event_id, names_key),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    add_operations(app, svc)
    return app
