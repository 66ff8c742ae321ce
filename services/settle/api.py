"""Settle API: the national hospital interface (POST /fsi/callService), claim status, fault ops."""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from schemas.common import Admdvs, FixmedinsCode, Insutype
from schemas.events import Claim, Diagnosis, FeeLine
from services.bus.envelope import now_ms
from services.bus.faults import Fault
from services.console import add_console
from services.credentials import TokenError, card_digest, cert_digest, read_ectoken, reveal_names
from services.http import ERROR_RESPONSES, add_healthz, install_error_handlers, json_response
from services.identity import Authenticator, Caller, allow, install, not_yours
from services.ops import add_ops_routes, hop_records
from services.settle import clearing, encounters, reconcile
from services.settle.auth import Gate
from services.settle.clearing import ClearingError, advance_funds
from services.settle.domain import national_row
from services.settle.handlers import claim_status, result_of, submit_claim
from services.settle.store import ClaimRecord, first_use_of_nonce
from services.settle.stream import partition_of, results, resume_offset

if TYPE_CHECKING:
    from services.settle.app import SettleService

log = logging.getLogger("yibao.settle.api")

SETTLEMENT_INFNOS = {"2207": "门诊结算", "2304": "住院结算", "2206": "门诊预结算", "2303": "住院预结算"}
RECONCILIATION = {"3201": "医药机构费用结算对总账", "3202": "医药机构费用结算对明细账"}
LOCAL_ENCOUNTER = {"2202": "门诊挂号撤销"} | encounters.VISIT_INFO | encounters.UPLOADS | encounters.UPLOAD_CANCELS
TRANSACTIONS = SETTLEMENT_INFNOS | {"1101": "人员信息获取", "2208": "门诊结算撤销", "2305": "住院结算撤销",
                                    "2601": "冲正交易", "5206": "人员累计信息查询"} | RECONCILIATION | encounters.REGISTRATIONS \
    | LOCAL_ENCOUNTER


class FsiRequest(BaseModel):
    """公共入参: the national request envelope (fields not listed here are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    infno: str = Field(min_length=4, max_length=5)
    msgid: str = Field(min_length=1, max_length=30)
    mdtrtarea_admvs: Admdvs
    insuplc_admdvs: Admdvs
    fixmedins_code: FixmedinsCode
    input: dict[str, Any]


class VisitData(BaseModel):
    """What a registration (2201 data, 2401 mdtrtinfo) or a settlement with its fees inline says
    about the visit. The national 2201 has no med_type (it comes with 2203): 11 普通门诊 until then."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    psn_no: str = Field(min_length=1, max_length=30)
    insutype: Insutype
    med_type: str | None = Field(None, pattern=r"^\d{2,6}$")
    mdtrt_cert_type: Literal["01", "02", "03"] = "02"
    begntime: date
    dise_codg: str | None = Field(None, max_length=30, description="病种编码: 门诊慢特病 (med_type 14) needs it")
    ipt_otp_no: str | None = Field(None, max_length=30, description="住院/门诊号 (2201), echoed in the answer")
    ipt_no: str | None = Field(None, max_length=30, description="住院号 (2401), echoed as ipt_otp_no")

    @field_validator("begntime", mode="before")
    @classmethod
    def _date_part(cls, v: Any) -> Any:
        return v[:10] if isinstance(v, str) else v


class SettleData(VisitData):
    med_type: str = Field(pattern=r"^\d{2,6}$")
    acct_used_flag: Literal["0", "1"] = "0"


