"""Settle handlers: submit a claim, act at each hop, finish, and keep the insured city's views.

The same functions serve the API and the stream workers. Each state change commits with its
inbox record and outbox rows in one transaction; pure pass-through hops send directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from schemas.common import result_ce_id
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
    SettlementHop,
    SettlementResult,
)
from services.bus import outbox
from services.bus.client import Bus
from services.bus.db import Unit, transaction, unit
from services.bus.envelope import (
    CORRELATION,
    HOPTRACE,
    REPLY_TO,
    BadMessageError,
    Incoming,
    encode,
    make_headers,
    now_ms,
)
from services.bus.faults import Faults
from services.bus.shared import LogLine, write_shared
from services.bus.sql import Statement
from services.bus.views import apply_state
from services.bus.worker import PermanentError
from services.monitor.catalogue import RuleBook
from services.monitor.facts import line_day
from services.monitor.precheck import check_claim
from services.settle import benefits, insured
from services.settle.books import SqlBooks
from services.settle.domain import (
    SettlementRefusedError,
    check_hospital,
    mirror,
    plan_route,
    route_kind,
    split_line,
)
from services.settle.encounters import REGISTRATIONS, mark_settled, mdtrt_id_of, open_encounter
from services.settle.hopreader import CityHopReader, RelayView, routing_headers, with_routing
from services.settle.infnos import TRANSACTIONS
from services.settle.insured import failure
from services.settle.refdata import Reference
from services.settle.store import AccountRow, AccumulatorRow, ClaimRecord, FilingView, PersonView

log = logging.getLogger("yibao.settle")
CLAIMS = ClaimRecord.__table__  # type: ignore[attr-defined]
CLAIM_INSERT = Statement("""INSERT INTO settle_claim (msgid, infno, fixmedins_code, insuplc_admdvs, psn_no, status,
                            created_ms, updated_ms)
                            VALUES (:msgid, :infno, :fixmedins_code, :insuplc_admdvs, :psn_no, :status, :created_ms,
                                    :updated_ms)""")
_ANSWER = """UPDATE settle_claim SET status = :status, result = :result, psn_no = :psn_no, updated_ms = :updated_ms
             WHERE msgid = :msgid AND status = """
CLAIM_ANSWER = Statement(_ANSWER + "'pending'")
CLAIM_SUPERSEDE = Statement(_ANSWER + "'failed'")
SERVICE = "settle"


@dataclass
class SettleContext:
    """The ports every settle handler needs, built once by the composition root."""

    engine: Engine
    bus: Bus
    ref: Reference
    faults: Faults
    rules: RuleBook
    hops: CityHopReader = field(default_factory=CityHopReader)  # reads settle.city; told what we send


def hop_topic(level: str) -> str:
    return f"settle.{level}"


# --- entry: the hospital's request ---------------------------------------------------------


def submit_claim(ctx: SettleContext, claim: Claim, reply_to: str | None) -> ClaimRecord | None:
    """Record the claim as pending and stage its first hop; an already-known msgid returns its record."""
    route = plan_route(claim.mdtrtarea_admvs, claim.insuplc_admdvs)
    hop = SettlementHop(claim=claim, route=route, pos=0)
    t = now_ms()
    try:
        with unit(ctx.engine) as s:
            CLAIM_INSERT.run(s.connection(), {
                "msgid": claim.msgid, "infno": claim.infno, "fixmedins_code": claim.fixmedins_code,
                "insuplc_admdvs": claim.insuplc_admdvs, "psn_no": claim.psn_no, "status": "pending",
                "created_ms": t, "updated_ms": t})
            outbox.add(s, SERVICE, hop_topic(route[0].level), route[0].admdvs, hop,
                       source=f"/yibao/hospital/{claim.fixmedins_code}", correlation_id=claim.msgid,
                       deadline_ms=claim.deadline_ms, reply_to=reply_to, extra=routing_headers(hop))
    except IntegrityError:  # the same msgid again
        return claim_status(ctx.engine, claim.msgid)
    log.info("claim %s from %s accepted: %s route, %d legs", claim.msgid, claim.fixmedins_code,
             route_kind(claim.mdtrtarea_admvs, claim.insuplc_admdvs).value, len(route))
    return None


def claim_status(engine: Engine, msgid: str) -> ClaimRecord | None:
    with Session(engine) as s:
        return s.get(ClaimRecord, msgid)


# --- the hops ------------------------------------------------------------------------------


AnyHop = SettlementHop | RelayView  # the full hop, or a relay's reading of it


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
    """Province and national hops: pass the hop on by its headers (services/settle/hopreader.py).
    The value goes on byte for byte, unparsed; the next position and this relay's stamp go in
    the next record's headers. The deadline goes on as it came: a hop the insured city decided
    was sent without one."""
    view: RelayView = msg.event
    step = await _arrive(ctx, msg, view)
    if step.action is not HopAction.RELAY:
        raise PermanentError(f"step {view.pos} at {step.level} {step.admdvs} is {step.action}, not a relay")
    if view.pos + 1 >= len(view.route):
        raise PermanentError(f"step {view.pos} is a relay and the last of its route: nowhere to pass the claim")
    t = now_ms()
    stamp = {"level": step.level, "admdvs": step.admdvs, "action": step.action, "received_ms": t,
             "sent_ms": t, "attempt": msg.attempt}
    nxt = view.route[view.pos + 1]
    here = f"{step.level}:{step.admdvs}"
    before = msg.headers.get(HOPTRACE)
    headers = make_headers(msg.ce_type, f"/yibao/settle/{step.level}/{step.admdvs}",
                           correlation_id=msg.headers.get(CORRELATION), deadline_ms=msg.deadline_ms,
                           reply_to=msg.headers.get(REPLY_TO), traceparent=msg.headers.get("traceparent"),
                           hoptrace=f"{before}>{here}" if before else here, extra=view.onward(stamp))
    await ctx.bus.send_raw(hop_topic(nxt.level), nxt.admdvs, msg.value, headers)


Write = tuple[Incoming, int]  # a city hop that writes: the message and when it was received (ms)
WRITES = (HopAction.COMPUTE, HopAction.FINISH)


async def city_hops(ctx: SettleContext, msgs: list[Incoming]) -> list[BaseException | None]:
    """settle.city, one fetched batch: splits go on as they come; the insured city's decisions and
    the treatment city's answers share transactions (services.bus.shared). Answers, per message,
    None (done) or what it raised."""
    errors: list[BaseException | None] = [None] * len(msgs)
    writes: list[Write] = []
    at: list[int] = []  # the index in msgs of each write
    for i, msg in enumerate(msgs):
        try:
            hop: SettlementHop = msg.event
            step = await _arrive(ctx, msg, hop)
            if step.action in WRITES:
                writes.append((msg, now_ms()))
                at.append(i)
            elif step.action is HopAction.SPLIT:
                await _split(ctx, msg, hop, now_ms())
            else:
                await _forward(ctx, msg, _stamped(hop, now_ms(), msg.attempt))
        except Exception as exc:
            errors[i] = exc
    written = await write_shared(ctx.engine, writes, lambda s, w: _write(s, ctx, *w), log)
    for i, err in zip(at, written, strict=True):
        errors[i] = err
    return errors


def _write(s: Unit, ctx: SettleContext, msg: Incoming, received: int) -> LogLine:
    hop: SettlementHop = msg.event
    if hop.route[hop.pos].action is HopAction.COMPUTE:
        return _compute(s, ctx, msg, hop, received)
    return _finish_in(s, msg, _stamped(hop, received, msg.attempt))


def _stamped(hop: SettlementHop, received: int, attempt: int, **changes: Any) -> SettlementHop:
    """The hop with this step's stamp on its trace (and any other changes): a new value."""
    step = hop.route[hop.pos]
    stamp = HopStamp(level=step.level, admdvs=step.admdvs, action=step.action, received_ms=received,
                     sent_ms=now_ms(), attempt=attempt)
    return hop.model_copy(update={"trace": [*hop.trace, stamp], **changes})


