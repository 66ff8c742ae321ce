"""Clearing between provinces: monthly statements per province pair, net of reversals, late
reversals carried to the next month; advance funds charged, warned about and replenished."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import update

from schemas.common import new_msgid
from services.bus.settings import BusSettings
from services.settle import clearing
from services.settle.settings import SettleSettings
from services.settle.store import LEDGER
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import Stack, start_stack
from tests.helpers import read_topic

GZ = "H44010400001"
D = Decimal


def last_month(now: datetime) -> str:
    return f"{now.year - (now.month == 1)}-{(now.month - 2) % 12 + 1:02d}"


def move_to(stack: Stack, period: str, *setl_ids: str) -> None:
    """Pretend ledger rows were written in `period` (the day before it ends)."""
    start, end = clearing.month_bounds_ms(period)
    with stack.settle.engine.begin() as c:
        q = update(LEDGER).values(created_ms=end - 86_400_000)
        c.execute(q.where(LEDGER.c.setl_id.in_(setl_ids)) if setl_ids else q)


async def reverse(stack: Stack, psn: str, setl_id: str) -> dict:  # type: ignore[type-arg]
    body = {"infno": "2208", "msgid": new_msgid(GZ), "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100",
            "fixmedins_code": GZ, "input": {"data": {"psn_no": psn, "setl_id": setl_id}}}
    ans = (await stack.http["settle"].post("/fsi/callService", json=body, timeout=60)).json()
    assert ans["infcode"] == 0, ans
    return ans  # type: ignore[no-any-return]


async def test_monthly_statements_net_of_reversals_and_carried(stack: Stack) -> None:
    settle = stack.operator("settle")
    psn = await stack.person()
    await stack.file(psn, "440100")
    a = (await stack.settle_claim(psn, GZ, "440100", "360100"))["output"]["setlinfo"]
    b = (await stack.settle_claim(psn, GZ, "440100", "360100"))["output"]["setlinfo"]
    local = await stack.settle_claim(psn, "H36010200001", "360100", "360100")
    assert local["infcode"] == 0
    await reverse(stack, psn, a["setl_id"])
    october = last_month(datetime.now(UTC))
    move_to(stack, october)

    r = await settle.post(f"/clearing/{october}/run")
    assert r.status_code == 200, r.text
    (row,) = r.json()  # the local claim is not cleared between provinces
    assert (row["insured_prov"], row["treat_prov"], row["settlements"], row["reversals"], row["carried"]) == \
        ("360000", "440000", 2, 1, 0)
    assert D(row["fund_pay_sumamt"]) == D(b["fund_pay_sumamt"])  # a and its reversal cancel out
    assert (await settle.post(f"/clearing/{october}/run")).json() == r.json()  # closed: the same answer
    csv_text = (await settle.get(f"/clearing/{october}", params={"format": "csv"})).text
    assert csv_text.splitlines()[0].startswith("period,insured_prov,treat_prov") and len(csv_text.splitlines()) == 2

    # b is reversed after October closed, but the reversal is dated in October: it goes to November
    rev = await reverse(stack, psn, b["setl_id"])
    move_to(stack, october, rev["output"]["setlinfo"]["setl_id"])
    this = f"{datetime.now(UTC):%Y-%m}"
    r = await settle.post(f"/clearing/{this}/run")
    assert r.status_code == 409 and "not ended" in r.json()["error"]
    _, end = clearing.month_bounds_ms(this)
    (nov,) = clearing.run(stack.settle.engine, this, stack.settle.ctx.ref.advance, now=end)
    assert (nov["settlements"], nov["reversals"], nov["carried"]) == (0, 1, 1)
    assert D(nov["fund_pay_sumamt"]) == -D(b["fund_pay_sumamt"])
    r = await settle.get("/clearing/1999-01")
    assert r.status_code == 404 and "not been cleared" in r.json()["error"]
    assert (await settle.post("/clearing/2026-13/run")).status_code == 422


@pytest.fixture
async def small_advance(broker: BrokerUnderTest, engine_factory, bus_settings: BusSettings,  # type: ignore[no-untyped-def]
                        tmp_path: Path) -> AsyncIterator[Stack]:
    f = tmp_path / "advance.json"
    f.write_text(json.dumps({"default": "100.00", "yellow": "0.70", "red": "0.90", "pairs": {}}))
    s = await start_stack(broker.bootstrap, engine_factory, bus_settings, SettleSettings(advance_funds_file=f))
    try:
        yield s
    finally:
        await s.stop()


async def test_advance_fund_warnings_and_replenishment(small_advance: Stack, broker: BrokerUnderTest) -> None:
    stack = small_advance
    psn = await stack.person()
    await stack.file(psn, "440100")
    info = (await stack.settle_claim(psn, GZ, "440100", "360100"))["output"]["setlinfo"]
    assert D(info["fund_pay_sumamt"]) >= D("90")  # more than 90 % of a 100-yuan advance: red
    (fund,) = (await stack.as_("settle", "province", "440000").get("/clearing/advance-funds")).json()
    assert fund["level"] == "red" and D(fund["used"]) == D(info["fund_pay_sumamt"])
    (warning,) = [json.loads(m.value) for m in await read_topic(broker, "settle.advance", 1)]
    assert (warning["insured_prov"], warning["treat_prov"], warning["level"]) == ("360000", "440000", "red")
    october = last_month(datetime.now(UTC))
    move_to(stack, october)
    await stack.operator("settle").post(f"/clearing/{october}/run")
    (fund,) = (await stack.as_("settle", "province", "440000").get("/clearing/advance-funds")).json()
    assert fund["level"] == "normal" and D(fund["used"]) == 0  # the cleared month replenished it