class EncounterInfo(BaseModel):
    """2203 门诊就诊信息上传 mdtrtinfo: what the visit turned out to be."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    mdtrt_id: str = Field(min_length=1, max_length=30)
    psn_no: str = Field(min_length=1, max_length=30)
    med_type: str = Field(pattern=r"^\d{2,6}$")
    dise_codg: str | None = Field(None, max_length=30, description="病种编码: 门诊慢特病 (med_type 14) needs it")


class SettleInput(BaseModel):
    data: SettleData
    feedetail: list[FeeLine] = Field(min_length=1, max_length=2000)


class CredentialData(BaseModel):
    """1101: who holds this credential? 01 e-voucher token, 02 ID card number, 03 social-security
    card number with its card_sn, or psn_no."""

    mdtrt_cert_type: Literal["01", "02", "03"] = "02"
    mdtrt_cert_no: str | None = Field(None, max_length=128)
    card_sn: str | None = Field(None, max_length=32)
    psn_no: str | None = Field(None, max_length=30)
    certno: str | None = Field(None, max_length=50, description="证件号码: read as the ID card number (02) when "
                                                              "mdtrt_cert_no is empty")


class EncounterSettleData(BaseModel):
    """A settlement of an encounter whose fees were uploaded (2204/2301): mdtrt_id instead of fee lines."""

    psn_no: str = Field(min_length=1, max_length=30)
    mdtrt_id: str = Field(min_length=1, max_length=30)
    acct_used_flag: Literal["0", "1"] = "0"


class UploadInput(BaseModel):
    data: dict[str, Any] = {}
    feedetail: list[FeeLine] = Field(min_length=1, max_length=2000)

    @field_validator("feedetail", mode="before")
    @classmethod
    def _one_line_as_object(cls, v: Any) -> Any:
        """Some adapters send a single fee line as an object rather than a list of one."""
        return [v] if isinstance(v, dict) else v


class EncounterRef(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    psn_no: str = Field(min_length=1, max_length=30)
    mdtrt_id: str = Field(min_length=1, max_length=30)
    feedetl_sn: str | None = Field(None, max_length=30, description="2302 (and 2205): one line, or 0000 for all")
    chrg_bchno: str | None = Field(None, max_length=30, description="2205 (national): a charge batch, or 0000 for all")


class PersonRef(BaseModel):
    psn_no: str = Field(min_length=1, max_length=30)
    insutype: Insutype = Insutype.EMPLOYEE


class ReverseData(PersonRef):
    setl_id: str = Field(min_length=1, max_length=30, description="the settlement to reverse")


class RedoData(PersonRef):
    omsgid: str = Field(min_length=1, max_length=30, description="原发送方报文ID: the request to undo")
    oinfno: str = Field("2207", description="原交易编号")


class YearData(PersonRef):
    year: int = Field(default_factory=lambda: date.today().year, ge=2000, le=2100)
    cum_ym: str | None = Field(None, pattern=r"^20\d{2}(0[1-9]|1[0-2])$", description="累计年月 YYYYMM (national)")

    def as_of(self) -> date:
        """The month the accumulators are answered for: cum_ym, this month, or December of a past year."""
        if self.cum_ym:
            return date(int(self.cum_ym[:4]), int(self.cum_ym[4:]), 1)
        today = date.today()
        return today if self.year == today.year else date(self.year, 12, 31)


# The node under `input` that carries a transaction's main record (national interface); every
# other transaction carries it in `data`. 2401 in `data` is read too (yibao's earlier form).
MAIN_NODE = {"2401": "mdtrtinfo", "2203": "mdtrtinfo", "2203A": "mdtrtinfo"}


def main_record(req: FsiRequest) -> tuple[str, dict[str, Any]]:
    """(node name, record): the transaction's main input record, read at its national node."""
    node = MAIN_NODE.get(req.infno, "data")
    raw = req.input.get(node)
    if raw is None and node != "data":
        node, raw = "data", req.input.get("data")
    if isinstance(raw, list) and len(raw) == 1:  # a record sent as a list of one
        raw = raw[0]
    if not isinstance(raw, dict):
        want = MAIN_NODE.get(req.infno, "data")
        raise RequestValidationError([{"type": "missing", "loc": ("body", "input", want),
                                       "msg": f"{req.infno} reads its main record from input.{want} (an object)",
                                       "input": raw}])
    return node, raw


