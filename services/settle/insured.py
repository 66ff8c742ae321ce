"""The insured city's decisions (参保地): what it answers to each request that travels the hops.

`decide` takes a claim as it reaches the insured city, the city's books (books.InsuredBooks) and
the transaction's decision (infnos.TRANSACTIONS[infno].decide: one of the functions below), and
returns a `Decision`: the answer, the fee lines as the person's restrictions leave them, and a
预付金 warning to publish. Everything it reads and writes goes through the books, in the caller's
transaction, so the same code runs on the database (handlers.py) and on a fake (the unit tests).

By transaction:
- 2201/2401 registration: is the person covered here, under which filing;
- 2206/2303 pre-settlement, 2207/2304 settlement: eligibility, then the benefit formula
  (benefits.py); a settlement books its ledger row, accumulators and account, a pre-settlement
  computes the same answer and writes nothing;
- 2208/2305 reversal: a linked negative ledger row; what it gives back is ledger.reversal_of;
- 2601 冲正: undo a request whatever became of it (reversed if settled, voided if not here yet);
- 5206: the year's accumulators; 1101: the person holding a credential.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from schemas.common import FilingType
from schemas.events import (
    AdvanceFundWarning,
    Claim,
    FeeSplit,
    Outcome,
    Setldetail,
    Setlinfo,
    SettlementHop,
)
from services.bus.envelope import now_ms
from services.settle import benefits, ledger
from services.settle.books import InsuredBooks
from services.settle.clearing import charge
from services.settle.domain import (
    PersonState,
    Refusal,
    age_on,
    apply_person_restrictions,
    check_eligibility,
    hardship_on,
    refuse,
)
from services.settle.refdata import Reference
from services.settle.store import ACC_FIELDS

PRE_SETTLEMENTS = {"2206": "门诊预结算", "2303": "住院预结算"}
RATIOS = {"pool_prop_selfpay"}  # Decimal fields of setlinfo that are not money


@dataclass(frozen=True)
class Decision:
    """The insured city's answer to one request, and what it leaves for the hop to carry."""

    outcome: Outcome
    split: list[FeeSplit] | None  # the fee lines after the person's restrictions (限性别/限年龄)
    warning: AdvanceFundWarning | None = None  # the advance fund moved to another level


def failure(code: str, message: str) -> Outcome:
    return Outcome(infcode=-1, err_code=code, err_msg=message)


Answer = tuple[Outcome, list[FeeSplit] | None]  # the answer, and the fee lines it leaves
Decide = Callable[[Reference, InsuredBooks, SettlementHop, list[PersonState]], Answer]  # raises Refusal


def decide(ref: Reference, books: InsuredBooks, hop: SettlementHop, how: Decide) -> Decision | None:
    """The answer to the claim this hop carries, by its transaction's decision (`how`, from
    infnos.TRANSACTIONS); None when the ledger holds it already (a redelivery)."""
    c = hop.claim
    if books.booked(c.msgid):
        return None
    enrolments = books.enrolments(c.psn_no)
    split = hop.split
    try:
        outcome, split = how(ref, books, hop, enrolments)
    except Refusal as e:
        outcome = failure(e.code, e.message)
        outcome.psn_gend = enrolments[0].gend if enrolments else None
    info = outcome.setlinfo
    warning = None
    if info is not None and c.infno not in PRE_SETTLEMENTS:  # 预付金: charged by settlements, credited by reversals
        warning = charge(books, ref.advance, c.insuplc_admdvs, c.mdtrtarea_admvs, benefits.fen(info.fund_pay_sumamt))
    return Decision(outcome, split, warning)


def register(ref: Reference, books: InsuredBooks, hop: SettlementHop, enrolments: list[PersonState]) -> Answer:
    """2201/2401 挂号/入院: whether the insured city will pay for this person there, under which filing."""
    c = hop.claim
    elig = check_eligibility(
        enrolments, books.filings(c.psn_no), psn_no=c.psn_no, insuplc=c.insuplc_admdvs,
        insutype=c.insutype, treat=c.mdtrtarea_admvs, med_type=c.med_type,
        cert_type=c.mdtrt_cert_type, day=c.begntime, rules=ref.filing_rules)
    return Outcome(infcode=0, psn_gend=elig.person.gend, data={
        "psn_no": c.psn_no, "psn_name": elig.person.psn_name, "insutype": c.insutype,
        "fil_type": elig.filing.value if elig.filing else None}), hop.split


