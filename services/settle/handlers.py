"""Settle handlers: submit a claim, act at each hop, finish, and keep the insured city's views.

The same functions serve the API and the stream workers. Each state change commits with its
inbox record and outbox rows in one transaction; pure pass-through hops send directly.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, bindparam, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from schemas.common import FilingType, result_ce_id
from schemas.events import (
    Claim,
    ClaimFacts,
    EnrolmentUpdated,
    FilingUpdated,
    HopAction,
    HopStamp,
    LineFacts,
    Outcome,
    RouteStep,
    Setldetail,
    Setlinfo,
    SettlementHop,
    SettlementHopInTransit,
    SettlementResult,
)
from services.bus import outbox
from services.bus.client import Bus
from services.bus.db import transaction
from services.bus.envelope import CORRELATION, REPLY_TO, Incoming, encode, now_ms
from services.bus.faults import Faults
from services.bus.views import apply_state
from services.bus.worker import YIELD_AFTER_S, PermanentError
from services.monitor.catalogue import RuleBook
from services.monitor.facts import line_day
from services.monitor.precheck import check_claim
from services.settle import benefits, ledger
from services.settle.clearing import charge
from services.settle.domain import (
    PersonState,
    Refusal,
    SettlementRefusedError,
    age_on,
    apply_person_restrictions,
    check_eligibility,
    check_hospital,
    hardship_on,
    mirror,
    plan_route,
    refuse,
    route_kind,
    split_line,
)
from services.settle.encounters import REGISTRATIONS, mark_settled, mdtrt_id_of, open_encounter
from services.settle.refdata import Reference
from services.settle.store import (
    ACC_FIELDS,
    AccountRow,
    AccumulatorRow,
    ClaimRecord,
    FilingView,
    PersonView,
    filings_of,
    load_accumulators,
    load_balance,
    load_enrolments,
    save_accumulators,
    save_balance,
    voided_by,
)
from services.settle.transactions import (
    REVERSALS,
    new_setl_id,
    person_info,
    reverse,
    undo,
    year_to_date,
)

log = logging.getLogger("yibao.settle")
CLAIMS = ClaimRecord.__table__  # type: ignore[attr-defined]  # Core statements on the hot path, built once
CLAIM_INSERT = insert(CLAIMS)
CLAIM_ANSWER = (update(CLAIMS).where(CLAIMS.c.msgid == bindparam("k_msgid"), CLAIMS.c.status == "pending"))
CLAIM_SUPERSEDE = (update(CLAIMS).where(CLAIMS.c.msgid == bindparam("k_msgid"), CLAIMS.c.status == "failed"))
SERVICE = "settle"


@dataclass
class SettleContext:
    """The ports every settle handler needs, built once by the composition root."""

    engine: Engine
    bus: Bus
    ref: Reference
    faults: Faults
    rules: RuleBook


def hop_topic(level: str) -> str:
    return f"settle.{level}"


def failure(code: str, message: str) -> Outcome:
    return Outcome(infcode=-1, err_code=code, err_msg=message)


# --- entry: the hospital's request ---------------------------------------------------------


def submit_claim(ctx: SettleContext, claim: Claim, reply_to: str | None) -> ClaimRecord | None:
    """Record the claim as pending and stage its first hop; an already-known msgid returns its record."""
    route = plan_route(claim.mdtrtarea_admvs, claim.insuplc_admdvs)
    hop = SettlementHop(claim=claim, route=route, pos=0)
    t = now_ms()
    try:
        with transaction(ctx.engine) as s:
            s.connection().execute(CLAIM_INSERT, {
                "msgid": claim.msgid, "infno": claim.infno, "fixmedins_code": claim.fixmedins_code,
                "insuplc_admdvs": claim.insuplc_admdvs, "psn_no": claim.psn_no, "status": "pending",
                "created_ms": t, "updated_ms": t})
            outbox.add(s, SERVICE, hop_topic(route[0].level), route[0].admdvs, hop,
                       source=f"/yibao/hospital/{claim.fixmedins_code}", correlation_id=claim.msgid,
                       deadline_ms=claim.deadline_ms, reply_to=reply_to)
    except IntegrityError:  # the same msgid again
        return claim_status(ctx.engine, claim.msgid)
    log.info("claim %s from %s accepted: %s route, %d legs", claim.msgid, claim.fixmedins_code,
             route_kind(claim.mdtrtarea_admvs, claim.insuplc_admdvs).value, len(route))
    return None


def claim_status(engine: Engine, msgid: str) -> ClaimRecord | None:
    with Session(engine) as s:
        return s.get(ClaimRecord, msgid)


# --- the hops ------------------------------------------------------------------------------


AnyHop = SettlementHop | SettlementHopInTransit  # the full hop, or a relay's reading of it


async def _arrive(ctx: SettleContext, msg: Incoming, hop: AnyHop) -> RouteStep:
    """The step this message asks of us, once it is ours and our hop is up."""
    if hop.pos >= len(hop.route):
        raise PermanentError(f"hop position {hop.pos} is beyond a route of {len(hop.route)} steps")
    step = hop.route[hop.pos]
    if hop_topic(step.level) != msg.topic:
        raise PermanentError(f"step {hop.pos} belongs on {hop_topic(step.level)}, not {msg.topic}")
    await ctx.faults.check(step.level, step.admdvs)
    return step


async def relay_hop(ctx: SettleContext, msg: Incoming) -> None:
    """Province and national hops: pass the claim on, read as SettlementHopInTransit."""
    hop: SettlementHopInTransit = msg.event
    step = await _arrive(ctx, msg, hop)
    if step.action is not HopAction.RELAY:
        raise PermanentError(f"step {hop.pos} at {step.level} {step.admdvs} is {step.action}, not a relay")
    _stamp(hop, now_ms(), msg.attempt)
    await _forward(ctx, msg, hop)


LogLine = tuple[str, tuple[object, ...]]  # written once the transaction that it tells of commits
Write = tuple[int, Incoming, int]  # a city hop that writes: (index in its batch, message, received_ms)
WRITES = (HopAction.COMPUTE, HopAction.FINISH)


async def city_hops(ctx: SettleContext, msgs: list[Incoming]) -> list[BaseException | None]:
    """settle.city, one fetched batch: splits go on as they come; the insured city's decisions and
    the treatment city's answers share transactions (one commit for the claims of a few ms instead
    of one each), and a transaction that fails is done again claim by claim, each on its own.
    Answers, per message, None (done) or what it raised."""
    errors: list[BaseException | None] = [None] * len(msgs)
    writes: list[Write] = []
    for i, msg in enumerate(msgs):
        try:
            hop: SettlementHop = msg.event
            step = await _arrive(ctx, msg, hop)
            if step.action in WRITES:
                writes.append((i, msg, now_ms()))
            elif step.action is HopAction.SPLIT:
                await _split(ctx, msg, hop, now_ms())
            else:
                _stamp(hop, now_ms(), msg.attempt)
                await _forward(ctx, msg, hop)
        except Exception as exc:
            errors[i] = exc
    loop = asyncio.get_running_loop()
    while writes:
        taken, committed = _write_together(ctx, writes, loop.time() + YIELD_AFTER_S)
        if not committed:  # each claim of the failed transaction again, on its own
            _write_alone(ctx, writes[:taken], errors)
        writes = writes[taken:]
        if writes:
            await asyncio.sleep(0)  # let the relay send what committed
    return errors


def _write_together(ctx: SettleContext, writes: list[Write], until: float) -> tuple[int, bool]:
    """One transaction for the first claims of `writes`, until the loop time `until`: how many it
    took, and whether it committed (if not, nothing of it did)."""
    loop, taken, lines = asyncio.get_running_loop(), 0, []
    try:
        with transaction(ctx.engine) as s:
            for _, msg, received in writes:
                taken += 1
                lines.append(_write(s, ctx, msg, msg.event, received))
                if loop.time() > until:
                    break
    except Exception:
        log.warning("a shared transaction of %d claims failed; each is done again on its own", taken,
                    exc_info=True)
        return taken, False
    for fmt, args in lines:
        log.info(fmt, *args)
    return taken, True


def _write_alone(ctx: SettleContext, writes: list[Write], errors: list[BaseException | None]) -> None:
    """Each claim in a transaction of its own, from the message as it came (a failed shared
    transaction changed the hops it read); a claim that fails again is answered with its error."""
    for i, msg, received in writes:
        try:
            with transaction(ctx.engine) as s:
                fmt, args = _write(s, ctx, msg, SettlementHop.model_validate_json(msg.value), received)
            log.info(fmt, *args)
        except Exception as exc:
            errors[i] = exc


def _write(s: Session, ctx: SettleContext, msg: Incoming, hop: SettlementHop, received: int) -> LogLine:
    if hop.route[hop.pos].action is HopAction.COMPUTE:
        return _compute(s, ctx, msg, hop, received)
    _stamp(hop, received, msg.attempt)
    return _finish_in(s, msg, hop)


def _stamp(hop: AnyHop, received: int, attempt: int) -> None:
    step = hop.route[hop.pos]
    hop.trace.append(HopStamp(level=step.level, admdvs=step.admdvs, action=step.action,
                              received_ms=received, sent_ms=now_ms(), attempt=attempt))


def _next_headers(msg: Incoming, hop: AnyHop) -> dict[str, object]:
    # Once the insured city has decided, the answer must travel back whatever the deadline.
    deadline = msg.deadline_ms if hop.outcome is None else None
    trace = ">".join(f"{t.level}:{t.admdvs}" for t in hop.trace)
    return dict(correlation_id=msg.headers.get(CORRELATION), deadline_ms=deadline,
                reply_to=msg.headers.get(REPLY_TO), traceparent=msg.headers.get("traceparent"),
                hoptrace=trace)


async def _forward(ctx: SettleContext, msg: Incoming, hop: AnyHop) -> None:
    hop.pos += 1
    step = hop.route[hop.pos]
    src = f"/yibao/settle/{hop.trace[-1].level}/{hop.trace[-1].admdvs}"
    await ctx.bus.send(hop_topic(step.level), step.admdvs, hop, src, **_next_headers(msg, hop))


async def _turn_back(ctx: SettleContext, msg: Incoming, hop: SettlementHop, outcome: Outcome) -> None:
    """A refusal on the way out: back along the mirror path, or answer at once if we are home."""
    hop.outcome = outcome
    hop.pos = mirror(hop.route, hop.pos)
    if hop.route[hop.pos].action is HopAction.FINISH:
        _finish(ctx, msg, hop)
    else:
        await _forward(ctx, msg, hop)


async def _split(ctx: SettleContext, msg: Incoming, hop: SettlementHop, received: int) -> None:
    c = hop.claim
    kind = route_kind(c.mdtrtarea_admvs, c.insuplc_admdvs)
    try:
        h = check_hospital(ctx.ref.hospitals.get(c.fixmedins_code), c.fixmedins_code, c.mdtrtarea_admvs, kind)
    except SettlementRefusedError as e:
        _stamp(hop, received, msg.attempt)
        await _turn_back(ctx, msg, hop, failure(e.code, e.message))
        return
    hop.hosp_lv = h.hosp_lv  # type: ignore[assignment]
    hop.split = [split_line(line, ctx.ref.catalogue.get(line.med_list_codg), h.hosp_lv, c.med_type)
                 for line in c.fees]
    verdict = check_claim(ctx.rules, c, h.hosp_lv, ctx.ref.catalogue)
    _stamp(hop, received, msg.attempt)
    if verdict is not None and verdict.refused:
        log.warning("claim %s refused by the pre-check at %s: %s", c.msgid, c.mdtrtarea_admvs, verdict.reason())
        out = failure("PRECHECK_REFUSED", f"事中审核不予结算：{verdict.reason()}。请撤销或更正这些明细后再结算")
        out.data = {"precheck": verdict.rows}
        await _turn_back(ctx, msg, hop, out)
        return
    if verdict is not None:
        hop.precheck = verdict.rows
    await _forward(ctx, msg, hop)


def _compute(s: Session, ctx: SettleContext, msg: Incoming, hop: SettlementHop, received: int) -> LogLine:
    """Insured city: eligibility, benefits, ledger and accumulators, exactly once per msgid."""
    c = hop.claim
    conn = s.connection()
    if ledger.booked(conn, c.msgid):
        return "claim %s already settled at %s: redelivery ignored", (c.msgid, c.insuplc_admdvs)
    enrolments = load_enrolments(conn, c.psn_no)
    try:
        hop.outcome = _decide(ctx, conn, hop, enrolments)
    except Refusal as e:
        hop.outcome = failure(e.code, e.message)
        hop.outcome.psn_gend = enrolments[0].gend if enrolments else None
    info = hop.outcome.setlinfo
    if info is not None and c.infno not in PRE_SETTLEMENTS:  # 预付金: charged by settlements, credited by reversals
        warning = charge(conn, ctx.ref.advance, c.insuplc_admdvs, c.mdtrtarea_admvs,
                         benefits.fen(info.fund_pay_sumamt))
        if warning is not None:
            outbox.add(s, SERVICE, "settle.advance", f"{warning.insured_prov}-{warning.treat_prov}", warning,
                       source=f"/yibao/settle/city/{c.insuplc_admdvs}")
            log.warning("预付金 %s→%s %s: %s of %s used", warning.insured_prov, warning.treat_prov,
                        warning.level, warning.used, warning.amount)
    _stamp(hop, received, msg.attempt)
    hop.pos += 1
    nxt = hop.route[hop.pos]
    outbox.add(s, SERVICE, hop_topic(nxt.level), nxt.admdvs, hop,
               source=f"/yibao/settle/city/{c.insuplc_admdvs}", **_next_headers(msg, hop))  # type: ignore[arg-type]
    return ("claim %s decided at %s: infcode %s %s",
            (c.msgid, c.insuplc_admdvs, hop.outcome.infcode, hop.outcome.err_code or ""))


PRE_SETTLEMENTS = {"2206": "门诊预结算", "2303": "住院预结算"}


def _decide(ctx: SettleContext, conn: Connection, hop: SettlementHop, enrolments: list[PersonState]) -> Outcome:
    """What the insured city answers, by transaction: a refusal raises SettlementRefusedError."""
    c = hop.claim
    if c.infno in REVERSALS:
        _refuse_if_voided(conn, c)
        return reverse(conn, c, c.orig_setl_id)
    if c.infno in REGISTRATIONS:  # 挂号/入院: the insured city says whether it will pay
        elig = check_eligibility(
            enrolments, filings_of(conn, c.psn_no), psn_no=c.psn_no, insuplc=c.insuplc_admdvs,
            insutype=c.insutype, treat=c.mdtrtarea_admvs, med_type=c.med_type,
            cert_type=c.mdtrt_cert_type, day=c.begntime, rules=ctx.ref.filing_rules)
        return Outcome(infcode=0, psn_gend=elig.person.gend, data={
            "psn_no": c.psn_no, "psn_name": elig.person.psn_name, "insutype": c.insutype,
            "fil_type": elig.filing.value if elig.filing else None})
    if c.infno == "2601":
        return undo(conn, c)
    if c.infno == "5206":
        return year_to_date(conn, c, enrolments, ctx.ref.cum_types, f"{c.begntime:%Y%m}")
    if c.infno == "1101":
        return person_info(conn, c)
    elig = check_eligibility(
        enrolments, filings_of(conn, c.psn_no), psn_no=c.psn_no, insuplc=c.insuplc_admdvs,
        insutype=c.insutype, treat=c.mdtrtarea_admvs, med_type=c.med_type,
        cert_type=c.mdtrt_cert_type, day=c.begntime, rules=ctx.ref.filing_rules,
    )
    policy = benefits.pick_policy(ctx.ref.policies, c.insuplc_admdvs, c.insutype, c.begntime)
    persist = c.infno not in PRE_SETTLEMENTS
    if persist:
        _refuse_if_voided(conn, c)
    return _settle(conn, c, hop, elig.person, policy, elig.filing, persist=persist)


def _refuse_if_voided(conn: Connection, c: Claim) -> None:
    """A request that a 2601 undid while it was on its way is not carried out when it arrives."""
    by = voided_by(conn, c.msgid)
    if by:
        raise refuse("VOIDED", f"交易 {c.msgid} 已由冲正交易 {by} (2601) 撤销，参保地不再办理")


def _settle(conn: Connection, c: Claim, hop: SettlementHop, person: PersonState, policy: benefits.Policy,
            filing: FilingType | None, persist: bool = True) -> Outcome:
    """The ledger write: settlement row, accumulators and account balance, in the caller's transaction.
    A pre-settlement (2206/2303) computes the same answer and writes nothing."""
    year = c.begntime.year
    acc = load_accumulators(conn, c.psn_no, year, c.insutype)
    balance = load_balance(conn, c.psn_no)
    # 限性别 / 限年龄: only the insured city knows the person; the hospital sees the result per line
    hop.split = apply_person_restrictions(hop.split or [], person.gend,
                                          age_on(person.brdy, c.begntime) if person.brdy else None)
    comp = benefits.compute(
        policy, hop.split, med_type=c.med_type,
        psn_type=person.psn_type, hosp_lv=hop.hosp_lv or "1", filing=filing, acc=acc or benefits.Accumulators(),
        acct_balance=balance, use_account=c.acct_used_flag == "1" and c.insutype == "310",
        cvlserv=person.cvlserv_flag, hardship=hardship_on(person, c.begntime), dise_codg=c.dise_codg,
    )
    setl_id = ("PRE" if not persist else "") + new_setl_id(c.insuplc_admdvs)
    outcome = Outcome(infcode=0, setlinfo=_setlinfo(c, person, comp, setl_id[:30]),
                      setldetail=_setldetail(c, comp), psn_gend=person.gend)
    if not persist:
        return outcome
    before = acc or benefits.Accumulators()
    delta = {f: getattr(comp.after, f) - getattr(before, f) for f in ACC_FIELDS}
    save_accumulators(conn, c.psn_no, year, c.insutype, comp.after, existed=acc is not None)
    if comp.acct_pay:
        save_balance(conn, c.psn_no, comp.balc)
    ledger.book_settlement(conn, {
        "setl_id": setl_id, "msgid": c.msgid, "psn_no": c.psn_no, "insuplc_admdvs": c.insuplc_admdvs,
        "mdtrtarea_admvs": c.mdtrtarea_admvs, "fixmedins_code": c.fixmedins_code, "year": year,
        "medfee_fen": comp.medfee_sumamt, "fund_fen": comp.fund_pay_sumamt, "hifp_fen": comp.hifp_pay,
        "acct_fen": comp.acct_pay, "cash_fen": comp.psn_cash_pay, "insutype": c.insutype,
        "acc_delta": orjson.dumps(delta), "outcome": outcome.model_dump_json().encode(), "created_ms": now_ms(),
    })
    return outcome


def _setlinfo(c: Claim, p: PersonState, comp: benefits.Computation, setl_id: str) -> Setlinfo:
    return Setlinfo(
        setl_id=setl_id, mdtrt_id=c.mdtrt_id or f"MD{setl_id[6:]}", psn_no=c.psn_no, psn_name=p.psn_name, gend=p.gend,
        brdy=p.brdy.isoformat() if p.brdy else "", age=age_on(p.brdy, c.begntime) if p.brdy else 0,
        cvlserv_flag="1" if p.cvlserv_flag else "0", mdtrt_cert_type=c.mdtrt_cert_type or "",
        insutype=c.insutype, psn_type=p.psn_type, med_type=c.med_type,
        setl_time=f"{datetime.now():%Y-%m-%d %H:%M:%S}",
        medfee_sumamt=benefits.yuan_of(comp.medfee_sumamt), fulamt_ownpay_amt=benefits.yuan_of(comp.fulamt_ownpay_amt),
        overlmt_selfpay=benefits.yuan_of(comp.overlmt_selfpay), preselfpay_amt=benefits.yuan_of(comp.preselfpay_amt),
        inscp_scp_amt=benefits.yuan_of(comp.inscp_scp_amt), act_pay_dedc=benefits.yuan_of(comp.act_pay_dedc),
        hifp_pay=benefits.yuan_of(comp.hifp_pay), pool_prop_selfpay=comp.pool_prop, hifob_pay=benefits.yuan_of(comp.hifob_pay),
        hifmi_pay=benefits.yuan_of(comp.hifmi_pay), cvlserv_pay=benefits.yuan_of(comp.cvlserv_pay), maf_pay=benefits.yuan_of(comp.maf_pay),
        fund_pay_sumamt=benefits.yuan_of(comp.fund_pay_sumamt),
        psn_part_amt=benefits.yuan_of(comp.psn_part_amt), acct_pay=benefits.yuan_of(comp.acct_pay),
        psn_cash_pay=benefits.yuan_of(comp.psn_cash_pay), balc=benefits.yuan_of(comp.balc), medins_setl_id=c.msgid,
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


def _finish(ctx: SettleContext, msg: Incoming, hop: SettlementHop) -> None:
    """Treatment city, in a transaction of its own: record the answer and publish it, once."""
    with transaction(ctx.engine) as s:
        fmt, args = _finish_in(s, msg, hop)
    log.info(fmt, *args)


SETTLED = ("2207", "2304")


def facts_of(hop: SettlementHop) -> ClaimFacts:
    """The encounter as the monitor's after-settlement rules read it (settle.completed)."""
    c = hop.claim  # validated as it arrived: built without validating again (model_construct)
    lines = [LineFacts.model_construct(feedetl_sn=f.feedetl_sn, cnt=f.cnt, pric=f.pric,
                                       day=line_day(f.fee_ocur_time, c.begntime), prd_days=f.prd_days,
                                       trac=f.trace_codes) for f in c.fees]
    return ClaimFacts.model_construct(med_type=c.med_type, begntime=c.begntime,
                                      endtime=max((ln.day for ln in lines), default=c.begntime),
                                      dise_codg=c.dise_codg, diagnoses=[d.diag_code for d in c.diagnoses],
                                      hosp_lv=hop.hosp_lv, lines=lines)


