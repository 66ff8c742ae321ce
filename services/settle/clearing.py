"""Clearing between provinces (清算) and advance funds (预付金), reference §3.

Every cross-province settlement and reversal in the insured city's ledger is cleared once: the
monthly run for month M takes every ledger row not yet cleared that was written before M ended,
sums it per (insured province, treatment province), and closes M. A reversal written after M was
closed (whatever month its settlement was in) is picked up by the next run, marked as carried.
Running a closed month again returns the same statements.

The advance an insured province paid to a treatment province is charged with the fund share of
each settlement there (and credited by reversals); crossing 70 % / 90 % publishes a yellow / red
warning, and clearing a month replenishes what it settled.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, insert, select
from sqlmodel import Session

from schemas.events import AdvanceFundWarning
from services.bus.db import transaction
from services.bus.envelope import now_ms
from services.bus.sql import Statement
from services.settle import ledger
from services.settle.benefits import yuan_of
from services.settle.domain import province_of
from services.settle.store import AdvanceFund, ClearingRun, ClearingStatement

ADVANCE_FILE = Path(__file__).parent / "refdata" / "advance_funds.json"
STATEMENT_FIELDS = ("period", "insured_prov", "treat_prov", "settlements", "reversals", "carried",
                    "medfee_fen", "fund_fen", "acct_fen", "cash_fen")


class ClearingError(ValueError):
    """The run cannot be made as asked; the message says why. `status`: the HTTP answer it is."""

    status = 422  # the month is not written as YYYY-MM


class MonthNotEndedError(ClearingError):
    status = 409  # asked too early: it can be cleared once it has ended


class MonthNotClearedError(ClearingError):
    status = 404  # no statements yet


def month_bounds_ms(period: str) -> tuple[int, int]:
    try:
        y, m = int(period[:4]), int(period[5:7])
        if len(period) != 7 or period[4] != "-" or not 1 <= m <= 12:
            raise ValueError
    except ValueError:
        raise ClearingError(f"month {period!r}: use YYYY-MM, e.g. 2026-10") from None
    start = datetime(y, m, 1, tzinfo=UTC)
    end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def _period_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m")


def run(engine: Engine, period: str, thresholds: Thresholds, now: int | None = None) -> list[dict[str, Any]]:
    """Close `period` and return its statements (the same ones again if it is closed already)."""
    _, end = month_bounds_ms(period)
    now = now_ms() if now is None else now
    with transaction(engine) as s:
        if s.get(ClearingRun, period) is not None:
            return statements(engine, period, s)
        if now < end:
            raise MonthNotEndedError(f"{period} has not ended yet: it can be cleared from {_period_of(end)}-01")
        conn = s.connection()
        ids, sums = monthly_sums(ledger.uncleared(conn, end), period)
        ledger.mark_cleared(conn, ids, period)
        for (ins, trt), t in sorted(sums.items()):
            conn.execute(insert(ClearingStatement.__table__).values(  # type: ignore[attr-defined]
                period=period, insured_prov=ins, treat_prov=trt, **{f: t[f] for f in STATEMENT_FIELDS[3:]}))
            fund = load_advance(conn, ins, trt)
            if fund is not None:  # the month is settled: its share of the advance is replenished
                replenished, _ = charged(fund, thresholds, ins, trt, -t["fund_fen"])
                save_advance(conn, replenished, existed=True, at_ms=now)
        s.add(ClearingRun(period=period, rows=len(ids), closed_ms=now))
        s.flush()
        return statements(engine, period, s)


def monthly_sums(rows: Iterable[Any], period: str) -> tuple[list[str], dict[tuple[str, str], dict[str, int]]]:
    """What clearing `period` takes from uncleared ledger rows: the cross-province rows' setl_ids,
    and per (insured province, treatment province) their counts and sums in fen. A row written in an
    earlier month counts as carried; a reversal (refd_setl_id) as a reversal, its amounts negative."""
    sums: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    ids = []
    for r in rows:
        ins, trt = province_of(r.insuplc_admdvs), province_of(r.mdtrtarea_admvs)
        if ins == trt:
            continue  # 省内: cleared inside the province, not between provinces
        ids.append(r.setl_id)
        t = sums[(ins, trt)]
        t["reversals" if r.refd_setl_id else "settlements"] += 1
        t["carried"] += _period_of(r.created_ms) < period
        for f in ("medfee_fen", "fund_fen", "acct_fen", "cash_fen"):
            t[f] += getattr(r, f)
    return ids, sums


def statements(engine: Engine, period: str, s: Session | None = None) -> list[dict[str, Any]]:
    def read(sess: Session) -> list[dict[str, Any]]:
        q = select(ClearingStatement).where(ClearingStatement.period == period).order_by(  # type: ignore[arg-type]
            ClearingStatement.insured_prov, ClearingStatement.treat_prov)
        return [_json(row) for (row,) in sess.execute(q).all()]
    if s is not None:
        return read(s)
    with Session(engine) as sess:
        if sess.get(ClearingRun, period) is None:
            raise MonthNotClearedError(f"{period} has not been cleared yet: POST /clearing/{period}/run")
        return read(sess)


def _json(r: ClearingStatement) -> dict[str, Any]:
    return {"period": r.period, "insured_prov": r.insured_prov, "treat_prov": r.treat_prov,
            "settlements": r.settlements, "reversals": r.reversals, "carried": r.carried,
            "medfee_sumamt": str(yuan_of(r.medfee_fen)), "fund_pay_sumamt": str(yuan_of(r.fund_fen)),
            "acct_pay": str(yuan_of(r.acct_fen)), "psn_cash_pay": str(yuan_of(r.cash_fen)),
            "payable": f"{province_name(r.insured_prov)} 应付 {province_name(r.treat_prov)} {str(yuan_of(r.fund_fen))} 元"}


def province_name(code: str) -> str:
    from schemas.regions import provinces

    return provinces().get(code, code)


def as_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    cols = ["period", "insured_prov", "treat_prov", "settlements", "reversals", "carried", "medfee_sumamt",
            "fund_pay_sumamt", "acct_pay", "psn_cash_pay"]
    w = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


# --- advance funds (预付金) --------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    default_fen: int
    yellow: Decimal
    red: Decimal
    pairs: dict[str, int]

    @staticmethod
    def load(path: Path = ADVANCE_FILE) -> Thresholds:
        raw = json.loads(path.read_text(encoding="utf-8"))
        to_fen = lambda y: int(Decimal(y) * 100)  # noqa: E731
        return Thresholds(to_fen(raw["default"]), Decimal(raw["yellow"]), Decimal(raw["red"]),
                          {k: to_fen(v) for k, v in raw.get("pairs", {}).items()})

    def amount(self, insured_prov: str, treat_prov: str) -> int:
        return self.pairs.get(f"{insured_prov}-{treat_prov}", self.default_fen)


def level_of(used: int, amount: int, t: Thresholds) -> str:
    ratio = Decimal(used) / amount if amount else Decimal(1)
    return "red" if ratio >= t.red else "yellow" if ratio >= t.yellow else "normal"


@dataclass(frozen=True)
class AdvanceState:
    """An insured province's advance at a treatment province: its amount, what is used, its level."""

    insured_prov: str
    treat_prov: str
    amount_fen: int
    used_fen: int
    level: str = "normal"


