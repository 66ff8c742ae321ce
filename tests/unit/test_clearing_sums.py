"""Clearing arithmetic without a database: a month's statements from ledger rows, and the advance
fund's level after each settlement."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

from services.settle.clearing import AdvanceState, Thresholds, charged, monthly_sums


def row(setl_id: str, ins: str, trt: str, fund: int, day: str, refd: str | None = None) -> SimpleNamespace:
    ms = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)
    return SimpleNamespace(setl_id=setl_id, insuplc_admdvs=ins, mdtrtarea_admvs=trt, refd_setl_id=refd,
                           medfee_fen=fund * 2, fund_fen=fund, acct_fen=0, cash_fen=fund, created_ms=ms)


def test_a_month_nets_reversals_counts_carried_rows_and_leaves_the_province_inside_out() -> None:
    rows = [row("A", "360100", "440100", 10_000, "2026-11-03"),
            row("B", "360200", "440300", 2_500, "2026-11-20"),
            row("C", "360100", "440100", -10_000, "2026-11-21", refd="A"),
            row("D", "360100", "440100", 700, "2026-10-30"),  # written in October, cleared now: carried
            row("E", "440100", "440300", 9_999, "2026-11-05")]  # 省内: not between provinces
    ids, sums = monthly_sums(rows, "2026-11")
    assert ids == ["A", "B", "C", "D"]
    assert dict(sums[("360000", "440000")]) == {"settlements": 3, "reversals": 1, "carried": 1, "medfee_fen": 6_400,
                                                "fund_fen": 3_200, "acct_fen": 0, "cash_fen": 3_200}
    assert list(sums) == [("360000", "440000")]


def test_the_advance_warns_when_its_level_changes_and_only_then() -> None:
    t = Thresholds(default_fen=100_000, yellow=Decimal("0.7"), red=Decimal("0.9"), pairs={"360000-440000": 10_000})
    first, warned = charged(None, t, "360000", "440000", 6_999)
    assert first == AdvanceState("360000", "440000", 10_000, 6_999, "normal") and warned is None
    yellow, warned = charged(first, t, "360000", "440000", 1)
    assert yellow.level == "yellow" and warned is not None and warned.used_ratio == Decimal("0.7000")
    red, warned = charged(yellow, t, "360000", "440000", 2_000)
    assert red.level == "red" and warned is not None and warned.used == Decimal("90.00")
    back, warned = charged(red, t, "360000", "440000", -5_000)  # a reversal credits it
    assert back.level == "normal" and back.used_fen == 4_000 and warned is not None and warned.level == "normal"
    assert charged(None, t, "360000", "450000", 1)[0].amount_fen == 100_000  # a pair without its own amount