def settle(ref: Reference, books: InsuredBooks, hop: SettlementHop, enrolments: list[PersonState]) -> Answer:
    """2207/2304 settlement, 2206/2303 pre-settlement: eligibility, then the benefit formula."""
    c = hop.claim
    elig = check_eligibility(
        enrolments, books.filings(c.psn_no), psn_no=c.psn_no, insuplc=c.insuplc_admdvs,
        insutype=c.insutype, treat=c.mdtrtarea_admvs, med_type=c.med_type,
        cert_type=c.mdtrt_cert_type, day=c.begntime, rules=ref.filing_rules,
    )
    policy = benefits.pick_policy(ref.policies, c.insuplc_admdvs, c.insutype, c.begntime)
    persist = c.infno not in PRE_SETTLEMENTS
    if persist:
        _refuse_if_voided(books, c)
    return _compute(books, c, hop, elig.person, policy, elig.filing, persist=persist)


def reverse(ref: Reference, books: InsuredBooks, hop: SettlementHop, enrolments: list[PersonState]) -> Answer:
    """2208/2305: reverse the settlement orig_setl_id names."""
    c = hop.claim
    _refuse_if_voided(books, c)
    return _reverse(books, c, c.orig_setl_id), hop.split


def undo(ref: Reference, books: InsuredBooks, hop: SettlementHop, enrolments: list[PersonState]) -> Answer:
    """2601 冲正: undo the request orig_msgid names, whatever became of it."""
    return _undo(books, hop.claim), hop.split


def year_to_date(ref: Reference, books: InsuredBooks, hop: SettlementHop, enrolments: list[PersonState]) -> Answer:
    """5206: the person's accumulators this year."""
    c = hop.claim
    return _year_to_date(books, c, enrolments, ref.cum_types, f"{c.begntime:%Y%m}"), hop.split


def person_info(ref: Reference, books: InsuredBooks, hop: SettlementHop, enrolments: list[PersonState]) -> Answer:
    """1101: the person holding the presented credential."""
    return _person_info(books, hop.claim), hop.split


def _refuse_if_voided(books: InsuredBooks, c: Claim) -> None:
    """A request that a 2601 undid while it was on its way is not carried out when it arrives."""
    by = books.voided_by(c.msgid)
    if by:
        raise refuse("VOIDED", f"交易 {c.msgid} 已由冲正交易 {by} (2601) 撤销，参保地不再办理")


def new_setl_id(insuplc: str) -> str:
    return f"{insuplc}{datetime.now():%Y%m%d%H%M%S}{secrets.randbelow(10**10):010d}"


# --- 2206/2207, 2303/2304: settle -------------------------------------------------------------


def _compute(books: InsuredBooks, c: Claim, hop: SettlementHop, person: PersonState, policy: benefits.Policy,
             filing: FilingType | None, persist: bool = True) -> Answer:
    """The benefit formula on the claim's lines; a settlement books its row, accumulators and
    account balance, a pre-settlement (persist=False) computes the same answer and writes nothing."""
    year = c.begntime.year
    acc = books.accumulators(c.psn_no, year, c.insutype)
    balance = books.balance(c.psn_no)
    # 限性别 / 限年龄: only the insured city knows the person; the hospital sees the result per line
    split = apply_person_restrictions(hop.split or [], person.gend,
                                      age_on(person.brdy, c.begntime) if person.brdy else None)
    comp = benefits.compute(
        policy, split, med_type=c.med_type,
        psn_type=person.psn_type, hosp_lv=hop.hosp_lv or "1", filing=filing, acc=acc or benefits.Accumulators(),
        acct_balance=balance, use_account=c.acct_used_flag == "1" and c.insutype == "310",
        cvlserv=person.cvlserv_flag, hardship=hardship_on(person, c.begntime), dise_codg=c.dise_codg,
    )
    setl_id = ("PRE" if not persist else "") + new_setl_id(c.insuplc_admdvs)
    outcome = Outcome(infcode=0, setlinfo=_setlinfo(c, person, comp, setl_id[:30]),
                      setldetail=_setldetail(c, comp), psn_gend=person.gend)
    if not persist:
        return outcome, split
    before = acc or benefits.Accumulators()
    delta = {f: getattr(comp.after, f) - getattr(before, f) for f in ACC_FIELDS}
    books.save_accumulators(c.psn_no, year, c.insutype, comp.after, existed=acc is not None)
    if comp.acct_pay:
        books.save_balance(c.psn_no, comp.balc)
    books.book_settlement({
        "setl_id": setl_id, "msgid": c.msgid, "psn_no": c.psn_no, "insuplc_admdvs": c.insuplc_admdvs,
        "mdtrtarea_admvs": c.mdtrtarea_admvs, "fixmedins_code": c.fixmedins_code, "year": year,
        "medfee_fen": comp.medfee_sumamt, "fund_fen": comp.fund_pay_sumamt, "hifp_fen": comp.hifp_pay,
        "acct_fen": comp.acct_pay, "cash_fen": comp.psn_cash_pay, "insutype": c.insutype,
        "acc_delta": orjson.dumps(delta), "outcome": outcome.model_dump_json().encode(), "created_ms": now_ms(),
    })
    return outcome, split


