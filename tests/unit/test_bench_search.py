"""The bench's search for the highest rate within a p99 target, on a stand-in measurement whose
tail grows with the rate (the bench's phases are exercised in tests/e2e/test_platform.py)."""

from __future__ import annotations

from typing import Any

from services import bench


def phase(p99_ms: float, errors: int = 0) -> dict[str, Any]:
    return {"throughput_per_s": 0.0, "latency_ms": {"p99": p99_ms}, "errors": {"HTTP 503": errors} if errors else {}}


def test_bisection_brackets_the_highest_rate_within_the_target() -> None:
    asked: list[float] = []

    def measure(rate: float) -> dict[str, Any]:
        asked.append(rate)
        return phase(100 + (rate - 150) * 10 if rate > 150 else 100)  # p99 passes 250 ms at 165/s

    found = bench.highest_rate(measure, 250, met=0, failed=300, steps=6)
    assert asked == [150, 225, 188, 169, 160, 164]
    assert (found["met_up_to_per_s"], found["failed_at_per_s"]) == (164, 169)
    assert [s["meets"] for s in found["steps"]] == [True, False, False, False, True, True]


def test_a_step_with_errors_misses_the_target_whatever_its_p99() -> None:
    found = bench.highest_rate(lambda rate: phase(50, errors=1 if rate > 100 else 0), 250, met=0, failed=200, steps=3)
    assert (found["met_up_to_per_s"], found["failed_at_per_s"]) == (100, 125)


def test_the_search_stops_when_the_bracket_is_one_rate_wide() -> None:
    asked: list[float] = []
    found = bench.highest_rate(lambda rate: asked.append(rate) or phase(300), 250, met=10, failed=11, steps=5)
    assert asked == [] and found["steps"] == [] and (found["met_up_to_per_s"], found["failed_at_per_s"]) == (10, 11)