def diagnoses_of(req: FsiRequest) -> list[Diagnosis]:
    """input.diseinfo (2203, 2401): a list of diagnoses, or one as an object."""
    raw = req.input.get("diseinfo") or []
    rows = [raw] if isinstance(raw, dict) else raw
    if not isinstance(rows, list):
        raise RequestValidationError([{"type": "list_type", "loc": ("body", "input", "diseinfo"),
                                       "msg": "diseinfo: a list of diagnoses", "input": raw}])
    return [_input(Diagnosis, r, "diseinfo", str(i)) for i, r in enumerate(rows)]


def _input(model: type[BaseModel], raw: dict[str, Any], *path: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "input", *path, *e["loc"])} for e in exc.errors()]) from None


def reads_encounter(req: FsiRequest) -> bool:
    data = req.input.get("data")
    return (req.infno in SETTLEMENT_INFNOS and isinstance(data, dict) and "mdtrt_id" in data
            and not req.input.get("feedetail"))


def claim_of(req: FsiRequest, deadline: int, engine: Engine) -> Claim:
    """The request as it travels the hops, whatever the transaction."""
    base = dict(msgid=req.msgid, infno=req.infno, fixmedins_code=req.fixmedins_code,
                mdtrtarea_admvs=req.mdtrtarea_admvs, insuplc_admdvs=req.insuplc_admdvs, deadline_ms=deadline)
    node, data = main_record(req)
    if req.infno in SETTLEMENT_INFNOS and "mdtrt_id" in data and not req.input.get("feedetail"):
        ref = _input(EncounterSettleData, data, node)
        e, lines = encounters.for_settlement(engine, req.fixmedins_code, ref.mdtrt_id, ref.psn_no)
        if e["insuplc_admdvs"] != req.insuplc_admdvs:
            raise HTTPException(422, f"insuplc_admdvs {req.insuplc_admdvs} 与就诊 {ref.mdtrt_id} 登记的参保地 "
                                     f"{e['insuplc_admdvs']} 不一致")
        return Claim(**base, fees=lines, psn_no=ref.psn_no, insutype=e["insutype"], med_type=e["med_type"],
                     mdtrt_cert_type=e["mdtrt_cert_type"], acct_used_flag=ref.acct_used_flag,
                     begntime=encounters.begin_date(e), mdtrt_id=ref.mdtrt_id, dise_codg=e["dise_codg"],
                     diagnoses=e["diagnoses"])
    if req.infno in SETTLEMENT_INFNOS:
        inp = _input(SettleInput, req.input)
        return Claim(**base, fees=inp.feedetail, **inp.data.model_dump(), diagnoses=diagnoses_of(req))
    if req.infno in encounters.REGISTRATIONS:
        v = _input(VisitData, data, node)
        if v.med_type is None and req.infno == "2401":
            raise RequestValidationError([{"type": "missing", "loc": ("body", "input", node, "med_type"),
                                           "msg": "2401 入院办理: med_type (医疗类别, e.g. 21 普通住院) is required",
                                           "input": data}])
        return Claim(**base, **v.model_dump(exclude={"med_type", "ipt_no", "ipt_otp_no"}), med_type=v.med_type or "11",
                     ipt_otp_no=v.ipt_otp_no or v.ipt_no, diagnoses=diagnoses_of(req))
    if req.infno == "1101":
        cred = _input(CredentialData, data, node)
        person = dict(insutype="310", med_type="11", begntime=date.today())
        if cred.psn_no:
            return Claim(**base, psn_no=cred.psn_no, **person)
        if not cred.mdtrt_cert_no and cred.mdtrt_cert_type == "02" and cred.certno:
            cred.mdtrt_cert_no = cred.certno
        if not cred.mdtrt_cert_no:
            raise HTTPException(422, "1101: give mdtrt_cert_no (01 e-voucher token, 02 ID card number, 03 card "
                                     "number with card_sn) or psn_no")
        if cred.mdtrt_cert_type == "01":
            try:
                psn_no, _ = read_ectoken(cred.mdtrt_cert_no)
            except TokenError as exc:
                raise HTTPException(422, str(exc)) from None
            return Claim(**base, psn_no=psn_no, mdtrt_cert_type="01", **person)
        if cred.mdtrt_cert_type == "03":
            if not cred.card_sn:
                raise HTTPException(422, "1101 with a social-security card (03): card_sn (卡识别码) is required "
                                         "for cross-region use")
            return Claim(**base, psn_no="", mdtrt_cert_type="03", cert_digest=card_digest(cred.mdtrt_cert_no,
                                                                                          cred.card_sn), **person)
        return Claim(**base, psn_no="", cert_digest=cert_digest(cred.mdtrt_cert_no), **person)
    ward = "21" if req.infno == "2305" else "11"
    if req.infno in ("2208", "2305"):
        r = _input(ReverseData, data, node)
        return Claim(**base, psn_no=r.psn_no, insutype=r.insutype, med_type=ward, begntime=date.today(),
                     orig_setl_id=r.setl_id)
    if req.infno == "2601":
        o = _input(RedoData, data, node)
        return Claim(**base, psn_no=o.psn_no, insutype=o.insutype, med_type=ward, begntime=date.today(),
                     orig_msgid=o.omsgid)
    y = _input(YearData, data, node)  # 5206
    return Claim(**base, psn_no=y.psn_no, insutype=y.insutype, med_type=ward, begntime=y.as_of())


