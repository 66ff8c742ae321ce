"""Every transaction the hospital interface serves, one record per infno: its name, and either how
its input becomes the claim that travels the hops (the insured city decides it: insured.py) or the
local handler that answers it at once from the treatment city's own records (encounters, fee
uploads, reconciliation). `TRANSACTIONS[infno]` is where a reader starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, Engine

from schemas.common import Insutype
from schemas.events import Claim, FeeLine
from services.credentials import TokenError, card_digest, cert_digest, read_ectoken
from services.settle import encounters, insured, reconcile
from services.settle.domain import CatalogueItem, Hospital, national_row
from services.settle.interface import FsiRequest, diagnoses_of, envelope, main_record, read_input

# --- the inputs -------------------------------------------------------------------------------


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


class SettleInput(BaseModel):
    data: SettleData
    feedetail: list[FeeLine] = Field(min_length=1, max_length=2000)


class EncounterSettleData(BaseModel):
    """A settlement of an encounter whose fees were uploaded (2204/2301): mdtrt_id instead of fee lines."""

    psn_no: str = Field(min_length=1, max_length=30)
    mdtrt_id: str = Field(min_length=1, max_length=30)
    acct_used_flag: Literal["0", "1"] = "0"


class CredentialData(BaseModel):
    """1101: who holds this credential? 01 e-voucher token, 02 ID card number, 03 social-security
    card number with its card_sn, or psn_no."""

    mdtrt_cert_type: Literal["01", "02", "03"] = "02"
    mdtrt_cert_no: str | None = Field(None, max_length=128)
    card_sn: str | None = Field(None, max_length=32)
    psn_no: str | None = Field(None, max_length=30)
    certno: str | None = Field(None, max_length=50, description="证件号码: read as the ID card number (02) when "
                                                              "mdtrt_cert_no is empty")


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


class EncounterInfo(BaseModel):
    """2203 门诊就诊信息上传 mdtrtinfo: what the visit turned out to be."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    mdtrt_id: str = Field(min_length=1, max_length=30)
    psn_no: str = Field(min_length=1, max_length=30)
    med_type: str = Field(pattern=r"^\d{2,6}$")
    dise_codg: str | None = Field(None, max_length=30, description="病种编码: 门诊慢特病 (med_type 14) needs it")


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


# --- requests that travel the hops: their claims ---------------------------------------------------

Base = dict[str, Any]  # the claim's fields every transaction fills the same way


@dataclass(frozen=True)
class Reading:
    """What reading a request needs besides the request: the database (an uploaded encounter) and
    the key that digests ID and card numbers (1101)."""

    engine: Engine
    digest_key: str


def settlement(req: FsiRequest, base: Base, at: Reading) -> Claim:
    """2206/2207/2303/2304: the fees inline (feedetail), or the uploaded encounter's (mdtrt_id)."""
    node, data = main_record(req)
    if not settles_encounter(req):
        inp = read_input(SettleInput, req.input)
        return Claim(**base, fees=inp.feedetail, **inp.data.model_dump(), diagnoses=diagnoses_of(req))
    ref = read_input(EncounterSettleData, data, node)
    e, lines = encounters.for_settlement(at.engine, req.fixmedins_code, ref.mdtrt_id, ref.psn_no)
    if e["insuplc_admdvs"] != req.insuplc_admdvs:
        raise HTTPException(422, f"insuplc_admdvs {req.insuplc_admdvs} 与就诊 {ref.mdtrt_id} 登记的参保地 "
                                 f"{e['insuplc_admdvs']} 不一致")
    return Claim(**base, fees=lines, psn_no=ref.psn_no, insutype=e["insutype"], med_type=e["med_type"],
                 mdtrt_cert_type=e["mdtrt_cert_type"], acct_used_flag=ref.acct_used_flag,
                 begntime=encounters.begin_date(e), mdtrt_id=ref.mdtrt_id, dise_codg=e["dise_codg"],
                 diagnoses=e["diagnoses"])


def settles_encounter(req: FsiRequest) -> bool:
    """A settlement that names an uploaded encounter (it reads the database: off the event loop)."""
    data = req.input.get("data")
    return (req.infno in SETTLEMENTS and isinstance(data, dict) and "mdtrt_id" in data
            and not req.input.get("feedetail"))


def registration(req: FsiRequest, base: Base, _: Reading) -> Claim:
    """2201 挂号 / 2401 入院: the insured city says whether it will pay; the encounter opens on yes."""
    node, data = main_record(req)
    v = read_input(VisitData, data, node)
    if v.med_type is None and req.infno == "2401":
        raise RequestValidationError([{"type": "missing", "loc": ("body", "input", node, "med_type"),
                                       "msg": "2401 入院办理: med_type (医疗类别, e.g. 21 普通住院) is required",
                                       "input": data}])
    return Claim(**base, **v.model_dump(exclude={"med_type", "ipt_no", "ipt_otp_no"}), med_type=v.med_type or "11",
                 ipt_otp_no=v.ipt_otp_no or v.ipt_no, diagnoses=diagnoses_of(req))


