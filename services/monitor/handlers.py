"""Monitor handlers: every settled claim through the after-settlement rules (事后) with the history
they read, alerts raised once; persons' deaths and hardship from enrolment, a death recorded late
judged against the settlements already made after it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import date
from functools import partial

import orjson
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from schemas.events import AlertRaised, EnrolmentUpdated
from schemas.regions import designated_hospitals
from services.bus import outbox
from services.bus.envelope import Incoming, now_ms
from services.bus.intake import apply_batch
from services.monitor.catalogue import Phase, RuleBook, RuleSpec
from services.monitor.facts import Episode, Hit, SettledView, from_result
from services.monitor.history import BatchHistory
from services.monitor.outliers import Due
from services.monitor.rules import Items, evaluate
from services.monitor.store import Alert, EpisodeRow, PersonFacts

log = logging.getLogger("yibao.monitor")
SERVICE = "monitor"
REVERSALS = ("2208", "2305")
SETTLEMENTS = ("2207", "2304")
ALERTS = Alert.__table__  # type: ignore[attr-defined]
PHASE: Phase = "post"


@dataclass
class MonitorContext:
    engine: Engine
    rules: RuleBook
    items: Items
    regions: dict[str, str] = field(default_factory=lambda: {
        code: str(h["admdvs"]) for code, h in designated_hospitals().items()})  # hospital → its region
    due: Due = field(default_factory=Due)  # (month, item) pairs the outlier rule has yet to judge


@dataclass
class Batch:
    """One fetched batch: its encounters, the history they are judged against, the alerts raised."""

    history: BatchHistory
    episodes: dict[str, Episode]
    raised: set[str]
    in_force: dict[date, list[RuleSpec]] = field(default_factory=dict)
    touched: set[tuple[str, str]] = field(default_factory=set)  # (month, item) pairs it billed

    def rules_on(self, ctx: MonitorContext, day: date) -> list[RuleSpec]:
        if day not in self.in_force:
            self.in_force[day] = ctx.rules.current().for_phase(PHASE, day)
        return self.in_force[day]


async def check_batch(ctx: MonitorContext, msgs: list[Incoming]) -> list[BaseException | None]:
    """A fetched batch of completed settlements in one transaction: the history its persons need
    read once, each claim judged once (by msgid), what it adds written once."""
    rules = ctx.rules.current().rules
    episodes = {m.event.msgid: ep for m in msgs
                if m.event.infno in SETTLEMENTS and (ep := from_result(m.event)) is not None}
    batch = Batch(BatchHistory(watched_items(rules)), episodes, set())
    errors = await asyncio.to_thread(partial(
        apply_batch, inbox_key=lambda m: m.event.msgid, autoflush=False,
        prepare=lambda s, _: batch.history.load(s, list(episodes.values())), finish=partial(_finish, batch)),
        ctx.engine, "monitor.rules", msgs, partial(_check, ctx, batch), ())
    ctx.due.add(batch.touched)  # committed: the outlier job (services/monitor/aggregate.py) judges them
    return errors


def _check(ctx: MonitorContext, batch: Batch, s: Session, msg: Incoming) -> None:
    result: SettledView = msg.event
    if result.infno in REVERSALS and result.outcome.infcode == 0:
        reversed_msgid = (result.outcome.data or {}).get("reversed_msgid")
        if reversed_msgid:
            batch.history.reverse(s, str(reversed_msgid))
        return
    ep = batch.episodes.get(result.msgid)
    if ep is None:
        return
    rules = batch.rules_on(ctx, ep.begntime)
    hits = evaluate(rules, ep, ctx.items, batch.history)
    batch.history.add(ep)
    for h in hits:
        family = next((r.family for r in rules if r.id == h.rule_id), "")
        if raise_alert(s, h, ep, family, seen=batch.raised):
            batch.raised.add(f"{h.rule_id}-{h.key or ep.msgid}")


def _finish(batch: Batch, s: Session) -> None:
    """The batch's history written, and the (month, item) pairs it billed noted."""
    batch.touched = batch.history.usage.touched()
    batch.history.write(s)


def watched_items(rules: list[RuleSpec]) -> set[str]:
    """The items a frequency rule counts: their uses are kept per person."""
    return {str(r.params["item"]) for r in rules if r.kind == "frequency"}