def _setlinfo(c: Claim, p: PersonState, comp: benefits.Computation, setl_id: str) -> Setlinfo:
    y = benefits.yuan_of
    return Setlinfo(
        setl_id=setl_id, mdtrt_id=c.mdtrt_id or f"MD{setl_id[6:]}", psn_no=c.psn_no, psn_name=p.psn_name, gend=p.gend,
        brdy=p.brdy.isoformat() if p.brdy else "", age=age_on(p.brdy, c.begntime) if p.brdy else 0,
        cvlserv_flag="1" if p.cvlserv_flag else "0", mdtrt_cert_type=c.mdtrt_cert_type or "",
        insutype=c.insutype, psn_type=p.psn_type, med_type=c.med_type,
        setl_time=f"{datetime.now():%Y-%m-%d %H:%M:%S}",
        medfee_sumamt=y(comp.medfee_sumamt), fulamt_ownpay_amt=y(comp.fulamt_ownpay_amt),
        overlmt_selfpay=y(comp.overlmt_selfpay), preselfpay_amt=y(comp.preselfpay_amt),
        inscp_scp_amt=y(comp.inscp_scp_amt), act_pay_dedc=y(comp.act_pay_dedc),
        hifp_pay=y(comp.hifp_pay), pool_prop_selfpay=comp.pool_prop, hifob_pay=y(comp.hifob_pay),
        hifmi_pay=y(comp.hifmi_pay), cvlserv_pay=y(comp.cvlserv_pay), maf_pay=y(comp.maf_pay),
        fund_pay_sumamt=y(comp.fund_pay_sumamt), psn_part_amt=y(comp.psn_part_amt), acct_pay=y(comp.acct_pay),
        psn_cash_pay=y(comp.psn_cash_pay), balc=y(comp.balc), medins_setl_id=c.msgid,
        clr_optins=c.insuplc_admdvs, clr_type="21" if comp.inpatient else "11",
    )


def _setldetail(c: Claim, comp: benefits.Computation) -> list[Setldetail]:
    emp = c.insutype == "310"
    rows = [
        ("310100" if emp else "390100", "职工基本医疗保险统筹基金" if emp else "城乡居民基本医疗保险基金", comp.hifp_pay),
        ("330100", "职工大额医疗费用补助基金", comp.hifob_pay),
        ("390200", "城乡居民大病医疗保险资金", comp.hifmi_pay),
        ("320100", "公务员医疗补助资金", comp.cvlserv_pay),
        ("610100", "医疗救助基金", comp.maf_pay),
        ("310200", "职工基本医疗保险个人账户", comp.acct_pay),
    ]
    return [Setldetail(fund_pay_type=t, fund_pay_type_name=n, inscp_scp_amt=benefits.yuan_of(comp.inscp_scp_amt),
                       fund_payamt=benefits.yuan_of(a)) for t, n, a in rows if a]


# --- 2208/2305: reverse; 2601: undo -----------------------------------------------------------


def _negated(info: Setlinfo, setl_id: str, balc: int) -> Setlinfo:
    values: dict[str, Any] = {name: -value for name, value in info.model_dump().items()
                              if isinstance(value, Decimal) and name not in RATIOS}
    values.update(setl_id=setl_id, balc=benefits.yuan_of(balc),
                  setl_time=f"{datetime.now():%Y-%m-%d %H:%M:%S}")
    return info.model_copy(update=values)


def _reverse(books: InsuredBooks, c: Claim, setl_id: str | None) -> Outcome:
    """2208/2305: reverse one settlement of this hospital for this person. A reversal never edits a
    settlement: a linked negative row, the original marked, the accumulators and the account given
    back what the settlement took."""
    row = books.settlement(setl_id or "")
    if row is None or row["psn_no"] != c.psn_no:
        raise refuse("SETTLEMENT_UNKNOWN", f"参保地 {c.insuplc_admdvs} 没有人员 {c.psn_no} 的结算 {setl_id}，无法撤销")
    if row["fixmedins_code"] != c.fixmedins_code:
        raise refuse("NOT_YOUR_SETTLEMENT", f"结算 {setl_id} 不是 {c.fixmedins_code} 办理的，只能由原结算机构撤销")
    if row["refd_setl_id"]:
        raise refuse("NOT_A_SETTLEMENT", f"{setl_id} 本身是一笔撤销记录，不能再撤销")
    if row["reversed_by"]:
        raise refuse("ALREADY_REVERSED", f"结算 {setl_id} 已于此前撤销（撤销记录 {row['reversed_by']}）")
    acc = books.accumulators(c.psn_no, row["year"], row["insutype"])
    balance = books.balance(c.psn_no)
    r = ledger.reversal_of(row, acc, balance)
    if r.accumulators is not None:
        books.save_accumulators(c.psn_no, row["year"], row["insutype"], r.accumulators, existed=True)
    if r.balance_fen != balance:
        books.save_balance(c.psn_no, r.balance_fen)
    original = Outcome.model_validate_json(row["outcome"])
    rid = new_setl_id(c.insuplc_admdvs)
    info = _negated(original.setlinfo, rid, r.balance_fen) if original.setlinfo else None
    outcome = Outcome(infcode=0, setlinfo=info, psn_gend=original.psn_gend,
                      setldetail=[d.model_copy(update={"fund_payamt": -d.fund_payamt}) for d in original.setldetail],
                      data={"refd_setl_id": row["setl_id"], "reversed_msgid": row["msgid"]})
    books.book_reversal(row, r, rid, c.msgid, outcome.model_dump_json().encode())
    return outcome