def credential(req: FsiRequest, base: Base, at: Reading) -> Claim:
    """1101: the person behind a credential; the ID or card number travels only as a keyed digest."""
    node, data = main_record(req)
    cred = read_input(CredentialData, data, node)
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
            psn_no, _ = read_ectoken(cred.mdtrt_cert_no, at.digest_key)
        except TokenError as exc:
            raise HTTPException(422, str(exc)) from None
        return Claim(**base, psn_no=psn_no, mdtrt_cert_type="01", **person)
    if cred.mdtrt_cert_type == "03":
        if not cred.card_sn:
            raise HTTPException(422, "1101 with a social-security card (03): card_sn (卡识别码) is required "
                                     "for cross-region use")
        return Claim(**base, psn_no="", mdtrt_cert_type="03",
                     cert_digest=card_digest(cred.mdtrt_cert_no, cred.card_sn, at.digest_key), **person)
    return Claim(**base, psn_no="", cert_digest=cert_digest(cred.mdtrt_cert_no, at.digest_key), **person)


def _ward(req: FsiRequest) -> str:
    return "21" if req.infno == "2305" else "11"


def reversal(req: FsiRequest, base: Base, _: Reading) -> Claim:
    """2208/2305: reverse one settlement of this hospital (a linked negative ledger row)."""
    node, data = main_record(req)
    r = read_input(ReverseData, data, node)
    return Claim(**base, psn_no=r.psn_no, insutype=r.insutype, med_type=_ward(req), begntime=date.today(),
                 orig_setl_id=r.setl_id)


def undo(req: FsiRequest, base: Base, _: Reading) -> Claim:
    """2601 冲正: undo a request whose answer never arrived, whatever became of it."""
    node, data = main_record(req)
    o = read_input(RedoData, data, node)
    return Claim(**base, psn_no=o.psn_no, insutype=o.insutype, med_type=_ward(req), begntime=date.today(),
                 orig_msgid=o.omsgid)


def year_to_date(req: FsiRequest, base: Base, _: Reading) -> Claim:
    """5206: the person's accumulators this year (or as of cum_ym)."""
    node, data = main_record(req)
    y = read_input(YearData, data, node)
    return Claim(**base, psn_no=y.psn_no, insutype=y.insutype, med_type="11", begntime=y.as_of())


# --- requests answered at once from the treatment city's own records ----------------------------


@dataclass(frozen=True)
class Local:
    """What a local handler reads besides the request: its transaction's connection and reference data."""

    conn: Connection
    engine: Engine
    hospitals: dict[str, Hospital]
    catalogue: dict[str, CatalogueItem]


def upload_fees(req: FsiRequest, at: Local) -> dict[str, Any]:
    """2204/2301: fee lines kept with the open encounter, split by the treatment catalogue."""
    up = read_input(UploadInput, req.input)
    raw = req.input["feedetail"]
    named = {str(ln["mdtrt_id"]) for ln in ([raw] if isinstance(raw, dict) else raw)
             if isinstance(ln, dict) and ln.get("mdtrt_id")}
    if len(named) > 1:
        raise HTTPException(422, f"feedetail names several encounters ({', '.join(sorted(named))}): "
                                 "upload each encounter's lines in its own request")
    mdtrt_id = up.data.get("mdtrt_id") or next(iter(named), None)
    if not mdtrt_id:
        raise HTTPException(422, "mdtrt_id: give it in input.data or on the fee lines (from 2201/2401)")
    splits = encounters.upload(at.conn, req.fixmedins_code, str(mdtrt_id), up.feedetail,
                               at.hospitals[req.fixmedins_code], at.catalogue)
    return {"result": [national_row(sp, ln, at.catalogue.get(ln.med_list_codg))
                       for sp, ln in zip(splits, up.feedetail, strict=True)]}


def describe_visit(req: FsiRequest, at: Local) -> dict[str, Any]:
    """2203: what an open outpatient visit turned out to be (med_type, 病种, diagnoses)."""
    node, data = main_record(req)
    info = read_input(EncounterInfo, data, node)
    n = encounters.describe(at.conn, req.fixmedins_code, info.mdtrt_id, info.psn_no, info.med_type,
                            info.dise_codg, diagnoses_of(req))
    return {"mdtrt_id": info.mdtrt_id, "med_type": info.med_type, "diag_cnt": n}


def cancel_visit(req: FsiRequest, at: Local) -> dict[str, Any]:
    """2202: an outpatient registration with nothing settled is cancelled with its lines."""
    node, data = main_record(req)
    ref = read_input(EncounterRef, data, node)
    encounters.cancel_encounter(at.conn, req.fixmedins_code, ref.mdtrt_id, ref.psn_no)
    return {"mdtrt_id": ref.mdtrt_id, "status": "cancelled"}


