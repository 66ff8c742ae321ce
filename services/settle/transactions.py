"""The insured city's answers besides a settlement: reversals (2208/2305), 冲正 (2601), the
person's year-to-date accumulators (5206) and the person behind a credential (1101). All run in the caller's transaction.

A reversal never edits a settlement: it writes a linked negative ledger row (refd_setl_id), marks
the original as reversed, gives the accumulators back what the settlement took (its recorded
delta) and returns what the personal account paid.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select

from schemas.events import Claim, Outcome, Setlinfo
from services.bus.envelope import now_ms
from services.settle import benefits, ledger
from services.settle.domain import PersonState, age_on, refuse
from services.settle.store import (
    ACC_FIELDS,
    ACCUMULATORS,
    PERSONS,
    VOIDED,
    load_accumulators,
    load_balance,
    save_accumulators,
    save_balance,
    voided_by,
)

REVERSALS = {"2208": "门诊结算撤销", "2305": "住院结算撤销"}
RATIOS = {"pool_prop_selfpay"}  # Decimal fields of setlinfo that are not money


def new_setl_id(insuplc: str) -> str:
    return f"{insuplc}{datetime.now():%Y%m%d%H%M%S}{secrets.randbelow(10**10):010d}"


def _negated(info: Setlinfo, setl_id: str, balc: int) -> Setlinfo:
    values: dict[str, Any] = {name: -value for name, value in info.model_dump().items()
                              if isinstance(value, Decimal) and name not in RATIOS}
    values.update(setl_id=setl_id, balc=benefits.yuan_of(balc),
                  setl_time=f"{datetime.now():%Y-%m-%d %H:%M:%S}")
    return info.model_copy(update=values)


def reverse(conn: Connection, c: Claim, setl_id: str | None) -> Outcome:
    """2208/2305: reverse one settlement of this hospital for this person."""
    row = ledger.settlement(conn, setl_id or "")
    if row is None or row["psn_no"] != c.psn_no:
        raise refuse("SETTLEMENT_UNKNOWN", f"参保地 {c.insuplc_admdvs} 没有人员 {c.psn_no} 的结算 {setl_id}，无法撤销")
    if row["fixmedins_code"] != c.fixmedins_code:
        raise refuse("NOT_YOUR_SETTLEMENT", f"结算 {setl_id} 不是 {c.fixmedins_code} 办理的，只能由原结算机构撤销")
    if row["refd_setl_id"]:
        raise refuse("NOT_A_SETTLEMENT", f"{setl_id} 本身是一笔撤销记录，不能再撤销")
    if row["reversed_by"]:
        raise refuse("ALREADY_REVERSED", f"结算 {setl_id} 已于此前撤销（撤销记录 {row['reversed_by']}）")
    acc = load_accumulators(conn, c.psn_no, row["year"], row["insutype"])
    balance = load_balance(conn, c.psn_no)
    r = ledger.reversal_of(row, acc, balance)
    if r.accumulators is not None:
        save_accumulators(conn, c.psn_no, row["year"], row["insutype"], r.accumulators, existed=True)
    if r.balance_fen != balance:
        save_balance(conn, c.psn_no, r.balance_fen)
    original = Outcome.model_validate_json(row["outcome"])
    rid = new_setl_id(c.insuplc_admdvs)
    info = _negated(original.setlinfo, rid, r.balance_fen) if original.setlinfo else None
    outcome = Outcome(infcode=0, setlinfo=info, psn_gend=original.psn_gend,
                      setldetail=[d.model_copy(update={"fund_payamt": -d.fund_payamt}) for d in original.setldetail],
                      data={"refd_setl_id": row["setl_id"], "reversed_msgid": row["msgid"]})
    ledger.book_reversal(conn, row, r, rid, c.msgid, outcome.model_dump_json().encode())
    return outcome


def undo(conn: Connection, c: Claim) -> Outcome:
    """2601 冲正: undo a request whose answer never reached the hospital, whatever became of it."""
    row = ledger.by_msgid(conn, c.orig_msgid or "", c.psn_no)
    if row is None:  # never settled here: refused, lost, or still on its way, and voided should it come
        if voided_by(conn, c.orig_msgid or "") is None:
            conn.execute(insert(VOIDED).values(msgid=c.orig_msgid or "", by_msgid=c.msgid, psn_no=c.psn_no,
                                               created_ms=now_ms()))
        return Outcome(infcode=0, data={"omsgid": c.orig_msgid, "effect": "voided",
                                        "note": "原交易在参保地没有结算记录；若其后到达，参保地将拒绝结算"})
    if row["reversed_by"] or row["refd_setl_id"]:
        return Outcome(infcode=0, data={"omsgid": c.orig_msgid, "effect": "none",
                                        "note": f"原交易 {row['setl_id']} 已撤销或本身是撤销，无需冲正"})
    out = reverse(conn, c, row["setl_id"])
    out.data = (out.data or {}) | {"omsgid": c.orig_msgid, "effect": "reversed"}
    return out


def year_to_date(conn: Connection, c: Claim, enrolments: list[PersonState], cum_types: dict[str, dict[str, str]],
                 cum_ym: str) -> Outcome:
    """5206: what the person has used this year at the insured city, as national cuminfo rows
    (insutype, year, cum_ym, cum_type_code, cum), one per accumulator and insutype."""
    if not any(e.insuplc_admdvs == c.insuplc_admdvs for e in enrolments):
        raise refuse("PERSON_UNKNOWN", f"参保地 {c.insuplc_admdvs} 查无此人员 {c.psn_no}")
    year = c.begntime.year
    rows = conn.execute(select(ACCUMULATORS).where(ACCUMULATORS.c.psn_no == c.psn_no,
                                                   ACCUMULATORS.c.year == year)).mappings().all()
    cum = [{"insutype": r["insutype"], "year": str(year), "cum_ym": cum_ym,
            "cum_type_code": cum_types.get(r["insutype"], {}).get(f, f), "cum": str(benefits.yuan_of(r[f]))}
           for r in rows for f in ACC_FIELDS]
    balance = benefits.yuan_of(load_balance(conn, c.psn_no))
    return Outcome(infcode=0, data={"psn_no": c.psn_no, "cuminfo": cum, "acct_balc": str(balance)})


def person_info(conn: Connection, c: Claim) -> Outcome:
    """1101: the person holding the presented credential, as the insured city knows them."""
    q = select(PERSONS).where(PERSONS.c.insuplc_admdvs == c.insuplc_admdvs)
    if c.cert_digest:  # 02 ID card or 03 social-security card: matched by digest, never by the number
        q = q.where((PERSONS.c.cert_digest == c.cert_digest) | (PERSONS.c.card_digest == c.cert_digest))
    else:
        q = q.where(PERSONS.c.psn_no == c.psn_no)
    rows = conn.execute(q).mappings().all()
    if not rows:
        raise refuse("PERSON_UNKNOWN", f"参保地 {c.insuplc_admdvs} 查无持此凭证的参保人员，请核对凭证和参保地")
    p = rows[0]
    brdy = p["brdy"]
    age = None if brdy is None else age_on(brdy, datetime.now().date())
    balance = benefits.yuan_of(load_balance(conn, p["psn_no"]))
    return Outcome(infcode=0, psn_gend=p["gend"], data={
        "baseinfo": {"psn_no": p["psn_no"], "psn_name": p["psn_name"], "gend": p["gend"],
                     "brdy": brdy.isoformat() if brdy else None, "age": age, "psn_cert_type": "01",
                     "expire_time": p["death_date"].isoformat() if p["death_date"] else None},
        "insuinfo": [{"insutype": r["insutype"], "psn_type": r["psn_type"], "psn_insu_stas": r["psn_insu_stas"],
                      "psn_insu_date": r["begndate"].isoformat() if r["begndate"] else None,
                      "benefit_from": r["benefit_from"].isoformat() if r["benefit_from"] else None,
                      "insuplc_admdvs": c.insuplc_admdvs, "balc": str(balance) if r["insutype"] == "310" else "0.00"}
                     for r in rows],
        "idetinfo": [{"psn_idet_type": h["hardship_type"], "begntime": h["begndate"], "endtime": h.get("enddate")}
                     for h in orjson.loads(p["hardship"] or b"[]")],
    })