def _hoptrace(steps: Sequence[HopStamp]) -> str:
    return ">".join(f"{t.level}:{t.admdvs}" for t in steps)


def _next_headers(msg: Incoming, hop: SettlementHop) -> dict[str, Any]:
    # Once the insured city has decided, the answer must travel back whatever the deadline.
    return dict(correlation_id=msg.headers.get(CORRELATION),
                deadline_ms=None if hop.outcome is not None else msg.deadline_ms,
                reply_to=msg.headers.get(REPLY_TO), traceparent=msg.headers.get("traceparent"),
                hoptrace=_hoptrace(hop.trace), extra=routing_headers(hop))


def _onward(hop: SettlementHop) -> tuple[SettlementHop, str, str]:
    """The hop moved to its next step, with that step's topic and key."""
    nxt = hop.model_copy(update={"pos": hop.pos + 1})
    step = nxt.route[nxt.pos]
    return nxt, hop_topic(step.level), step.admdvs


async def _forward(ctx: SettleContext, msg: Incoming, hop: SettlementHop) -> None:
    nxt, topic, key = _onward(hop)
    value = encode(nxt)
    ctx.hops.sent(nxt, value)
    src = f"/yibao/settle/{hop.trace[-1].level}/{hop.trace[-1].admdvs}"
    await ctx.bus.send_raw(topic, key, value, make_headers(nxt, src, **_next_headers(msg, nxt)))


