"""Cases supervisors work over a hospital's alerts: opened on alerts, investigated, confirmed with
the amount recovered or dismissed; the hospital may appeal (申诉) a confirmed case and the
supervisor answers it. Each step is recorded with who took it and when."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

import orjson
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from services.bus.db import transaction
from services.bus.envelope import now_ms
from services.monitor.store import Alert, Case

Step = Literal["investigate", "confirm", "dismiss", "appeal", "uphold_appeal", "reject_appeal"]
# step → (status it starts from, status it leads to, who takes it)
STEPS: dict[str, tuple[str, str, str]] = {
    "investigate": ("open", "investigating", "supervisor"),
    "confirm": ("investigating", "confirmed", "supervisor"),
    "dismiss": ("investigating", "dismissed", "supervisor"),
    "appeal": ("confirmed", "appealed", "hospital"),
    "uphold_appeal": ("appealed", "dismissed", "supervisor"),
    "reject_appeal": ("appealed", "confirmed", "supervisor"),
}


@dataclass
class CaseError(Exception):
    """A request on a case that cannot be done: `status` is the HTTP answer (404, 409, 422)."""

    code: str
    message: str
    status: int = 409

    def __str__(self) -> str:
        return self.message


def open_case(engine: Engine, alert_ids: list[str], title: str, by: str, covers: object) -> Case:
    """A case over alerts of one hospital that no case holds yet; `covers(admdvs)` is the caller's scope."""
    with transaction(engine) as s:
        alerts = list(s.exec(select(Alert).where(col(Alert.alert_id).in_(alert_ids))).all())
        if missing := sorted(set(alert_ids) - {a.alert_id for a in alerts}):
            raise CaseError("ALERT_UNKNOWN", f"no such alert: {', '.join(missing)}", 404)
        if outside := [a.alert_id for a in alerts if not covers(a.mdtrtarea_admvs)]:  # type: ignore[operator]
            raise CaseError("NOT_YOUR_REGION", f"alerts outside the region you supervise: {', '.join(outside)}", 403)
        if len(hospitals := {a.fixmedins_code for a in alerts}) > 1:
            raise CaseError("SEVERAL_HOSPITALS", f"a case is about one hospital; these alerts name {len(hospitals)}: "
                                                 f"{', '.join(sorted(hospitals))}", 422)
        if taken := [f"{a.alert_id} (case {a.case_id})" for a in alerts if a.case_id]:
            raise CaseError("ALERT_IN_CASE", f"alerts already in a case: {', '.join(taken)}")
        case = Case(case_id=f"CASE{datetime.now():%Y%m%d%H%M%S}{secrets.token_hex(3)}",
                    fixmedins_code=alerts[0].fixmedins_code, mdtrtarea_admvs=alerts[0].mdtrtarea_admvs,
                    status="open", title=title, vola_amt=sum((a.vola_amt for a in alerts), Decimal("0.00")),
                    recovered_amt=Decimal("0.00"), opened_by=by, updated_ms=now_ms(),
                    history=orjson.dumps([{"at_ms": now_ms(), "by": by, "action": "open", "note": title,
                                           "alerts": alert_ids}]))
        s.add(case)
        for a in alerts:
            a.case_id = case.case_id
            s.add(a)
    return case


def take_step(engine: Engine, case_id: str, step: Step, by: str, role: str, note: str,
              recovered_amt: Decimal | None = None, allowed: object = None) -> Case:
    """Move a case one step; `allowed(case)` says whether the caller may touch this case at all."""
    start, end, who = STEPS[step]
    with transaction(engine) as s:
        case = s.get(Case, case_id)
        if case is None or (allowed is not None and not allowed(case)):  # type: ignore[operator]
            raise CaseError("CASE_UNKNOWN", f"no case {case_id} that you may see", 404)
        if role != who and role != "operator":
            raise CaseError("NOT_YOURS_TO_TAKE", f"{step} is taken by the {who}, not by a {role}", 403)
        if case.status != start:
            can = [k for k, (frm, _, w) in STEPS.items() if frm == case.status]
            raise CaseError("WRONG_STATUS", f"case {case_id} is {case.status}: {step} needs {start}; "
                                            f"from {case.status} the steps are {', '.join(can) or 'none (closed)'}")
        if step == "confirm":
            if recovered_amt is None:
                raise CaseError("RECOVERED_AMT_MISSING", "confirm needs recovered_amt: the amount to recover "
                                                         "(追回金额, yuan, 0 or more)", 422)
            case.recovered_amt = recovered_amt
        if step == "appeal":
            case.appeal = note
        if step in ("uphold_appeal", "reject_appeal"):
            case.appeal_answer = note
        if step == "uphold_appeal":
            case.recovered_amt = Decimal("0.00")
        case.status = end
        case.updated_ms = now_ms()
        case.history = orjson.dumps([*orjson.loads(case.history), {
            "at_ms": case.updated_ms, "by": by, "action": step, "note": note,
            **({"recovered_amt": str(case.recovered_amt)} if step == "confirm" else {})}])
        s.add(case)
    return case


def list_cases(engine: Engine, hospitals: list[str] | None, status: str | None, limit: int) -> list[Case]:
    q = select(Case)
    if hospitals is not None:
        q = q.where(col(Case.fixmedins_code).in_(hospitals))
    if status:
        q = q.where(Case.status == status)
    with Session(engine) as s:
        return list(s.exec(q.order_by(col(Case.updated_ms).desc()).limit(limit)).all())


def get_case(engine: Engine, case_id: str) -> tuple[Case, list[Alert]] | None:
    with Session(engine) as s:
        case = s.get(Case, case_id)
        if case is None:
            return None
        return case, list(s.exec(select(Alert).where(Alert.case_id == case_id)).all())


def view(case: Case, alerts: list[Alert] | None = None) -> dict[str, object]:
    out: dict[str, object] = case.model_dump(mode="json", exclude={"history"})
    out["history"] = orjson.loads(case.history)
    if alerts is not None:
        out["alerts"] = [a.model_dump(mode="json") for a in alerts]
    return out
