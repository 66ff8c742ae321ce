"""The monitor's history reads on real databases (SQLite and PostgreSQL): who was seen at a clinic on a day with a
diagnosis first (聚集性就医), bounded, and what a batch adds on top."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import Engine, insert
from sqlmodel import Session, SQLModel

from services.monitor.history import EPISODES, BatchHistory
from services.monitor.store import TABLES

DAY = date(2026, 11, 10)
CLINIC = "H44010400001"


@pytest.fixture
def engine(engine_factory) -> Engine:
    e: Engine = engine_factory("monitor")
    SQLModel.metadata.create_all(e, tables=[t.__table__ for t in TABLES])  # type: ignore[attr-defined]
    rows = [("P1", "J06.900"), ("P2", "J06.900,I10"), ("P3", "J06.9001"), ("P4", "I10,J06.900"),
            ("P5", "J06.900")]
    with e.begin() as c:
        for i, (psn, diags) in enumerate(rows):
            c.execute(insert(EPISODES).values(
                msgid=f"M{i}", psn_no=psn, fixmedins_code=CLINIC, mdtrtarea_admvs="440100", insuplc_admdvs="360100",
                inpatient=False, begntime=DAY, endtime=DAY, diagnoses=diags, medfee=Decimal("10.00"),
                selfpay=Decimal("1.00"), reversed=psn == "P5"))
        c.execute(insert(EPISODES).values(  # the same day and diagnosis, another insured region
            msgid="M9", psn_no="P9", fixmedins_code=CLINIC, mdtrtarea_admvs="440100", insuplc_admdvs="330100",
            inpatient=False, begntime=DAY, endtime=DAY, diagnoses="J06.900", medfee=Decimal("10.00"),
            selfpay=Decimal("1.00"), reversed=False))
    return e


def test_the_clinic_read_counts_first_diagnoses_of_one_region_and_not_reversed(engine: Engine) -> None:
    with Session(engine) as s:
        h = BatchHistory(set())
        h.load(s, [])  # a batch without settlements: nothing read until a rule asks
        assert h.persons_at(CLINIC, DAY, "360100", "J06.900", at_most=10) == {"P1", "P2"}  # not P3 (J06.9001)


def test_the_clinic_read_stops_at_enough_persons(engine: Engine) -> None:
    with Session(engine) as s:
        h = BatchHistory(set())
        h.load(s, [])
        assert len(h.persons_at(CLINIC, DAY, "360100", "J06.900", at_most=1)) == 1


class _Batch:
    """What load() reads of a batch's settlements: whose, and from when."""

    def __init__(self, psn_no: str, begntime: date) -> None:
        self.psn_no, self.begntime, self.lines = psn_no, begntime, []


def test_a_batch_reads_its_persons_past_typed_as_the_rules_read_it(engine: Engine) -> None:
    with engine.begin() as c:  # an inpatient stay with an amount a float cannot hold, and one too old to matter
        c.execute(insert(EPISODES).values(
            msgid="M7", psn_no="P1", fixmedins_code=CLINIC, mdtrtarea_admvs="440100", insuplc_admdvs="360100",
            inpatient=True, begntime=date(2026, 10, 1), endtime=date(2026, 10, 9), diagnoses="K35.800,",
            medfee=Decimal("4321.10"), selfpay=Decimal("1234.57"), reversed=False))
        c.execute(insert(EPISODES).values(
            msgid="M8", psn_no="P1", fixmedins_code=CLINIC, mdtrtarea_admvs="440100", insuplc_admdvs="360100",
            inpatient=False, begntime=date(2024, 1, 2), endtime=date(2024, 1, 2), diagnoses="I10",
            medfee=Decimal("10.00"), selfpay=Decimal("1.00"), reversed=False))
    with Session(engine) as s:
        h = BatchHistory(set())
        h.load(s, [_Batch("P1", DAY), _Batch("P5", DAY)])  # type: ignore[list-item]
    stays = sorted(h.past["P1"], key=lambda p: p.stay.msgid)
    assert [p.stay.msgid for p in stays] == ["M0", "M7"]  # M8 ended over 400 days before the batch
    stay = stays[1].stay
    assert (stay.inpatient, stay.begntime, stay.endtime, stay.diagnoses) == (True, date(2026, 10, 1),
                                                                           date(2026, 10, 9), ("K35.800",))
    assert stays[0].stay.inpatient is False and stays[0].stay.diagnoses == ("J06.900",)
    assert h.selfpay_in("P1", 2026) == Decimal("1235.57")  # exact: 1.00 + 1234.57
    assert h.past["P5"] == []  # reversed