def cancel_fees(req: FsiRequest, at: Local) -> dict[str, Any]:
    """2205 by charge batch (national), 2302 by line: never every line by default."""
    node, data = main_record(req)
    ref = read_input(EncounterRef, data, node)
    if ref.feedetl_sn is None and ref.chrg_bchno is None:
        raise HTTPException(422, f"{req.infno}: say which lines to take back: chrg_bchno (收费批次号) or "
                                 "feedetl_sn (费用明细流水号), \"0000\" for every line not yet settled")
    n = encounters.cancel_fees(at.conn, req.fixmedins_code, ref.mdtrt_id, ref.feedetl_sn, ref.chrg_bchno)
    return {"mdtrt_id": ref.mdtrt_id, "cancelled_lines": n}


def reconcile_totals(req: FsiRequest, at: Local) -> dict[str, Any]:
    """3201: the hospital's totals for a period against the platform's."""
    node, raw = main_record(req)
    return reconcile.totals(at.engine, req.fixmedins_code, read_input(reconcile.Totals, raw, node))


def reconcile_detail(req: FsiRequest, at: Local) -> dict[str, Any]:
    """3202: the hospital's settlements, one by one, against the platform's."""
    node, raw = main_record(req)
    data = read_input(reconcile.Period, raw, node)
    rows = [read_input(reconcile.DetailRow, r, "detail", str(i)) for i, r in enumerate(req.input.get("detail") or [])]
    return reconcile.detail(at.engine, req.fixmedins_code, data, rows)


def answer_locally(req: FsiRequest, at: Local) -> dict[str, Any]:
    """A local transaction's national answer."""
    local = TRANSACTIONS[req.infno].local
    assert local is not None, f"{req.infno} travels the hops"
    return envelope(req) | {"infcode": 0, "err_msg": None, "output": local(req, at)}


# --- the table -----------------------------------------------------------------------------------

Read = Callable[[FsiRequest, Base, Reading], Claim]
Answer = Callable[[FsiRequest, Local], dict[str, Any]]


@dataclass(frozen=True)
class Transaction:
    name: str
    read: Read | None = None  # the claim for the hops ...
    decide: insured.Decide | None = None  # ... and what the insured city decides on it (insured.py)
    local: Answer | None = None  # answered at once by the treatment city


SETTLEMENTS = {"2207": "门诊结算", "2304": "住院结算", "2206": "门诊预结算", "2303": "住院预结算"}
TRANSACTIONS: dict[str, Transaction] = {
    **{infno: Transaction(name, read=settlement, decide=insured.settle) for infno, name in SETTLEMENTS.items()},
    **{infno: Transaction(name, read=registration, decide=insured.register)
       for infno, name in encounters.REGISTRATIONS.items()},
    "1101": Transaction("人员信息获取", read=credential, decide=insured.person_info),
    "2208": Transaction("门诊结算撤销", read=reversal, decide=insured.reverse),
    "2305": Transaction("住院结算撤销", read=reversal, decide=insured.reverse),
    "2601": Transaction("冲正交易", read=undo, decide=insured.undo),
    "5206": Transaction("人员累计信息查询", read=year_to_date, decide=insured.year_to_date),
    "2202": Transaction("门诊挂号撤销", local=cancel_visit),
    "2203": Transaction("门诊就诊信息上传", local=describe_visit),
    "2203A": Transaction("门诊就诊信息上传", local=describe_visit),
    "2204": Transaction("门诊费用明细上传", local=upload_fees),
    "2301": Transaction("住院费用明细上传", local=upload_fees),
    "2205": Transaction("门诊费用明细撤销", local=cancel_fees),
    "2302": Transaction("住院费用明细撤销", local=cancel_fees),
    "3201": Transaction("医药机构费用结算对总账", local=reconcile_totals),
    "3202": Transaction("医药机构费用结算对明细账", local=reconcile_detail),
}


def claim_of(req: FsiRequest, deadline: int, at: Reading) -> Claim:
    """The request as it travels the hops."""
    read = TRANSACTIONS[req.infno].read
    assert read is not None, f"{req.infno} is answered locally"
    base = dict(msgid=req.msgid, infno=req.infno, fixmedins_code=req.fixmedins_code,
                mdtrtarea_admvs=req.mdtrtarea_admvs, insuplc_admdvs=req.insuplc_admdvs, deadline_ms=deadline)
    return read(req, base, at)


def by_person_number(claim: Claim) -> bool:
    """1101 by psn_no alone, and 5206: the person's data without a credential presented with it."""
    return claim.infno == "5206" or (claim.infno == "1101" and claim.cert_digest is None
                                     and claim.mdtrt_cert_type != "01")
