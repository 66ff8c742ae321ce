"""Statistical outliers (统计异常): a hospital whose use of an item per settled claim, in a month,
stands far above its peers' (the other hospitals billing that item that month), by the robust
z-score 0.6745·(x − median)/MAD. Two ways to the same answer: streaming (the monitor keeps the
month's counts as settlements arrive and, every few seconds, judges the items billed since it last
did: services/monitor/aggregate.py) and nightly (`yibao monitor outliers` reads settle.completed
back from Kafka and counts again); both call `find`."""

from __future__ import annotations

import statistics
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from services.monitor.catalogue import RuleSpec
from services.monitor.facts import Episode, Hit


@dataclass
class Usage:
    """A month's counts: item quantity per (month, hospital, item), settled claims per (month, hospital)."""

    items: dict[tuple[str, str, str], Decimal]
    claims: dict[tuple[str, str], int]

    @classmethod
    def empty(cls) -> Usage:
        return cls(defaultdict(Decimal), defaultdict(int))

    def add(self, ep: Episode) -> None:
        month = f"{ep.begntime:%Y-%m}"
        self.claims[(month, ep.fixmedins_code)] += 1
        for ln in ep.lines:
            self.items[(month, ep.fixmedins_code, ln.code)] += ln.cnt

    def touched(self) -> set[tuple[str, str]]:
        return {(month, code) for month, _, code in self.items}


class Due:
    """The (month, item) pairs billed since the outlier rule last judged them, shared by the
    batches that add them (once committed) and the job that takes them. It starts as None, "every
    item of the recent months": what a stopped process had not judged yet is judged after its start."""

    def __init__(self) -> None:
        self._pairs: set[tuple[str, str]] | None = None
        self._lock = threading.Lock()

    def add(self, pairs: set[tuple[str, str]] | None) -> None:
        with self._lock:
            if pairs is None or self._pairs is None:
                self._pairs = None
            else:
                self._pairs |= pairs

    def take(self) -> set[tuple[str, str]] | None:
        with self._lock:
            pairs, self._pairs = self._pairs, set()
            return pairs


def of(episodes: Iterable[Episode]) -> Usage:
    u = Usage.empty()
    for ep in episodes:
        u.add(ep)
    return u


@dataclass(frozen=True)
class Outlier:
    month: str
    fixmedins_code: str
    code: str
    rate: float  # quantity per settled claim
    median: float
    z: float

    def hit(self, r: RuleSpec, name: str) -> Hit:
        times = self.rate / self.median if self.median else float("inf")
        return Hit(r.id, r.name, r.severity, r.type,
                   f"{self.month} {name} 每结算人次用量 {self.rate:.2f}，为同类机构中位数 {self.median:.2f} 的 "
                   f"{times:.0f} 倍 (robust z {self.z:.1f})", Decimal("0.00"), (),
                   key=f"{self.fixmedins_code}-{self.code}-{self.month}")


def find(u: Usage, r: RuleSpec, only: set[tuple[str, str]] | None = None) -> list[Outlier]:
    """The hospitals far above their peers, for every (month, item) or only those in `only`."""
    least, z_min, ratio_min = int(r.params["min_hospitals"]), float(r.params["robust_z"]), float(r.params["min_ratio"])
    rates: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (month, hosp, code), qty in u.items.items():
        if only is not None and (month, code) not in only:
            continue
        claims = u.claims.get((month, hosp), 0)
        if claims:
            rates[(month, code)][hosp] = float(qty) / claims
    out = []
    for (month, code), by_hosp in rates.items():
        if len(by_hosp) < least:
            continue
        values = list(by_hosp.values())
        med = statistics.median(values)
        mad = statistics.median([abs(v - med) for v in values])
        spread = mad / 0.6745 if mad else statistics.fmean([abs(v - med) for v in values]) * 1.2533
        if not spread:
            continue
        for hosp, rate in by_hosp.items():
            z = (rate - med) / spread
            if z >= z_min and (not med or rate / med >= ratio_min):
                out.append(Outlier(month, hosp, code, rate, med, round(z, 2)))
    return sorted(out, key=lambda o: (o.month, o.code, o.fixmedins_code))
