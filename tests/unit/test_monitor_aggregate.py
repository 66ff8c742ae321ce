"""The peer-outlier judgement on real databases (SQLite and PostgreSQL): the items due are judged
once, an alert raised once, what a failed judgement took stays due, and after a start every item
of this month and the last is judged (what a stopped process had not judged yet)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import Engine, func, insert, select
from sqlmodel import SQLModel

from services.bus.db import transaction
from services.monitor import aggregate
from services.monitor.aggregate import judge_outliers, since_month
from services.monitor.catalogue import RuleBook
from services.monitor.handlers import MonitorContext
from services.monitor.history import HOSPITAL_MONTHS, ITEM_MONTHS, BatchHistory, month_usage
from services.monitor.store import TABLES, Alert
from services.settle.refdata import load_catalogue

LOZENGE, XRAY = "XA01ABD075A002010100483", "002101000010000"
HOSPITALS = [f"H4401040000{i}" for i in range(1, 8)]
TODAY = date(2026, 11, 20)


def counts(engine: Engine, month: str, heavy: str) -> None:
    """Seven hospitals' month, ten claims each: `heavy` bills 200 lozenges a claim, its peers 1–2."""
    with engine.begin() as c:
        c.execute(insert(HOSPITAL_MONTHS), [{"month": month, "fixmedins_code": h, "claims": 10} for h in HOSPITALS])
        c.execute(insert(ITEM_MONTHS), [
            {"month": month, "code": code, "fixmedins_code": h,
             "cnt": Decimal(2000 if (h == heavy and code == LOZENGE) else 10 + i)}
            for i, h in enumerate(HOSPITALS) for code in (LOZENGE, XRAY)])


@pytest.fixture
def ctx(engine_factory) -> MonitorContext:
    e: Engine = engine_factory("monitor")
    SQLModel.metadata.create_all(e, tables=[t.__table__ for t in TABLES])  # type: ignore[attr-defined]
    return MonitorContext(e, RuleBook(), load_catalogue())


def alerts(engine: Engine) -> list[tuple[str, str]]:
    table = Alert.__table__  # type: ignore[attr-defined]
    with engine.connect() as c:
        return [(r.alert_id, r.phase) for r in c.execute(select(table.c.alert_id, table.c.phase))]


def test_after_a_start_the_recent_months_are_judged_then_only_what_was_billed_since(ctx: MonitorContext) -> None:
    counts(ctx.engine, "2026-11", heavy=HOSPITALS[-1])
    counts(ctx.engine, "2026-09", heavy=HOSPITALS[0])  # before last month: the nightly count's
    assert since_month(TODAY) == "2026-10" and since_month(date(2027, 1, 3)) == "2026-12"

    assert judge_outliers(ctx, TODAY) == {"items": 2, "alerts": 1}
    assert alerts(ctx.engine) == [(f"R-OUTLIER-{HOSPITALS[-1]}-{LOZENGE}-2026-11", "aggregate")]
    assert judge_outliers(ctx, TODAY) == {"items": 0, "alerts": 0}  # nothing billed since

    ctx.due.add({("2026-11", LOZENGE)})
    assert judge_outliers(ctx, TODAY) == {"items": 1, "alerts": 0}  # judged again, raised once
    ctx.due.add({("2026-09", LOZENGE)})  # billed now, for an older month: judged
    assert judge_outliers(ctx, TODAY) == {"items": 1, "alerts": 1}
    with ctx.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(Alert.__table__)).scalar() == 2  # type: ignore[attr-defined]


def test_what_a_failed_judgement_took_stays_due(ctx: MonitorContext, monkeypatch: pytest.MonkeyPatch) -> None:
    counts(ctx.engine, "2026-11", heavy=HOSPITALS[-1])
    judge_outliers(ctx, TODAY)
    ctx.due.add({("2026-11", XRAY)})

    def broken(*_: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(aggregate, "month_usage", broken)
    with pytest.raises(RuntimeError):
        judge_outliers(ctx, TODAY)
    assert ctx.due.take() == {("2026-11", XRAY)}


def test_each_batch_adds_to_the_months_counts(ctx: MonitorContext) -> None:
    for qty in ("1.5", "2.25"):
        h = BatchHistory(set())
        h.usage.items[("2026-11", HOSPITALS[0], LOZENGE)] += Decimal(qty)
        h.usage.claims[("2026-11", HOSPITALS[0])] += 1
        with transaction(ctx.engine) as s:
            h.write(s)
    with transaction(ctx.engine) as s:
        u = month_usage(s.connection(), {("2026-11", LOZENGE)})
    assert dict(u.items) == {("2026-11", HOSPITALS[0], LOZENGE): Decimal("3.75")}
    assert dict(u.claims) == {("2026-11", HOSPITALS[0]): 2}