class AdvanceBooks(Protocol):
    def advance(self, insured_prov: str, treat_prov: str) -> AdvanceState | None: ...
    def save_advance(self, state: AdvanceState, existed: bool) -> None: ...


def charged(state: AdvanceState | None, t: Thresholds, insured_prov: str, treat_prov: str,
            fund_fen: int) -> tuple[AdvanceState, AdvanceFundWarning | None]:
    """The advance after one settlement's fund share (a reversal's is negative), and the warning to
    publish when that moves it to another level."""
    before = state or AdvanceState(insured_prov, treat_prov, t.amount(insured_prov, treat_prov), 0)
    used = before.used_fen + fund_fen
    after = replace(before, used_fen=used, level=level_of(used, before.amount_fen, t))
    if after.level == before.level:
        return after, None
    return after, AdvanceFundWarning(
        insured_prov=insured_prov, treat_prov=treat_prov, level=after.level, amount=Decimal(after.amount_fen) / 100,
        used=Decimal(used) / 100, used_ratio=(Decimal(used) / after.amount_fen).quantize(Decimal("0.0001")))


def charge(books: AdvanceBooks, t: Thresholds, insuplc: str, treat: str, fund_fen: int) -> AdvanceFundWarning | None:
    """Charge (or credit) the advance with one settlement's fund share; a warning when the level changes."""
    ins, trt = province_of(insuplc), province_of(treat)
    if ins == trt or fund_fen == 0:
        return None
    state = books.advance(ins, trt)
    after, warning = charged(state, t, ins, trt, fund_fen)
    books.save_advance(after, existed=state is not None)
    return warning


_ADV_KEY = "WHERE insured_prov = :insured_prov AND treat_prov = :treat_prov"  # statements: services.bus.sql
_ADV_LOAD = Statement(f"SELECT amount_fen, used_fen, level FROM settle_advance_fund {_ADV_KEY}")
_ADV_UPDATE = Statement(f"UPDATE settle_advance_fund SET used_fen = :used_fen, level = :level, updated_ms = :updated_ms "
                        f"{_ADV_KEY}")
_ADV_INSERT = Statement("""INSERT INTO settle_advance_fund (insured_prov, treat_prov, amount_fen, used_fen, level,
                           updated_ms) VALUES (:insured_prov, :treat_prov, :amount_fen, :used_fen, :level, :updated_ms)""")


def load_advance(conn: Connection, insured_prov: str, treat_prov: str) -> AdvanceState | None:
    r = _ADV_LOAD.one(conn, {"insured_prov": insured_prov, "treat_prov": treat_prov})
    return None if r is None else AdvanceState(insured_prov, treat_prov, int(r[0]), int(r[1]), str(r[2]))


def save_advance(conn: Connection, a: AdvanceState, existed: bool, at_ms: int | None = None) -> None:
    at = now_ms() if at_ms is None else at_ms
    values = {"insured_prov": a.insured_prov, "treat_prov": a.treat_prov, "used_fen": a.used_fen, "level": a.level,
              "updated_ms": at}
    if existed:
        _ADV_UPDATE.run(conn, values)
    else:
        _ADV_INSERT.run(conn, values | {"amount_fen": a.amount_fen})


def advance_funds(engine: Engine) -> list[dict[str, Any]]:
    with Session(engine) as s:
        rows = [r for (r,) in s.execute(select(AdvanceFund)).all()]
    return [{"insured_prov": r.insured_prov, "treat_prov": r.treat_prov, "amount": str(yuan_of(r.amount_fen)),
             "used": str(yuan_of(r.used_fen)), "used_ratio": str((Decimal(r.used_fen) / r.amount_fen).quantize(
                 Decimal("0.0001"))) if r.amount_fen else "1", "level": r.level} for r in rows]