def person_of(outcome: Outcome) -> str:
    """The psn_no a 1101 by credential found (the claim carried only the credential's digest)."""
    base = (outcome.data or {}).get("baseinfo")
    return str(base.get("psn_no", "")) if isinstance(base, dict) else ""


def _finish_in(s: Session, msg: Incoming, hop: SettlementHop) -> LogLine:
    """Treatment city: record the answer and publish it to the hospital, once."""
    c = hop.claim
    outcome = hop.outcome or failure("NO_DECISION", "结算链路未返回结果")
    if hop.precheck and outcome.infcode == 0:  # the pre-check's flags, for the hospital to see
        outcome.data = (outcome.data or {}) | {"precheck": hop.precheck}
    if outcome.infcode == 0 and c.infno in REGISTRATIONS:
        outcome.data = (outcome.data or {}) | {"mdtrt_id": mdtrt_id_of(c.msgid), "ipt_otp_no": c.ipt_otp_no or ""}
    result = SettlementResult(
        msgid=c.msgid, infno=c.infno, fixmedins_code=c.fixmedins_code,
        mdtrtarea_admvs=c.mdtrtarea_admvs, insuplc_admdvs=c.insuplc_admdvs, psn_no=c.psn_no,
        outcome=outcome, split=hop.split or [], trace=hop.trace,
        facts=facts_of(hop) if outcome.infcode == 0 and c.infno in SETTLED else None,
    )
    src = f"/yibao/settle/city/{c.mdtrtarea_admvs}"
    hdr = dict(correlation_id=c.msgid, traceparent=msg.headers.get("traceparent"))
    body = encode(result)  # one encoding for the claim record and every topic it goes to
    conn = s.connection()
    answer = {"k_msgid": c.msgid, "status": "settled" if outcome.infcode == 0 else "failed", "result": body,
              "psn_no": c.psn_no or person_of(outcome), "updated_ms": now_ms()}
    changed = conn.execute(CLAIM_ANSWER, answer).rowcount
    if not changed and outcome.infcode == 0:
        # the insured city booked it after a hop had given up and the hospital was told "unknown,
        # ask again by msgid": the booking is the truth, and now the answer to that question
        changed = conn.execute(CLAIM_SUPERSEDE, answer).rowcount
        if changed:
            log.warning("claim %s: settled after a hop had given up on it; the record now says settled", c.msgid)
    if not changed:  # answered before (a redelivery), or never submitted here
        return "claim %s: no pending request to answer (answered before, or not sent here)", (c.msgid,)
    if outcome.infcode == 0 and c.infno in REGISTRATIONS:
        open_encounter(conn, c)
    if outcome.infcode == 0 and c.mdtrt_id and c.infno in ("2207", "2304"):
        mark_settled(conn, c.mdtrt_id)
    reversed_msgid = (outcome.data or {}).get("reversed_msgid")
    if outcome.infcode == 0 and reversed_msgid:  # the original request's status: reversed
        conn.execute(update(CLAIMS).where(CLAIMS.c.msgid == reversed_msgid).values(status="reversed", updated_ms=now_ms()))
    targets = [("settle.hospital", c.fixmedins_code)]
    if outcome.infcode == 0:
        targets.append(("settle.completed", c.psn_no))
    reply_to = msg.headers.get(REPLY_TO)
    if reply_to:
        targets.append((reply_to, c.msgid))
    for topic, key in targets:
        outbox.add(s, SERVICE, topic, key, result, source=src, value=body, ce_id=result_ce_id(c.msgid),
                   **hdr)  # type: ignore[arg-type]
    return ("claim %s answered to %s: infcode %s %s (%d hops, %d ms)",
            (c.msgid, c.fixmedins_code, outcome.infcode, outcome.err_code or "", len(hop.trace),
             now_ms() - (hop.trace[0].received_ms if hop.trace else now_ms())))


