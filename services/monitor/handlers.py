"""Monitor handlers: check each completed settlement against the rules, raise alerts once."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from schemas.events import AlertRaised, SettlementResult
from services.bus import outbox
from services.bus.envelope import Incoming, now_ms
from services.bus.intake import apply_batch
from services.monitor.domain import evaluate
from services.monitor.store import Alert

log = logging.getLogger("yibao.monitor")
SERVICE = "monitor"


@dataclass
class MonitorContext:
    engine: Engine


async def check_batch(ctx: MonitorContext, msgs: list[Incoming]) -> list[BaseException | None]:
    """A fetched batch of completed settlements in one transaction; each claim once (by msgid)."""
    return await asyncio.to_thread(partial(apply_batch, inbox_key=lambda m: m.event.msgid), ctx.engine,
                                   "monitor.rules", msgs, partial(_check, ctx), ())


def _check(ctx: MonitorContext, s: Session, msg: Incoming) -> None:
    result: SettlementResult = msg.event
    setl_id = result.outcome.setlinfo.setl_id if result.outcome.setlinfo else None
    for h in evaluate(result):
        alert = Alert(alert_id=f"{h.rule_id}-{result.msgid}", rule_id=h.rule_id, rule_name=h.rule_name,
                      fixmedins_code=result.fixmedins_code, msgid=result.msgid, psn_no=result.psn_no,
                      setl_id=setl_id, vola_cont=h.vola_cont, vola_amt=h.vola_amt, sev_deg=h.sev_deg,
                      feedetl_sn=",".join(h.feedetl_sn), raised_ms=now_ms())
        s.add(alert)
        outbox.add(s, SERVICE, "monitor.alerts", result.fixmedins_code, AlertRaised(
            alert_id=alert.alert_id, rule_id=h.rule_id, rule_name=h.rule_name,
            fixmedins_code=result.fixmedins_code, msgid=result.msgid, psn_no=result.psn_no,
            setl_id=setl_id, vola_cont=h.vola_cont, vola_amt=h.vola_amt, sev_deg=h.sev_deg,
            feedetl_sn=h.feedetl_sn,
        ), source="/yibao/monitor", correlation_id=result.msgid)
        log.warning("alert %s on claim %s at %s: %s", h.rule_id, result.msgid, result.fixmedins_code,
                    h.vola_cont)


def list_alerts(engine: Engine, fixmedins_code: str | None, msgid: str | None, limit: int,
                hospitals: list[str] | None = None) -> list[Alert]:
    """Newest first; `hospitals` limits them to those hospitals (a supervisor's region)."""
    q = select(Alert)
    if hospitals is not None:
        q = q.where(col(Alert.fixmedins_code).in_(hospitals))
    if fixmedins_code:
        q = q.where(Alert.fixmedins_code == fixmedins_code)
    if msgid:
        q = q.where(Alert.msgid == msgid)
    with Session(engine) as s:
        return list(s.exec(q.order_by(col(Alert.raised_ms).desc()).limit(limit)).all())
