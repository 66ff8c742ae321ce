"""The national hospital interface's shapes: the request envelope (公共入参), where a
transaction's main record and diagnoses are read, the 公共出参 around every answer, and when a
msgid received before is a replay of the same request."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.common import Admdvs, FixmedinsCode
from schemas.events import Claim, Diagnosis
from services.credentials import reveal_names
from services.settle.store import ClaimRecord, result_of


class FsiRequest(BaseModel):
    """公共入参: the national request envelope (fields not listed here are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    infno: str = Field(min_length=4, max_length=5)
    msgid: str = Field(min_length=1, max_length=30)
    mdtrtarea_admvs: Admdvs
    insuplc_admdvs: Admdvs
    fixmedins_code: FixmedinsCode
    input: dict[str, Any]


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
    return [read_input(Diagnosis, r, "diseinfo", str(i)) for i, r in enumerate(rows)]


def read_input(model: type[BaseModel], raw: dict[str, Any], *path: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "input", *path, *e["loc"])} for e in exc.errors()]) from None


def _refmsgid(admdvs: str) -> str:
    return f"{admdvs}{datetime.now():%Y%m%d%H%M%S}{secrets.randbelow(10**10):010d}"


def envelope(req: FsiRequest) -> dict[str, Any]:
    """The platform's part of every 公共出参."""
    t = f"{datetime.now():%Y%m%d%H%M%S%f}"[:17]
    return {"inf_refmsgid": _refmsgid(req.mdtrtarea_admvs), "refmsg_time": t, "respond_time": t}


REGISTRATION_NODE = {"2201": "data", "2401": "result"}  # where adapters read mdtrt_id in the answer

REPLAY_FIELDS = ("infno", "psn_no", "insuplc_admdvs")


@dataclass(frozen=True)
class Accepted:
    """A msgid not received before: the request goes on its way."""


@dataclass(frozen=True)
class InFlight:
    """The same request again while the first is on its way: wait for the same answer."""


@dataclass(frozen=True)
class Replay:
    """The same request again, answered: the first answer, whatever it was."""

    result: dict[str, Any] | None


@dataclass(frozen=True)
class Clash:
    """A msgid already used for another request: refused (409), the message says why."""

    message: str


def known_msgid(first: ClaimRecord | None, claim: Claim) -> Accepted | InFlight | Replay | Clash:
    """What a request gets whose msgid may have been received before (`first`: that request's
    record). The first answer goes only to the same hospital's same request, never another
    person's, transaction's or hospital's."""
    if first is None:
        return Accepted()
    fresh = "请为本次交易生成新的报文ID（fixmedins_code + yyyyMMddHHmmss + 4 位顺序号）"
    if first.fixmedins_code != claim.fixmedins_code:
        return Clash(f"msgid {claim.msgid} 已被使用，不能重复；{fresh}")
    differ = [f for f in REPLAY_FIELDS if getattr(first, f) != getattr(claim, f)]
    if differ:
        return Clash(f"msgid {claim.msgid} 已用于本机构的另一笔交易（{'、'.join(differ)} 不同），"
                     f"同一 msgid 只能重发同一笔交易；{fresh}")
    if first.status == "pending":
        return InFlight()
    return Replay(result_of(first))


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


