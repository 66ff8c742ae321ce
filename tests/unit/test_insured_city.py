"""The insured city's decisions without a broker: settle, refuse, reverse, 冲正 and 5206 on a
SQLite database in memory, the views filled as enroll.events and filing.events would fill them."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel, create_engine

from schemas.events import Claim, FeeLine, HopLevel, SettlementHop
from services.bus.faults import Faults
from services.monitor.catalogue import RuleBook
from services.settle import handlers, transactions
from services.settle.domain import SettlementRefusedError, plan_route, split_line
from services.settle.handlers import SettleContext
from services.settle.refdata import Reference
from services.settle.store import FILINGS, LEDGER, PERSONS, TABLES, load_enrolments

REF = Reference.load()
TODAY = date.today()
PSN = "360100000000000001"


@pytest.fixture
def engine() -> Engine:
    e = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(e, tables=[t.__table__ for t in TABLES])  # type: ignore[attr-defined]
    with e.begin() as conn:
        conn.execute(insert(PERSONS).values(
            psn_no=PSN, insuplc_admdvs="360100", insutype="310", psn_name="测试", gend="1", brdy=date(1970, 1, 1),
            psn_type="11", psn_insu_stas="1", begndate=TODAY - timedelta(days=400),
            benefit_from=TODAY - timedelta(days=400), paid_through=date(TODAY.year, 12, 31), voucher_active=True,
            hardship=b"[]"))
        conn.execute(insert(FILINGS).values(fil_id="F1", psn_no=PSN, fil_type="REFERRAL", target_admdvs="440100",
                                            begndate=TODAY - timedelta(days=10), status="active"))
    return e


def ctx(engine: Engine) -> SettleContext:
    return SettleContext(engine, None, REF, Faults.parse(""), RuleBook())  # type: ignore[arg-type]


def claim(infno: str = "2207", msgid: str = "H44010400001202612050000000001", **kw: Any) -> Claim:
    fees = [FeeLine(feedetl_sn="1", med_list_codg="003307000010000", cnt=Decimal(1), pric=Decimal("600.00"),
                    det_item_fee_sumamt=Decimal("600.00"))] if infno in ("2206", "2207") else []
    return Claim(msgid=msgid, infno=infno, fixmedins_code="H44010400001", mdtrtarea_admvs="440100",
                 insuplc_admdvs="360100", psn_no=PSN, insutype="310", med_type="11", begntime=TODAY, fees=fees,
                 deadline_ms=0, **kw)


def decide(engine: Engine, c: Claim) -> Any:
    hop = SettlementHop(claim=c, route=plan_route(c.mdtrtarea_admvs, c.insuplc_admdvs), pos=0, hosp_lv="3",
                        split=[split_line(f, REF.catalogue.get(f.med_list_codg), "3", c.med_type) for f in c.fees])
    assert hop.route[4].level is HopLevel.CITY
    with engine.begin() as conn:
        return handlers._decide(ctx(engine), conn, hop, load_enrolments(conn, c.psn_no))


def test_settle_reverse_and_refuse_a_second_reversal(engine: Engine) -> None:
    settled = decide(engine, claim())
    info = settled.setlinfo
    assert info.medfee_sumamt == Decimal("600.00") and info.fund_pay_sumamt + info.psn_part_amt == Decimal("600.00")
    undone = decide(engine, claim("2208", "H44010400001202612050000000002", orig_setl_id=info.setl_id))
    assert undone.setlinfo.fund_pay_sumamt == -info.fund_pay_sumamt and undone.data["refd_setl_id"] == info.setl_id
    with pytest.raises(SettlementRefusedError) as again:
        decide(engine, claim("2208", "H44010400001202612050000000003", orig_setl_id=info.setl_id))
    assert again.value.code == "ALREADY_REVERSED"
    with engine.connect() as conn:
        rows = conn.execute(LEDGER.select()).mappings().all()
    assert len(rows) == 2 and sum(r["fund_fen"] for r in rows) == 0 and rows[0]["fund_fen"] != 0


def test_undo_a_request_never_settled_voids_it_when_it_comes(engine: Engine) -> None:
    lost = "H44010400001202612050000000009"
    out = decide(engine, claim("2601", "H44010400001202612050000000010", orig_msgid=lost))
    assert out.data["effect"] == "voided"
    with pytest.raises(SettlementRefusedError) as late:
        decide(engine, claim(msgid=lost))
    assert late.value.code == "VOIDED"


def test_undo_a_settled_request_reverses_it_and_5206_gives_back_the_year(engine: Engine) -> None:
    first = decide(engine, claim())
    with engine.connect() as conn:
        ytd = transactions.year_to_date(conn, claim("5206"), load_enrolments(conn, PSN), REF.cum_types, "202612")
    assert any(row["cum"] != "0.00" for row in ytd.data["cuminfo"])
    out = decide(engine, claim("2601", "H44010400001202612050000000011", orig_msgid=first.setlinfo.medins_setl_id))
    assert out.data["effect"] == "reversed"
    with engine.connect() as conn:
        after = transactions.year_to_date(conn, claim("5206"), load_enrolments(conn, PSN), REF.cum_types, "202612")
    assert all(row["cum"] == "0.00" for row in after.data["cuminfo"])


def test_a_person_outside_the_filing_is_refused_with_a_code(engine: Engine) -> None:
    with pytest.raises(SettlementRefusedError) as refused:
        decide(engine, claim(msgid="H44010400001202612050000000020").model_copy(update={"mdtrtarea_admvs": "330100"}))
    assert refused.value.code == "FILING_OTHER_PLACE" and "330100" in refused.value.message
