"""The insured city's decisions (services/settle/insured.py) on books kept in dicts: settle,
pre-settle, refuse, reverse, 冲正, 5206, 1101 and the advance fund, without a database or a broker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from schemas.common import FilingType
from schemas.events import Claim, FeeLine, HopAction, SettlementHop
from services.settle import insured, ledger
from services.settle.benefits import Accumulators
from services.settle.clearing import AdvanceState
from services.settle.domain import FilingState, PersonState, plan_route, split_line
from services.settle.infnos import TRANSACTIONS
from services.settle.refdata import Reference

REF = Reference.load()
TODAY = date.today()
PSN = "360100000000000001"
HOSPITAL = "H44010400001"


class FakeBooks:
    """InsuredBooks in dicts: what a test puts in is what the decisions read."""

    def __init__(self, persons: list[PersonState], filings: list[FilingState], balance_fen: int = 0) -> None:
        self.persons, self.filing_rows = persons, filings
        self.acc: dict[tuple[str, int, str], Accumulators] = {}
        self.balances: dict[str, int] = {p.psn_no: balance_fen for p in persons}
        self.ledger: dict[str, dict[str, Any]] = {}  # setl_id → row
        self.voided: dict[str, str] = {}
        self.advances: dict[tuple[str, str], AdvanceState] = {}

    def enrolments(self, psn_no: str) -> list[PersonState]:
        return [p for p in self.persons if p.psn_no == psn_no]

    def filings(self, psn_no: str) -> list[FilingState]:
        return list(self.filing_rows) if psn_no == PSN else []

    def holders(self, insuplc: str, cert_digest: str | None, psn_no: str) -> list[PersonState]:
        return [p for p in self.persons if p.insuplc_admdvs == insuplc and p.psn_no == psn_no]

    def accumulators(self, psn_no: str, year: int, insutype: str) -> Accumulators | None:
        return self.acc.get((psn_no, year, insutype))

    def accumulators_of_year(self, psn_no: str, year: int) -> dict[str, Accumulators]:
        return {t: a for (p, y, t), a in self.acc.items() if (p, y) == (psn_no, year)}

    def save_accumulators(self, psn_no: str, year: int, insutype: str, acc: Accumulators, existed: bool) -> None:
        assert existed == ((psn_no, year, insutype) in self.acc)
        self.acc[(psn_no, year, insutype)] = acc

    def balance(self, psn_no: str) -> int:
        return self.balances.get(psn_no, 0)

    def save_balance(self, psn_no: str, balance_fen: int) -> None:
        self.balances[psn_no] = balance_fen

    def voided_by(self, msgid: str) -> str | None:
        return self.voided.get(msgid)

    def void(self, msgid: str, by_msgid: str, psn_no: str) -> None:
        self.voided[msgid] = by_msgid

    def booked(self, msgid: str) -> bool:
        return any(r["msgid"] == msgid for r in self.ledger.values())

    def settlement(self, setl_id: str) -> Mapping[str, Any] | None:
        return self.ledger.get(setl_id)

    def settlement_of(self, msgid: str, psn_no: str) -> Mapping[str, Any] | None:
        return next((r for r in self.ledger.values() if r["msgid"] == msgid and r["psn_no"] == psn_no), None)

    def book_settlement(self, row: dict[str, Any]) -> None:
        assert not self.booked(row["msgid"])
        self.ledger[row["setl_id"]] = row | {"refd_setl_id": None, "reversed_by": None}

    def book_reversal(self, original: Mapping[str, Any], reversal: ledger.Reversal, setl_id: str, msgid: str,
                      outcome: bytes) -> None:
        self.ledger[setl_id] = reversal.row | {"setl_id": setl_id, "msgid": msgid, "outcome": outcome,
                                               "reversed_by": None}
        self.ledger[original["setl_id"]]["reversed_by"] = setl_id

    def advance(self, insured_prov: str, treat_prov: str) -> AdvanceState | None:
        return self.advances.get((insured_prov, treat_prov))

    def save_advance(self, state: AdvanceState, existed: bool) -> None:
        self.advances[(state.insured_prov, state.treat_prov)] = state


def person(**kw: Any) -> PersonState:
    base = PersonState(psn_no=PSN, psn_name="测试", gend="1", insuplc_admdvs="360100", insutype="310", psn_type="11",
                       psn_insu_stas="1", paid_through=date(TODAY.year, 12, 31), voucher_active=True,
                       begndate=TODAY - timedelta(days=400), benefit_from=TODAY - timedelta(days=400),
                       brdy=date(1970, 1, 1))
    return replace(base, **kw)


REFERRAL = FilingState(fil_id="F1", fil_type=FilingType("REFERRAL"), target_admdvs="440100",
                       begndate=TODAY - timedelta(days=10), enddate=None, status="active")


@pytest.fixture
def books() -> FakeBooks:
    return FakeBooks([person()], [REFERRAL], balance_fen=50_000)


def claim(infno: str = "2207", msgid: str = "H44010400001202612050000000001", price: str = "600.00",
          **kw: Any) -> Claim:
    fees = [FeeLine(feedetl_sn="1", med_list_codg="003307000010000", cnt=Decimal(1), pric=Decimal(price),
                    det_item_fee_sumamt=Decimal(price))] if infno in ("2206", "2207") else []
    fields: dict[str, Any] = dict(msgid=msgid, infno=infno, fixmedins_code=HOSPITAL, mdtrtarea_admvs="440100",
                                  insuplc_admdvs="360100", psn_no=PSN, insutype="310", med_type="11",
                                  begntime=TODAY, fees=fees, deadline_ms=0)
    return Claim(**(fields | kw))


def decide(books: FakeBooks, c: Claim) -> insured.Decision:
    """The claim as it reaches the insured city (split at the treatment city), decided."""
    route = plan_route(c.mdtrtarea_admvs, c.insuplc_admdvs)
    pos = next(i for i, step in enumerate(route) if step.action is HopAction.COMPUTE)
    hop = SettlementHop(claim=c, route=route, pos=pos, hosp_lv="3",
                        split=[split_line(f, REF.catalogue.get(f.med_list_codg), "3", c.med_type) for f in c.fees])
    how = TRANSACTIONS[c.infno].decide
    assert how is not None, f"{c.infno} is answered locally"
    decision = insured.decide(REF, books, hop, how)
    assert decision is not None
    return decision


def test_a_settlement_books_once_and_its_parts_add_up(books: FakeBooks) -> None:
    d = decide(books, claim())
    info = d.outcome.setlinfo
    assert d.outcome.infcode == 0 and info is not None
    assert info.medfee_sumamt == Decimal("600.00") and info.fund_pay_sumamt + info.psn_part_amt == Decimal("600.00")
    (row,) = books.ledger.values()
    assert row["fund_fen"] == int(info.fund_pay_sumamt * 100) and row["msgid"] == claim().msgid
    assert books.acc[(PSN, TODAY.year, "310")] != Accumulators()
    # the same msgid again is a redelivery: no second answer, nothing booked
    route = plan_route("440100", "360100")
    pos = next(i for i, s in enumerate(route) if s.action is HopAction.COMPUTE)
    again = SettlementHop(claim=claim(), route=route, pos=pos, split=d.split)
    assert insured.decide(REF, books, again, insured.settle) is None
    assert len(books.ledger) == 1


def test_a_pre_settlement_answers_the_same_and_writes_nothing(books: FakeBooks) -> None:
    pre = decide(books, claim("2206", "H44010400001202612050000000002"))
    assert pre.outcome.setlinfo is not None and pre.outcome.setlinfo.setl_id.startswith("PRE")
    assert books.ledger == {} and books.acc == {} and books.advances == {} and pre.warning is None
    real = decide(books, claim())
    assert real.outcome.setlinfo is not None
    assert real.outcome.setlinfo.fund_pay_sumamt == pre.outcome.setlinfo.fund_pay_sumamt


def test_a_reversal_gives_back_and_a_second_one_is_refused(books: FakeBooks) -> None:
    info = decide(books, claim(acct_used_flag="1")).outcome.setlinfo
    assert info is not None and info.acct_pay > 0 and books.balances[PSN] == 50_000 - int(info.acct_pay * 100)
    undone = decide(books, claim("2208", "H44010400001202612050000000003", orig_setl_id=info.setl_id)).outcome
    assert undone.infcode == 0 and undone.setlinfo is not None
    assert undone.setlinfo.fund_pay_sumamt == -info.fund_pay_sumamt and undone.data == {
        "refd_setl_id": info.setl_id, "reversed_msgid": info.medins_setl_id}
    assert books.acc[(PSN, TODAY.year, "310")] == Accumulators() and books.balances[PSN] == 50_000
    assert sum(r["fund_fen"] for r in books.ledger.values()) == 0
    again = decide(books, claim("2208", "H44010400001202612050000000004", orig_setl_id=info.setl_id)).outcome
    assert (again.infcode, again.err_code) == (-1, "ALREADY_REVERSED") and len(books.ledger) == 2


@pytest.mark.parametrize(("change", "code"), [
    ({"fixmedins_code": "H44010400002"}, "NOT_YOUR_SETTLEMENT"),
    ({"orig_setl_id": "360100NOSUCHSETTLEMENT"}, "SETTLEMENT_UNKNOWN"),
    ({"psn_no": "360100000000000002"}, "SETTLEMENT_UNKNOWN"),
])
def test_a_reversal_of_someone_elses_settlement_is_refused(books: FakeBooks, change: dict[str, str],
                                                            code: str) -> None:
    info = decide(books, claim()).outcome.setlinfo
    assert info is not None
    asked = claim("2208", "H44010400001202612050000000005", orig_setl_id=info.setl_id).model_copy(update=change)
    out = decide(books, asked).outcome
    assert (out.infcode, out.err_code) == (-1, code) and len(books.ledger) == 1


def test_undo_of_a_request_never_settled_voids_it_when_it_comes(books: FakeBooks) -> None:
    lost, undo = "H44010400001202612050000000009", "H44010400001202612050000000010"
    out = decide(books, claim("2601", undo, orig_msgid=lost)).outcome
    assert out.data is not None and out.data["effect"] == "voided" and books.voided == {lost: undo}
    late = decide(books, claim(msgid=lost)).outcome
    assert (late.infcode, late.err_code) == (-1, "VOIDED") and books.ledger == {}


def test_undo_of_a_settled_request_reverses_it_and_5206_shows_the_year(books: FakeBooks) -> None:
    first = decide(books, claim()).outcome.setlinfo
    assert first is not None
    ytd = decide(books, claim("5206", "H44010400001202612050000000012")).outcome
    assert ytd.data is not None and any(row["cum"] != "0.00" for row in ytd.data["cuminfo"])
    out = decide(books, claim("2601", "H44010400001202612050000000011", orig_msgid=first.medins_setl_id)).outcome
    assert out.data is not None and out.data["effect"] == "reversed"
    twice = decide(books, claim("2601", "H44010400001202612050000000013", orig_msgid=first.medins_setl_id)).outcome
    assert twice.data is not None and twice.data["effect"] == "none"
    after = decide(books, claim("5206", "H44010400001202612050000000014")).outcome
    assert after.data is not None and all(row["cum"] == "0.00" for row in after.data["cuminfo"])


@pytest.mark.parametrize(("books_with", "change", "code"), [
    ({}, {"mdtrtarea_admvs": "330100"}, "FILING_OTHER_PLACE"),
    ({"persons": []}, {}, "PERSON_UNKNOWN"),
    ({"filings": []}, {}, "NOT_FILED"),
    ({"persons": [person(death_date=TODAY - timedelta(days=3))]}, {}, "DECEASED"),
])
def test_a_refusal_has_a_code_and_writes_nothing(books_with: dict[str, Any], change: dict[str, str],
                                                  code: str) -> None:
    books = FakeBooks(books_with.get("persons", [person()]), books_with.get("filings", [REFERRAL]))
    out = decide(books, claim().model_copy(update=change)).outcome
    assert (out.infcode, out.err_code) == (-1, code), out.err_msg
    assert out.err_msg and books.ledger == {} and books.acc == {}


def test_1101_finds_the_person_and_5206_refuses_a_stranger(books: FakeBooks) -> None:
    found = decide(books, claim("1101", "H44010400001202612050000000015")).outcome
    assert found.data is not None and found.data["baseinfo"]["psn_no"] == PSN
    assert found.data["insuinfo"][0]["balc"] == "500.00"
    stranger = decide(books, claim("5206", "H44010400001202612050000000016", psn_no="360100000000000099")).outcome
    assert (stranger.infcode, stranger.err_code) == (-1, "PERSON_UNKNOWN")


def test_the_advance_fund_is_charged_and_warns_once_at_each_level(books: FakeBooks) -> None:
    amount = REF.advance.amount("360000", "440000")
    yellow = int(amount * REF.advance.yellow)
    books.advances[("360000", "440000")] = AdvanceState("360000", "440000", amount, yellow - 1)
    d = decide(books, claim(price="600.00"))
    assert d.warning is not None and d.warning.level == "yellow"
    assert books.advances[("360000", "440000")].level == "yellow"
    assert decide(books, claim(msgid="H44010400001202612050000000017", price="600.00")).warning is None