async def give_up(ctx: SettleContext, msg: Incoming, reason: str) -> None:
    """A hop gave up (budget or deadline): the hospital gets an answer now, not never."""
    if isinstance(msg.event, SettlementHopInTransit):  # a relay gave up: the answer needs the whole hop
        try:
            hop = SettlementHop.model_validate_json(msg.value)
        except ValidationError:
            log.warning("claim %s: gave up at a relay and its hop is not valid; no answer sent",
                        msg.correlation_id)
            return
    elif isinstance(msg.event, SettlementHop):
        hop = msg.event
    else:
        return
    if hop.outcome is None:
        step = hop.route[min(hop.pos, len(hop.route) - 1)]
        code = "DEADLINE" if "deadline" in reason else "HOP_DOWN"
        text = (f"结算超时：{step.level} {step.admdvs} 未能在时限内处理，请稍后用原 msgid 查询结果"
                if code == "DEADLINE" else
                f"结算链路故障：{step.level} {step.admdvs} 多次重试仍不可用（{reason}）。故障排除后运维可能重新投递，"
                "本交易仍可能完成：请用原 msgid 查询结果；如要重新结算，请先以 2601 冲正原 msgid")
        hop.outcome = failure(code, text)
    _finish(ctx, msg, hop)


# --- the insured city's views ----------------------------------------------------------------