async def _turn_back(ctx: SettleContext, msg: Incoming, hop: SettlementHop, outcome: Outcome) -> None:
    """A refusal on the way out: back along the mirror path, or answer at once if we are home."""
    back = hop.model_copy(update={"outcome": outcome, "pos": mirror(hop.route, hop.pos)})
    if back.route[back.pos].action is HopAction.FINISH:
        _finish(ctx, msg, back)
    else:
        await _forward(ctx, msg, back)


async def _split(ctx: SettleContext, msg: Incoming, hop: SettlementHop, received: int) -> None:
    """Treatment city, on the way out: the hospital's standing, each line against the catalogue
    (the split), and the pre-check (事中) of the monitoring rules."""
    c = hop.claim
    kind = route_kind(c.mdtrtarea_admvs, c.insuplc_admdvs)
    try:
        h = check_hospital(ctx.ref.hospitals.get(c.fixmedins_code), c.fixmedins_code, c.mdtrtarea_admvs, kind)
    except SettlementRefusedError as e:
        await _turn_back(ctx, msg, _stamped(hop, received, msg.attempt), failure(e.code, e.message))
        return
    split = [split_line(line, ctx.ref.catalogue.get(line.med_list_codg), h.hosp_lv, c.med_type) for line in c.fees]
    verdict = check_claim(ctx.rules, c, h.hosp_lv, ctx.ref.catalogue)
    hop = _stamped(hop, received, msg.attempt, hosp_lv=h.hosp_lv, split=split)
    if verdict is not None and verdict.refused:
        log.warning("claim %s refused by the pre-check at %s: %s", c.msgid, c.mdtrtarea_admvs, verdict.reason())
        out = failure("PRECHECK_REFUSED", f"事中审核不予结算：{verdict.reason()}。请撤销或更正这些明细后再结算")
        out.data = {"precheck": verdict.rows}
        await _turn_back(ctx, msg, hop, out)
        return
    if verdict is not None:  # flags only: the hospital sees them with its answer
        hop = hop.model_copy(update={"precheck": verdict.rows})
    await _forward(ctx, msg, hop)


