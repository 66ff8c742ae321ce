"""`yibao monitor outliers`: the nightly count. Reads settle.completed back from Kafka (every
settlement of the month), counts each hospital's use of each item per settled claim and finds the
hospitals far above their peers with the same `find` the streaming monitor uses; marks each
outlier the monitor has already alerted on, so the two can be compared."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx

from services.bus.client import Bus
from services.bus.reading import read_to_end
from services.bus.settings import BusSettings
from services.monitor.catalogue import RuleBook
from services.monitor.facts import SettledView, from_result
from services.monitor.outliers import Outlier, Usage, find


async def count(bootstrap: str, month: str | None, settings: BusSettings | None = None) -> tuple[Usage, int]:
    """The months' counts from settle.completed (one month when given); and how many records were read."""
    bus = Bus(settings or BusSettings(), bootstrap, "yibao-monitor-nightly")
    usage, read = Usage.empty(), 0
    async for rec in read_to_end(bus, "settle.completed"):
        read += 1
        try:
            view = SettledView.model_validate_json(rec.value)
        except ValueError:
            continue  # the monitor dead-letters what it cannot read; the count skips it too
        ep = from_result(view) if view.infno in ("2207", "2304") else None
        if ep is not None and (month is None or f"{ep.begntime:%Y-%m}" == month):
            usage.add(ep)
    return usage, read


def run(bootstrap: str, month: str | None, monitor_url: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    rule = next((r for r in RuleBook().current().rules if r.kind == "peer_outlier"), None)
    if rule is None:
        raise SystemExit("the rule catalogue has no peer_outlier rule")
    started = datetime.now()
    usage, read = asyncio.run(count(bootstrap, month))
    found: list[Outlier] = find(usage, rule)
    try:
        alerted = {a["alert_id"] for a in httpx.get(f"{monitor_url.rstrip('/')}/alerts", headers=auth, timeout=30,
                                                     params={"rule_id": rule.id, "limit": 1000}).json()}
    except (httpx.HTTPError, ValueError):
        alerted = None
    print(f"{read} records of settle.completed read in {(datetime.now() - started).total_seconds():.1f} s; "
          f"{len(usage.claims)} hospital-months, {len(usage.items)} hospital-item-months; {len(found)} outliers "
          f"(robust z ≥ {rule.params['robust_z']}, ≥ {rule.params['min_ratio']}× the median, "
          f"≥ {rule.params['min_hospitals']} hospitals)")
    rows = []
    for o in found:
        alert_id = f"{rule.id}-{o.fixmedins_code}-{o.code}-{o.month}"
        seen = "?" if alerted is None else ("yes" if alert_id in alerted else "NO")
        rows.append({"month": o.month, "fixmedins_code": o.fixmedins_code, "code": o.code, "rate": round(o.rate, 3),
                     "median": round(o.median, 3), "z": o.z, "alerted": seen})
        print(f"  {o.month} {o.fixmedins_code} {o.code:<24} {o.rate:>9.2f}/claim  median {o.median:>7.2f}  "
              f"z {o.z:>6.1f}  alerted by the monitor: {seen}")
    return rows