PERSON_FIELDS = ("psn_name", "gend", "brdy", "psn_type", "psn_insu_stas", "begndate", "benefit_from", "paid_through",
                 "death_date", "voucher_active", "cvlserv_flag", "cert_digest", "card_digest", "version")
FILING_FIELDS = ("psn_no", "fil_type", "target_admdvs", "begndate", "enddate", "status", "version")


async def apply_enrolment(ctx: SettleContext, msg: Incoming) -> None:
    e: EnrolmentUpdated = msg.event
    with transaction(ctx.engine) as s:
        row = apply_state(s, "settle.person-view", msg.ce_id, PersonView,
                          {"psn_no": e.psn_no, "insuplc_admdvs": e.insuplc_admdvs, "insutype": e.insutype}, e,
                          PERSON_FIELDS)
        if row is not None:
            row.hardship = orjson.dumps([h.model_dump(mode="json") for h in e.hardship])
        if row is not None and s.get(AccountRow, e.psn_no) is None:  # the opening balance, once
            s.add(AccountRow(psn_no=e.psn_no, balance_fen=benefits.fen(e.acct_balc)))


async def apply_filing(ctx: SettleContext, msg: Incoming) -> None:
    e: FilingUpdated = msg.event
    with transaction(ctx.engine) as s:
        apply_state(s, "settle.filing-view", msg.ce_id, FilingView, {"fil_id": e.fil_id}, e, FILING_FIELDS)


def person_status(engine: Engine, psn_no: str, year: int) -> dict[str, object] | None:
    with Session(engine) as s:
        views = s.exec(select(PersonView).where(PersonView.psn_no == psn_no)).all()
        if not views:
            return None
        acc = [a.model_dump() for a in s.exec(
            select(AccumulatorRow).where(AccumulatorRow.psn_no == psn_no, AccumulatorRow.year == year)).all()]
        account = s.get(AccountRow, psn_no)
        filings = s.exec(select(FilingView).where(FilingView.psn_no == psn_no)).all()
        return {"enrolments": [v.model_dump(mode="json") for v in views], "filings": [f.model_dump(mode="json") for f in filings],
                "accumulators_fen": acc, "acct_balance_fen": account.balance_fen if account else 0}


def result_of(rec: ClaimRecord) -> dict[str, Any] | None:
    """The stored SettlementResult in its JSON form (as it went to the hospital's topics)."""
    return orjson.loads(rec.result) if rec.result else None