def _compute(s: Unit, ctx: SettleContext, msg: Incoming, hop: SettlementHop, received: int) -> LogLine:
    """Insured city: its decision (insured.py) on its books, exactly once per msgid, and the hop on
    its way back with the answer."""
    c = hop.claim
    how = TRANSACTIONS[c.infno].decide if c.infno in TRANSACTIONS else None
    if how is None:  # not a transaction that travels the hops: retrying cannot help
        raise PermanentError(f"claim {c.msgid}: infno {c.infno} is not decided at the insured city")
    decision = insured.decide(ctx.ref, SqlBooks(s.connection()), hop, how)
    if decision is None:
        return "claim %s already settled at %s: redelivery ignored", (c.msgid, c.insuplc_admdvs)
    src = f"/yibao/settle/city/{c.insuplc_admdvs}"
    w = decision.warning
    if w is not None:
        outbox.add(s, SERVICE, "settle.advance", f"{w.insured_prov}-{w.treat_prov}", w, source=src)
        log.warning("预付金 %s→%s %s: %s of %s used", w.insured_prov, w.treat_prov, w.level, w.used, w.amount)
    nxt, topic, key = _onward(_stamped(hop, received, msg.attempt, outcome=decision.outcome, split=decision.split))
    value = encode(nxt)
    ctx.hops.sent(nxt, value)
    outbox.add(s, SERVICE, topic, key, nxt, source=src, value=value, **_next_headers(msg, nxt))
    return ("claim %s decided at %s: infcode %s %s",
            (c.msgid, c.insuplc_admdvs, decision.outcome.infcode, decision.outcome.err_code or ""))


def _finish(ctx: SettleContext, msg: Incoming, hop: SettlementHop) -> None:
    """Treatment city, in a transaction of its own: record the answer and publish it, once."""
    with unit(ctx.engine) as s:
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


def _finish_in(s: Unit, msg: Incoming, hop: SettlementHop) -> LogLine:
    """Treatment city: record the answer and publish it to the hospital, once."""
    c = hop.claim
    outcome = hop.outcome or failure("NO_DECISION", "结算链路未返回结果")
    extra: dict[str, Any] = {}
    if hop.precheck and outcome.infcode == 0:  # the pre-check's flags, for the hospital to see
        extra["precheck"] = hop.precheck
    if outcome.infcode == 0 and c.infno in REGISTRATIONS:
        extra |= {"mdtrt_id": mdtrt_id_of(c.msgid), "ipt_otp_no": c.ipt_otp_no or ""}
    if extra:
        outcome = outcome.model_copy(update={"data": (outcome.data or {}) | extra})
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
    answer = {"msgid": c.msgid, "status": "settled" if outcome.infcode == 0 else "failed", "result": body,
              "psn_no": c.psn_no or person_of(outcome), "updated_ms": now_ms()}
    changed = CLAIM_ANSWER.count(conn, answer)
    if not changed and outcome.infcode == 0:
        # the insured city booked it after a hop had given up and the hospital was told "unknown,
        # ask again by msgid": the booking is the truth, and now the answer to that question
        changed = CLAIM_SUPERSEDE.count(conn, answer)
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
    (topic, key), *more = targets  # one row, stored once, for every topic the answer goes to
    outbox.add(s, SERVICE, topic, key, result, source=src, value=body, fanout=more, ce_id=result_ce_id(c.msgid),
               **hdr)  # type: ignore[arg-type]
    return ("claim %s answered to %s: infcode %s %s (%d hops, %d ms)",
            (c.msgid, c.fixmedins_code, outcome.infcode, outcome.err_code or "", len(hop.trace),
             now_ms() - (hop.trace[0].received_ms if hop.trace else now_ms())))


async def give_up(ctx: SettleContext, msg: Incoming, reason: str) -> None:
    """A hop gave up (budget or deadline): the hospital gets an answer now, not never."""
    if isinstance(msg.event, RelayView):  # a relay gave up: the answer needs the whole hop
        try:
            hop = SettlementHop.model_validate(with_routing(orjson.loads(msg.value), msg.headers))
        except (ValueError, BadMessageError):  # not JSON, not a hop, or headers that do not fit it
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
        hop = hop.model_copy(update={"outcome": failure(code, text)})
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