def by_person_number(claim: Claim) -> bool:
    """1101 by psn_no alone, and 5206: the person's data without a credential presented with it."""
    return claim.infno == "5206" or (claim.infno == "1101" and claim.cert_digest is None
                                     and claim.mdtrt_cert_type != "01")


def _refmsgid(admdvs: str) -> str:
    return f"{admdvs}{datetime.now():%Y%m%d%H%M%S}{secrets.randbelow(10**10):010d}"


def envelope(req: FsiRequest) -> dict[str, Any]:
    """The platform's part of every 公共出参."""
    t = f"{datetime.now():%Y%m%d%H%M%S%f}"[:17]
    return {"inf_refmsgid": _refmsgid(req.mdtrtarea_admvs), "refmsg_time": t, "respond_time": t}


REGISTRATION_NODE = {"2201": "data", "2401": "result"}  # where adapters read mdtrt_id in the answer

REPLAY_FIELDS = ("infno", "psn_no", "insuplc_admdvs")


def msgid_clash(first: ClaimRecord, claim: Claim) -> str | None:
    """Why a request with a msgid already received is not a replay of it (None: it is). The first
    answer goes only to the same hospital's same request, never another person's or hospital's."""
    fresh = "请为本次交易生成新的报文ID（fixmedins_code + yyyyMMddHHmmss + 4 位顺序号）"
    if first.fixmedins_code != claim.fixmedins_code:
        return f"msgid {claim.msgid} 已被使用，不能重复；{fresh}"
    differ = [f for f in REPLAY_FIELDS if getattr(first, f) != getattr(claim, f)]
    if differ:
        return (f"msgid {claim.msgid} 已用于本机构的另一笔交易（{'、'.join(differ)} 不同），"
                f"同一 msgid 只能重发同一笔交易；{fresh}")
    return None


def national_answer(req: FsiRequest, result: dict[str, Any] | None, pending_msg: str | None = None,
           timing: dict[str, int] | None = None, names_key: str | None = None) -> dict[str, Any]:
    """公共出参 around a settlement result in its JSON form (or a pending/timeout answer).

    The JSON form, not the model: the reply arrives as JSON and goes out as JSON, and validating
    it into a SettlementResult and dumping it again was a tenth of the API's CPU (profiled)."""
    base = envelope(req)
    if result is None:
        return base | {"infcode": -1, "err_msg": pending_msg, "output": {"status": "pending", "msgid": req.msgid}}
    o, trace = reveal_names(result["outcome"], names_key), result["trace"]  # names travel sealed
    if o["infcode"] != 0:
        return base | {"infcode": -1, "err_msg": o["err_msg"],
                       "output": {"err_code": o["err_code"], "hop_trace": trace}}
    if req.infno in REGISTRATION_NODE:  # the national node: output.data (2201), output.result (2401)
        return base | {"infcode": 0, "err_msg": None,
                       "output": {REGISTRATION_NODE[req.infno]: o.get("data") or {}, "hop_trace": trace}}
    if o.get("setlinfo") is None:  # 1101, 5206, a 2601 with nothing to undo
        return base | {"infcode": 0, "err_msg": None, "output": (o.get("data") or {}) | {"hop_trace": trace}}
    return base | {"infcode": 0, "err_msg": None, "output": {
        "setlinfo": o["setlinfo"],
        "setldetail": o["setldetail"],
        "feedetail": result["split"],
        "hop_trace": trace,
        "api_timing": timing,  # epoch ms: request received, answer back at the API
    } | (o.get("data") or {})}


