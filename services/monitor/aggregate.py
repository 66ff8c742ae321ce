"""The aggregate phase (统计): the peer-outlier rule judged every few seconds over the (month, item)
pairs billed since its last judgement, not after every batch. A month's statistics move slowly and
are for supervisors, so seconds are fine; a busy month's counts are then read once per judgement
instead of once per batch that touched them."""

from __future__ import annotations

from datetime import date

from services.bus.db import transaction
from services.monitor.facts import Episode
from services.monitor.handlers import MonitorContext, raise_alert
from services.monitor.history import month_usage
from services.monitor.outliers import find


def since_month(today: date) -> str:
    """After a start every item of this month and the last is judged: what a stopped process had
    not judged yet (older months: the nightly count, `yibao monitor outliers`)."""
    last = date(today.year - (today.month == 1), 12 if today.month == 1 else today.month - 1, 1)
    return f"{last:%Y-%m}"


def judge_outliers(ctx: MonitorContext, today: date | None = None) -> dict[str, int]:
    """One judgement of the pairs due; on failure they stay due for the next."""
    rule = next((r for r in ctx.rules.current().rules if r.kind == "peer_outlier"), None)
    pairs = ctx.due.take()
    if rule is None or pairs == set():
        return {"items": 0, "alerts": 0}
    raised = 0
    try:
        with transaction(ctx.engine) as s:
            usage = month_usage(s.connection(), pairs, since_month(today or date.today()))
            judged = pairs if pairs is not None else usage.touched()
            for o in find(usage, rule, judged):
                first = date.fromisoformat(f"{o.month}-01")
                if not rule.in_force(first):
                    continue
                item = ctx.items.get(o.code)
                ep = Episode(msgid="", psn_no="", fixmedins_code=o.fixmedins_code,
                             mdtrtarea_admvs=ctx.regions.get(o.fixmedins_code, ""), insuplc_admdvs="", insutype="",
                             med_type="", begntime=first, endtime=first, lines=())
                alert = o.hit(rule, f"{item.name}({o.code})" if item else o.code)
                raised += raise_alert(s, alert, ep, rule.family, phase="aggregate")
    except Exception:
        ctx.due.add(pairs)
        raise
    return {"items": len(judged), "alerts": raised}