def _undo(books: InsuredBooks, c: Claim) -> Outcome:
    """2601 冲正: undo a request whose answer never reached the hospital, whatever became of it."""
    orig = c.orig_msgid or ""
    row = books.settlement_of(orig, c.psn_no)
    if row is None:  # never settled here: refused, lost, or still on its way, and voided should it come
        if books.voided_by(orig) is None:
            books.void(orig, c.msgid, c.psn_no)
        return Outcome(infcode=0, data={"omsgid": c.orig_msgid, "effect": "voided",
                                        "note": "原交易在参保地没有结算记录；若其后到达，参保地将拒绝结算"})
    if row["reversed_by"] or row["refd_setl_id"]:
        return Outcome(infcode=0, data={"omsgid": c.orig_msgid, "effect": "none",
                                        "note": f"原交易 {row['setl_id']} 已撤销或本身是撤销，无需冲正"})
    out = _reverse(books, c, row["setl_id"])
    out.data = (out.data or {}) | {"omsgid": c.orig_msgid, "effect": "reversed"}
    return out


# --- 5206, 1101: what the insured city knows ---------------------------------------------------


def _year_to_date(books: InsuredBooks, c: Claim, enrolments: list[PersonState], cum_types: dict[str, dict[str, str]],
                 cum_ym: str) -> Outcome:
    """5206: what the person has used this year at the insured city, as national cuminfo rows
    (insutype, year, cum_ym, cum_type_code, cum), one per accumulator and insutype."""
    if not any(e.insuplc_admdvs == c.insuplc_admdvs for e in enrolments):
        raise refuse("PERSON_UNKNOWN", f"参保地 {c.insuplc_admdvs} 查无此人员 {c.psn_no}")
    year = c.begntime.year
    cum = [{"insutype": insutype, "year": str(year), "cum_ym": cum_ym,
            "cum_type_code": cum_types.get(insutype, {}).get(f, f), "cum": str(benefits.yuan_of(getattr(acc, f)))}
           for insutype, acc in books.accumulators_of_year(c.psn_no, year).items() for f in ACC_FIELDS]
    balance = benefits.yuan_of(books.balance(c.psn_no))
    return Outcome(infcode=0, data={"psn_no": c.psn_no, "cuminfo": cum, "acct_balc": str(balance)})


def _person_info(books: InsuredBooks, c: Claim) -> Outcome:
    """1101: the person holding the presented credential, as the insured city knows them."""
    found = books.holders(c.insuplc_admdvs, c.cert_digest, c.psn_no)
    if not found:
        raise refuse("PERSON_UNKNOWN", f"参保地 {c.insuplc_admdvs} 查无持此凭证的参保人员，请核对凭证和参保地")
    p = found[0]
    age = None if p.brdy is None else age_on(p.brdy, datetime.now().date())
    balance = benefits.yuan_of(books.balance(p.psn_no))
    return Outcome(infcode=0, psn_gend=p.gend, data={
        "baseinfo": {"psn_no": p.psn_no, "psn_name": p.psn_name, "gend": p.gend,
                     "brdy": p.brdy.isoformat() if p.brdy else None, "age": age, "psn_cert_type": "01",
                     "expire_time": p.death_date.isoformat() if p.death_date else None},
        "insuinfo": [{"insutype": e.insutype, "psn_type": e.psn_type, "psn_insu_stas": e.psn_insu_stas,
                      "psn_insu_date": e.begndate.isoformat() if e.begndate else None,
                      "benefit_from": e.benefit_from.isoformat() if e.benefit_from else None,
                      "insuplc_admdvs": c.insuplc_admdvs, "balc": str(balance) if e.insutype == "310" else "0.00"}
                     for e in found],
        "idetinfo": [{"psn_idet_type": h["hardship_type"], "begntime": h["begndate"], "endtime": h.get("enddate")}
                     for h in orjson.loads(p.hardship or b"[]")],
    })
