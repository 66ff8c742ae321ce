"""Statistical outliers: the monitor's streaming counts and the nightly count read back from Kafka
find the same hospital, using an item 100× as much per claim as its peers."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from schemas.regions import designated_hospitals
from services.bus.client import Bus
from services.monitor.catalogue import RuleBook
from services.monitor.nightly import count
from services.monitor.outliers import find
from services.monitor.scenarios import settled
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import Stack
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.one_database]
LOZENGE, XRAY = "XA01ABD075A002010100483", "002101000010000"


async def test_streaming_and_nightly_find_the_same_outlier(stack: Stack, broker: BrokerUnderTest) -> None:
    hospitals = sorted(designated_hospitals())[:7]
    heavy = hospitals[-1]
    day = date.today().replace(day=1)
    bus = Bus(broker.settings(), broker.bootstrap, "test-outliers")
    await bus.start()
    n = 0
    try:
        for hosp in hospitals:
            for k in range(10):
                n += 1
                per_claim = Decimal(200) if hosp == heavy else Decimal(1 + k % 2)
                res = settled(f"{hosp}{n:018d}", f"360100{n:012d}", hosp, day,
                              [(LOZENGE, per_claim, Decimal("2.00")), (XRAY, Decimal(1 + k % 3), Decimal("70.00"))])
                await bus.send("settle.completed", res.psn_no, res, "/test/settle", correlation_id=res.msgid)
        await bus.flush()
    finally:
        await bus.stop()

    sup = stack.as_("monitor", "supervisor", "000000")

    async def streamed() -> list[dict[str, object]]:
        return (await sup.get("/alerts", params={"rule_id": "R-OUTLIER"})).json()  # type: ignore[no-any-return]

    alerts = await wait_until(streamed, what="the streaming outlier alert")
    assert [(a["fixmedins_code"], a["phase"]) for a in alerts] == [(heavy, "aggregate")]
    assert "倍" in str(alerts[0]["vola_cont"])

    usage, read = await count(broker.bootstrap, f"{day:%Y-%m}", broker.settings())
    assert read == n
    rule = next(r for r in RuleBook().current().rules if r.id == "R-OUTLIER")
    nightly = find(usage, rule)
    assert [(o.fixmedins_code, o.code) for o in nightly] == [(heavy, LOZENGE)]
    assert {str(a["alert_id"]) for a in alerts} == {f"R-OUTLIER-{o.fixmedins_code}-{o.code}-{o.month}" for o in nightly}