def raise_alert(s: Session, h: Hit, ep: Episode, family: str, phase: Phase = PHASE,
                seen: set[str] | None = None) -> bool:
    """The alert and its event, unless this rule already raised it for this key (False then). A
    claim is judged once (the inbox), so only an alert keyed by something else than the claim (a
    cluster, a person's year) can have been raised before: those are looked up."""
    alert_id = f"{h.rule_id}-{h.key or ep.msgid}"
    if seen is not None and alert_id in seen:
        return False
    if (h.key and h.key != ep.msgid or seen is None) and s.get(Alert, alert_id) is not None:
        return False
    s.connection().execute(ALERTS.insert(), {  # a row, not an ORM object: a busy batch raises many
        "alert_id": alert_id, "rule_id": h.rule_id, "rule_name": h.rule_name, "family": family,
        "sev_deg": h.severity, "phase": phase, "fixmedins_code": ep.fixmedins_code,
        "mdtrtarea_admvs": ep.mdtrtarea_admvs, "msgid": ep.msgid, "psn_no": ep.psn_no, "setl_id": ep.setl_id,
        "vola_cont": h.vola_cont, "vola_amt": h.vola_amt, "feedetl_sn": ",".join(h.feedetl_sn), "case_id": None,
        "raised_ms": now_ms()})
    outbox.add(s, SERVICE, "monitor.alerts", ep.fixmedins_code, AlertRaised(
        alert_id=alert_id, rule_id=h.rule_id, rule_name=h.rule_name, fixmedins_code=ep.fixmedins_code,
        msgid=ep.msgid, psn_no=ep.psn_no, setl_id=ep.setl_id, vola_cont=h.vola_cont, vola_amt=h.vola_amt,
        sev_deg=h.severity, feedetl_sn=list(h.feedetl_sn), family=family, phase=phase,
        mdtrtarea_admvs=ep.mdtrtarea_admvs,
    ), source="/yibao/monitor", correlation_id=ep.msgid, ce_id=f"alert-{alert_id}")  # a republished event keeps it
    log.info("alert %s on claim %s at %s: %s", h.rule_id, ep.msgid, ep.fixmedins_code, h.vola_cont)
    return True


async def apply_person(ctx: MonitorContext, msg: Incoming) -> None:
    await asyncio.to_thread(partial(apply_batch, inbox_key=lambda m: m.ce_id), ctx.engine, "monitor.persons",
                            [msg], partial(_person, ctx), ())


def _person(ctx: MonitorContext, s: Session, msg: Incoming) -> None:
    """Death and hardship, newest version wins; a death learnt after settlements made after it
    raises R-DEAD on each of them (the rule's text says when the death was recorded)."""
    e: EnrolmentUpdated = msg.event
    row = s.get(PersonFacts, e.psn_no) or PersonFacts(psn_no=e.psn_no)
    if e.version < row.version:
        return
    newly_dead = e.death_date is not None and row.death_date != e.death_date
    row.death_date, row.version = e.death_date, e.version
    row.hardship = orjson.dumps([h.model_dump(mode="json") for h in e.hardship])
    s.add(row)
    if newly_dead and e.death_date is not None:
        _judge_after_death(ctx, s, e.psn_no, e.death_date)


def _judge_after_death(ctx: MonitorContext, s: Session, psn_no: str, died: date) -> None:
    rule = next((r for r in ctx.rules.current().for_phase(PHASE, died) if r.kind == "after_death"), None)
    if rule is None:
        return
    later = s.exec(select(EpisodeRow).where(EpisodeRow.psn_no == psn_no, EpisodeRow.begntime > died,
                                            col(EpisodeRow.reversed).is_(False))).all()
    for r in later:
        ep = Episode(msgid=r.msgid, psn_no=psn_no, fixmedins_code=r.fixmedins_code, mdtrtarea_admvs=r.mdtrtarea_admvs,
                     insuplc_admdvs=r.insuplc_admdvs, insutype="", med_type="21" if r.inpatient else "11",
                     begntime=r.begntime, endtime=r.endtime, lines=())
        raise_alert(s, Hit(rule.id, rule.name, rule.severity, rule.type,
                           f"参保人 {died} 已死亡(死亡信息晚于结算到达)，{r.begntime} 仍在 {r.fixmedins_code} 结算",
                           r.medfee, (), r.msgid), ep, rule.family)


def list_alerts(engine: Engine, fixmedins_code: str | None, msgid: str | None, limit: int,
                hospitals: list[str] | None = None, rule_id: str | None = None) -> list[Alert]:
    """Newest first; `hospitals` limits them to those hospitals (a supervisor's region, a hospital)."""
    q = select(Alert)
    if hospitals is not None:
        q = q.where(col(Alert.fixmedins_code).in_(hospitals))
    if fixmedins_code:
        q = q.where(Alert.fixmedins_code == fixmedins_code)
    if msgid:
        q = q.where(Alert.msgid == msgid)
    if rule_id:
        q = q.where(Alert.rule_id == rule_id)
    with Session(engine) as s:
        return list(s.exec(q.order_by(col(Alert.raised_ms).desc()).limit(limit)).all())
