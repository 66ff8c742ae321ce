"""Hospital reconciliation (对账, reference §3.4): 3201 totals and 3202 detail.

The treatment city compares the hospital's figures with the answers it gave that hospital:
every settlement (2207/2304) and every reversal (2208/2305, a 2601 that reversed something) in
the period, by settlement date. 3201 says whether the totals agree (stmt_rslt 0 平 / 1 不平)
and by how much they differ; 3202 lists the rows that differ, are missing at the platform, or
are missing at the hospital.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import Engine, select

from services.settle.store import ClaimRecord

CLAIMS = ClaimRecord.__table__  # type: ignore[attr-defined]
AMOUNTS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")
ZERO = Decimal("0.00")


class Period(BaseModel):
    stmt_begndate: date
    stmt_enddate: date
    insutype: str | None = Field(None, description="only this insutype (default: all)")
    clr_type: str | None = Field(None, description="11 门诊 / 21 住院 (default: all)")
    setl_optins: str | None = Field(None, pattern=r"^\d{6}$", description="结算经办机构: only settlements cleared by "
                                                                       "this agency (setlinfo clr_optins; default: all)")


class Totals(Period):
    medfee_sumamt: Decimal
    fund_pay_sumamt: Decimal
    acct_pay: Decimal
    fixmedins_setl_cnt: int = Field(description="settlements minus reversals counted by the hospital")


class DetailRow(BaseModel):
    setl_id: str
    psn_no: str
    medfee_sumamt: Decimal
    fund_pay_sumamt: Decimal
    acct_pay: Decimal
    refd_setl_flag: str = Field("0", pattern=r"^[01]$", description="1: a reversal record")


@dataclass(frozen=True)
class Record:
    setl_id: str
    psn_no: str
    amounts: dict[str, Decimal]
    reversal: bool


def platform_records(engine: Engine, fixmedins_code: str, p: Period) -> dict[str, Record]:
    """What the platform answered this hospital in the period: setl_id → amounts."""
    q = select(CLAIMS.c.infno, CLAIMS.c.result).where(
        CLAIMS.c.fixmedins_code == fixmedins_code, CLAIMS.c.status.in_(("settled", "reversed")))
    out: dict[str, Record] = {}
    with engine.connect() as c:
        for infno, raw in c.execute(q):
            if not raw or infno in ("2206", "2303", "5206"):
                continue
            info = (orjson.loads(raw).get("outcome") or {}).get("setlinfo")
            if not info:
                continue
            day = date.fromisoformat(info["setl_time"][:10])
            if not p.stmt_begndate <= day <= p.stmt_enddate:
                continue
            if ((p.insutype and info["insutype"] != p.insutype) or (p.clr_type and info["clr_type"] != p.clr_type)
                    or (p.setl_optins and info.get("clr_optins") != p.setl_optins)):
                continue
            out[info["setl_id"]] = Record(info["setl_id"], info["psn_no"], {a: Decimal(info[a]) for a in AMOUNTS},
                                          reversal=Decimal(info["medfee_sumamt"]) < 0)
    return out


def totals(engine: Engine, fixmedins_code: str, t: Totals) -> dict[str, Any]:
    """3201 对总账."""
    mine = platform_records(engine, fixmedins_code, t)
    platform = {a: sum((r.amounts[a] for r in mine.values()), ZERO) for a in AMOUNTS}
    count = sum(-1 if r.reversal else 1 for r in mine.values())
    hospital = {a: getattr(t, a) for a in AMOUNTS}
    diff = {a: str(hospital[a] - platform[a]) for a in AMOUNTS}
    ok = all(hospital[a] == platform[a] for a in AMOUNTS) and count == t.fixmedins_setl_cnt
    return {"setl_optins": t.setl_optins or "", "stmt_rslt": "0" if ok else "1",
            "stmt_rslt_dscr": "平" if ok else "不平：请用 3202 对明细账",
            "platform": {a: str(v) for a, v in platform.items()} | {"setl_cnt": count},
            "difference": diff | {"setl_cnt": t.fixmedins_setl_cnt - count}}


def detail(engine: Engine, fixmedins_code: str, p: Period, rows: list[DetailRow]) -> dict[str, Any]:
    """3202 对明细账: the rows that do not agree."""
    mine = platform_records(engine, fixmedins_code, p)
    theirs = {r.setl_id: r for r in rows}
    differ = []
    for sid in sorted(set(mine) & set(theirs)):
        m, h = mine[sid], theirs[sid]
        wrong = {a: {"platform": str(m.amounts[a]), "hospital": str(getattr(h, a))} for a in AMOUNTS
                 if m.amounts[a] != getattr(h, a)}
        if h.psn_no != m.psn_no:
            wrong["psn_no"] = {"platform": m.psn_no, "hospital": h.psn_no}
        if (h.refd_setl_flag == "1") != m.reversal:
            wrong["refd_setl_flag"] = {"platform": "1" if m.reversal else "0", "hospital": h.refd_setl_flag}
        if wrong:
            differ.append({"setl_id": sid, "fields": wrong})
    missing_platform = sorted(set(theirs) - set(mine))
    missing_hospital = [{"setl_id": sid, "psn_no": mine[sid].psn_no, **{a: str(v) for a, v in mine[sid].amounts.items()},
                         "refd_setl_flag": "1" if mine[sid].reversal else "0"} for sid in sorted(set(mine) - set(theirs))]
    ok = not (differ or missing_platform or missing_hospital)
    return {"stmt_rslt": "0" if ok else "1", "checked": len(theirs), "platform_rows": len(mine),
            "differ": differ, "missing_at_platform": missing_platform, "missing_at_hospital": missing_hospital}