def create_api(svc: SettleService) -> FastAPI:
    app = FastAPI(title="yibao settle", description="跨省异地就医直接结算: hospital interface and hop chain", responses=ERROR_RESPONSES)
    install_error_handlers(app, national_paths=("/fsi",))
    add_healthz(app, "settle", lambda: svc.runtime.health())
    known_regions = {p.admdvs for p in svc.ctx.ref.policies} | {h.admdvs for h in svc.ctx.ref.hospitals.values()}
    hospitals = svc.ctx.ref.hospitals
    gate = Gate({code: h.key for code, h in hospitals.items()}, durable=lambda code, nonce, t: (
        first_use_of_nonce(svc.engine, code, nonce, int(t * 1000), int((t - gate.window_s) * 1000))),
        schemes={code: h.signature for code, h in hospitals.items() if h.signature},
        paasids={h.paasid: code for code, h in hospitals.items() if h.paasid})
    install(app, Authenticator(svc.common.auth_key, hospitals=gate.check))
    names_key = svc.common.cert_digest_key

    def answer(req: FsiRequest, result: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
        return national_answer(req, result, names_key=names_key, **kw)

    @app.post("/fsi/callService", tags=["hospital"], response_model=None)
    async def call_service(req: FsiRequest, who: Annotated[Caller, allow("hospital")]) -> Response:
        """The national hospital interface: one endpoint, the transaction chosen by infno.

        Signed with the x-tif-* headers; a hospital acts only for itself (fixmedins_code)."""
        received = now_ms()
        if who.subject != req.fixmedins_code:
            raise HTTPException(403, f"已认证机构 {who.subject} 不能以 {req.fixmedins_code} 的名义办理业务")
        if req.infno not in TRANSACTIONS:
            raise HTTPException(400, f"infno {req.infno} is not served here yet; served: "
                                     + ", ".join(f"{k} {v}" for k, v in TRANSACTIONS.items()))
        for field, code in (("mdtrtarea_admvs", req.mdtrtarea_admvs), ("insuplc_admdvs", req.insuplc_admdvs)):
            if code not in known_regions:
                raise HTTPException(400, f"{field} {code} is not a pooling region this platform knows "
                                         f"(known: {', '.join(sorted(known_regions))})")
        if req.infno in RECONCILIATION or req.infno in LOCAL_ENCOUNTER:  # the treatment city's own records
            return await local_request(req)
        deadline = now_ms() + svc.settings.deadline_ms
        try:  # a settlement by mdtrt_id reads the encounter: off the loop; the rest is pure
            claim = (await asyncio.to_thread(claim_of, req, deadline, svc.engine) if reads_encounter(req)
                     else claim_of(req, deadline, svc.engine))
        except encounters.EncounterError as exc:
            # a settlement by mdtrt_id sent again after it settled the encounter: the first answer
            known = await asyncio.to_thread(claim_status, svc.engine, req.msgid)
            if known is not None and known.status != "pending" and known.fixmedins_code == req.fixmedins_code:
                return json_response(answer(req, result_of(known)))
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
        if existing is not None:  # the msgid was received before
            if existing.status != "pending":  # else the first request still waits for this reply
                svc.replies.forget(claim.msgid)
            if clash := msgid_clash(existing, claim):
                raise HTTPException(409, clash)
            if existing.status != "pending":
                return json_response(answer(req, result_of(existing)))  # the same request again: the first answer
        wait_s = (deadline - now_ms() + svc.settings.reply_grace_ms) / 1000
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), timeout=max(wait_s, 0.1))
            return json_response(answer(req, result, timing={"received_ms": received, "replied_ms": now_ms()}))  # type: ignore[arg-type]
        except (TimeoutError, ValueError):  # no reply in time, or one we cannot read: the claim's record
            svc.replies.forget(claim.msgid)
            rec = await asyncio.to_thread(claim_status, svc.engine, claim.msgid)
            if rec is not None and rec.status != "pending":
                return json_response(answer(req, result_of(rec)))
            return json_response(answer(req, None, pending_msg=(
                f"结算超时：{svc.settings.deadline_ms} ms 内未完成，结果未知；请用 msgid {req.msgid} "
                "查询 GET /claims/{msgid}，或发起 2601 冲正")))

    async def local_request(req: FsiRequest) -> Response:
        """Answered here, once per msgid: the same msgid again gets the first answer."""
        first = await asyncio.to_thread(encounters.answered, svc.engine, req.msgid, req.fixmedins_code)
        if first is not None:
            return Response(first, media_type="application/json")
        try:
            body = await asyncio.to_thread(answer_locally, req)
        except encounters.EncounterError as exc:
            raise HTTPException(422, f"{exc.code}: {exc}") from None
        except IntegrityError:  # the same msgid raced in and its effect won: answer what was kept first
            kept = await asyncio.to_thread(encounters.answered, svc.engine, req.msgid, req.fixmedins_code)
            if kept is None:
                raise
            body = kept
        return Response(body, media_type="application/json")

    def answer_locally(req: FsiRequest) -> bytes:
        """The effect and the msgid's answer in one transaction: a resend after a crash between
        them cannot find the effect done and the answer missing."""
        with svc.engine.begin() as conn:
            out = reconciliation(req) if req.infno in RECONCILIATION else encounter_request(conn, req)
            body = orjson.dumps(out)
            encounters.remember(conn, req.msgid, req.fixmedins_code, req.infno, body)
        return body

    def encounter_request(conn: Connection, req: FsiRequest) -> dict[str, Any]:
        """2202, 2203, 2204/2301, 2205/2302: the treatment city's own records of an encounter."""
        if req.infno in encounters.UPLOADS:
            up = _input(UploadInput, req.input)
            raw = req.input["feedetail"]
            named = {str(ln["mdtrt_id"]) for ln in ([raw] if isinstance(raw, dict) else raw)
                     if isinstance(ln, dict) and ln.get("mdtrt_id")}
            if len(named) > 1:
                raise HTTPException(422, f"feedetail names several encounters ({', '.join(sorted(named))}): "
                                         "upload each encounter's lines in its own request")
            mdtrt_id = up.data.get("mdtrt_id") or next(iter(named), None)
            if not mdtrt_id:
                raise HTTPException(422, "mdtrt_id: give it in input.data or on the fee lines (from 2201/2401)")
            splits = encounters.upload(conn, req.fixmedins_code, str(mdtrt_id), up.feedetail,
                                       svc.ctx.ref.hospitals[req.fixmedins_code], svc.ctx.ref.catalogue)
            catalogue = svc.ctx.ref.catalogue
            out: dict[str, Any] = {"result": [national_row(sp, ln, catalogue.get(ln.med_list_codg))
                                              for sp, ln in zip(splits, up.feedetail, strict=True)]}
        elif req.infno in encounters.VISIT_INFO:
            node, data = main_record(req)
            info = _input(EncounterInfo, data, node)
            n = encounters.describe(conn, req.fixmedins_code, info.mdtrt_id, info.psn_no, info.med_type,
                                    info.dise_codg, diagnoses_of(req))
            out = {"mdtrt_id": info.mdtrt_id, "med_type": info.med_type, "diag_cnt": n}
        else:
            node, data = main_record(req)
            ref = _input(EncounterRef, data, node)
            if req.infno == "2202":
                encounters.cancel_encounter(conn, req.fixmedins_code, ref.mdtrt_id, ref.psn_no)
                out = {"mdtrt_id": ref.mdtrt_id, "status": "cancelled"}
            else:
                if ref.feedetl_sn is None and ref.chrg_bchno is None:
                    raise HTTPException(422, f"{req.infno}: say which lines to take back: chrg_bchno (收费批次号) or "
                                             "feedetl_sn (费用明细流水号), \"0000\" for every line not yet settled")
                n = encounters.cancel_fees(conn, req.fixmedins_code, ref.mdtrt_id, ref.feedetl_sn, ref.chrg_bchno)
                out = {"mdtrt_id": ref.mdtrt_id, "cancelled_lines": n}
        return envelope(req) | {"infcode": 0, "err_msg": None, "output": out}

    def reconciliation(req: FsiRequest) -> dict[str, Any]:
        node, raw = main_record(req)
        if req.infno == "3201":
            out = reconcile.totals(svc.engine, req.fixmedins_code, _input(reconcile.Totals, raw, node))
        else:
            data = _input(reconcile.Period, raw, node)
            rows = [_input(reconcile.DetailRow, r, "detail", str(i)) for i, r in enumerate(req.input.get("detail") or [])]
            out = reconcile.detail(svc.engine, req.fixmedins_code, data, rows)
        return envelope(req) | {"infcode": 0, "err_msg": None, "output": out}

    @app.get("/claims/{msgid}", tags=["hospital"])
    async def get_claim(msgid: str, who: Annotated[Caller, allow("hospital", "operator")]) -> dict[str, Any]:
        """Status of a request by msgid: pending, settled or failed, with the hop trace (a hospital's own only)."""
        rec = await asyncio.to_thread(claim_status, svc.engine, msgid)
        if rec is None or (who.role == "hospital" and rec.fixmedins_code != who.subject):
            raise HTTPException(404, f"no request with msgid {msgid} was received here from {who.subject}")
        result = result_of(rec)
        if result is not None:
            result["outcome"] = reveal_names(result["outcome"], names_key)
        return {"msgid": msgid, "status": rec.status, "fixmedins_code": rec.fixmedins_code, "result": result}

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

    @app.get("/hospitals/{fixmedins_code}/results", tags=["hospital"], response_model=None)
    async def result_stream(fixmedins_code: str, who: Annotated[Caller, allow("hospital", "operator")],
                            last_event_id: str | None = Header(None)) -> StreamingResponse:
        """Server-Sent Events: this hospital's settlement results as they are decided.

        Each event is a SettlementResult (JSON) with `id: <partition>:<offset>`; reconnect with
        the `Last-Event-ID` header to resume after the last one received."""
        if who.role == "hospital" and who.subject != fixmedins_code:
            raise HTTPException(403, f"已认证机构 {who.subject} 不能订阅 {fixmedins_code} 的结算结果")
        if fixmedins_code not in svc.ctx.ref.hospitals:
            raise HTTPException(404, f"{fixmedins_code} 不是已登记的定点医药机构")
        try:
            resume_offset(last_event_id, await partition_of(svc.runtime.bus, fixmedins_code))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return StreamingResponse(results(svc.runtime.bus, fixmedins_code, last_event_id, names_key),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

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
            raise HTTPException(409 if "not ended" in str(exc) else 422, str(exc)) from None

    @app.get("/clearing/{period}", tags=["clearing"], response_model=None)
    async def clearing_statements(period: str, who: Annotated[Caller, allow("operator", "province", "supervisor")],
                                  format: Literal["json", "csv"] = "json") -> Any:
        """The statements of a closed month, as JSON or CSV (?format=csv); a province's own pairs."""
        try:
            rows = of_pairs(who, await asyncio.to_thread(clearing.statements, svc.engine, period))
        except ClearingError as exc:
            raise HTTPException(404, str(exc)) from None
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
    return app


def add_person_status(app: FastAPI, svc: SettleService) -> None:
    from services.settle.handlers import person_status

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
