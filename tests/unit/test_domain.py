"""Routing, the catalogue split and eligibility at the insured city."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from schemas.events import FeeLine, HopAction
from services.settle.domain import (
    CatalogueItem,
    RouteKind,
    SettlementRefusedError,
    age_on,
    apply_person_restrictions,
    check_hospital,
    mirror,
    national_row,
    plan_route,
    route_kind,
    split_line,
)
from services.settle.refdata import Reference

REF = Reference.load()
D = Decimal
DAY = date(2026, 11, 23)


@pytest.mark.parametrize("treat,insured,kind,legs", [
    ("360100", "360100", RouteKind.LOCAL, 3),
    ("360400", "360100", RouteKind.INTRA_PROVINCE, 5),
    ("440100", "360100", RouteKind.CROSS_PROVINCE, 9),
])
def test_route_shapes(treat: str, insured: str, kind: RouteKind, legs: int) -> None:
    route = plan_route(treat, insured)
    assert route_kind(treat, insured) is kind
    assert len(route) == legs
    assert route[0].action is HopAction.SPLIT and route[0].admdvs == treat
    assert route[-1].action is HopAction.FINISH and route[-1].admdvs == treat
    mid = route[len(route) // 2]
    assert mid.action is HopAction.COMPUTE and mid.admdvs == insured
    for i in range(len(route)):  # the way back mirrors the way out
        assert (route[i].level, route[i].admdvs) == (route[mirror(route, i)].level, route[mirror(route, i)].admdvs)


def test_cross_province_route_passes_both_provinces_and_the_hub() -> None:
    hops = [(s.level.value, s.admdvs) for s in plan_route("440100", "360100")]
    assert hops[:5] == [("city", "440100"), ("province", "440000"), ("national", "360000"),
                        ("province", "360000"), ("city", "360100")]


def item(lv: str, prop: str = "0", cap: str | None = None, gend: str | None = None) -> CatalogueItem:
    return CatalogueItem("C", "n", lv, D(prop), D(cap) if cap else None, gend, "09")


def fee(total: str, pric: str, cnt: str = "1") -> FeeLine:
    return FeeLine(feedetl_sn="1", med_list_codg="C", cnt=D(cnt), pric=D(pric), det_item_fee_sumamt=D(total))


def test_split_jia_yi_bing_and_overlimit() -> None:
    a = split_line(fee("100", "100"), item("01"))
    assert (a.inscp_scp_amt, a.preselfpay_amt, a.fulamt_ownpay_amt) == (D("100.00"), 0, 0)
    b = split_line(fee("120", "4", "30"), item("02", "0.10", cap="3.80"))
    assert (b.overlmt_amt, b.preselfpay_amt, b.inscp_scp_amt) == (D("6.00"), D("11.40"), D("102.60"))
    c = split_line(fee("37", "18.5", "2"), item("03", "1"))
    assert c.fulamt_ownpay_amt == D("37.00") and c.inscp_scp_amt == 0
    unknown = split_line(fee("50", "50"), None)
    assert unknown.chrgitm_lv == "03" and unknown.fulamt_ownpay_amt == D("50.00")
    for s in (a, b, c, unknown):
        assert s.fulamt_ownpay_amt + s.overlmt_amt + s.preselfpay_amt + s.inscp_scp_amt == s.det_item_fee_sumamt


def test_national_precision_unit_price_to_six_decimals_count_to_four() -> None:
    """A HIS sends pric with up to six decimals and cnt with four (national field formats); the
    line's amount stays at the fen and must be cnt × pric rounded half up, a fen either way."""
    line = FeeLine.model_validate({"feedetl_sn": "7", "med_list_codg": "C", "cnt": "28.0000", "pric": 3.7857,
                                   "det_item_fee_sumamt": "106.00"})  # 105.9996 → 106.00
    assert (line.cnt, line.pric) == (D("28"), D("3.7857"))
    split = split_line(line, item("02", "0.10", cap="3.50"))
    row = national_row(split, line, item("02", "0.10", cap="3.50"))  # the 2204/2301 answer's line
    assert (row["cnt"], row["pric"], row["memo"], row["lmt_used_flag"], row["med_chrgitm_type"]) == \
        ("28.0000", "3.7857", "", "0", "09")
    assert split.overlmt_amt == D("8.00")  # (3.7857 − 3.50) × 28 = 7.9996, to the fen
    assert split.fulamt_ownpay_amt + split.overlmt_amt + split.preselfpay_amt + split.inscp_scp_amt == D("106.00")
    FeeLine.model_validate({"feedetl_sn": "8", "med_list_codg": "C", "cnt": "0.3333", "pric": "12.345678",
                            "det_item_fee_sumamt": "4.11"})  # 4.1148…
    with pytest.raises(ValueError, match="decimal places"):
        FeeLine.model_validate({"feedetl_sn": "9", "med_list_codg": "C", "cnt": 1, "pric": "1.2345678",
                                "det_item_fee_sumamt": "1.23"})
    with pytest.raises(ValueError, match="decimal places"):
        FeeLine.model_validate({"feedetl_sn": "9", "med_list_codg": "C", "cnt": "1.00001", "pric": "1",
                                "det_item_fee_sumamt": "1.00"})
    with pytest.raises(ValueError, match="is not cnt × pric"):
        FeeLine.model_validate({"feedetl_sn": "9", "med_list_codg": "C", "cnt": 28, "pric": "3.7857",
                                "det_item_fee_sumamt": "105.98"})


def test_gender_restricted_item_falls_to_self_pay_for_the_other_gender() -> None:
    s = split_line(fee("150", "150"), item("01", gend="2"))
    assert apply_person_restrictions([s], "2")[0].inscp_scp_amt == D("150.00")
    male = apply_person_restrictions([s], "1")[0]
    assert male.fulamt_ownpay_amt == D("150.00") and male.inscp_scp_amt == 0
    row = national_row(male, fee("150", "150"), item("01", gend="2"))
    assert (row["lmt_used_flag"], row["memo"]) == ("1", "限女性使用")  # the national flag and 备注


def test_hospital_checks() -> None:
    enabled = REF.hospitals["H44010400001"]
    assert check_hospital(enabled, enabled.fixmedins_code, "440100", RouteKind.CROSS_PROVINCE) is enabled
    with pytest.raises(SettlementRefusedError) as e:
        check_hospital(None, "H44010499999", "440100", RouteKind.CROSS_PROVINCE)
    assert e.value.code == "HOSPITAL_UNKNOWN"
    off = next(h for h in REF.hospitals.values() if not h.cross_province_enabled)
    with pytest.raises(SettlementRefusedError) as e:
        check_hospital(off, off.fixmedins_code, off.admdvs, RouteKind.CROSS_PROVINCE)
    assert e.value.code == "HOSPITAL_NOT_ENABLED"
    assert check_hospital(off, off.fixmedins_code, off.admdvs, RouteKind.LOCAL) is off


def restricted(**kw: object) -> CatalogueItem:
    return CatalogueItem("C", "n", "02", D("0.10"), None, None, "09", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw,hosp_lv,med_type,reason", [
    (dict(lmt_hosp_lv="3"), "2", "11", "限3级及以上医院使用"),
    (dict(lmt_hosp_lv="3"), "3", "11", None),
    (dict(lmt_scope="ip"), "3", "11", "限住院使用"),
    (dict(lmt_scope="ip"), "3", "21", None),
    (dict(lmt_scope="op"), "3", "21", "限门诊使用"),
])
def test_treatment_city_restrictions(kw: dict[str, object], hosp_lv: str, med_type: str, reason: str | None) -> None:
    s = split_line(fee("100", "100"), restricted(**kw), hosp_lv, med_type)
    assert s.lmt_reason == reason
    assert s.fulamt_ownpay_amt == (D("100.00") if reason else 0)
    assert s.fulamt_ownpay_amt + s.overlmt_amt + s.preselfpay_amt + s.inscp_scp_amt == s.det_item_fee_sumamt


@pytest.mark.parametrize("kw,age,reason", [
    (dict(lmt_age_max=14), 15, "限14岁及以下使用"),
    (dict(lmt_age_max=14), 14, None),
    (dict(lmt_age_min=60), 59, "限60岁及以上使用"),
    (dict(lmt_age_min=60), 60, None),
])
def test_insured_city_age_restrictions(kw: dict[str, object], age: int, reason: str | None) -> None:
    (s,) = apply_person_restrictions([split_line(fee("80", "80"), restricted(**kw))], "1", age)
    assert s.lmt_reason == reason and (s.inscp_scp_amt == 0) == bool(reason)


def test_age_counts_whole_years() -> None:
    assert age_on(date(2012, 11, 24), date(2026, 11, 23)) == 13
    assert age_on(date(2012, 11, 23), date(2026, 11, 23)) == 14


def test_the_catalogue_is_national_sized_and_well_formed() -> None:
    items = REF.catalogue.values()
    assert len(items) >= 2000
    drugs = [i for i in items if i.code[0] in "XZ" and len(i.code) == 23]
    services = [i for i in items if i.code.startswith("00") and len(i.code) == 15]
    consumables = [i for i in items if i.code[0] == "C" and len(i.code) == 20]
    assert len(drugs) > 1000 and len(services) > 300 and len(consumables) > 100
    assert {i.chrgitm_lv for i in items} == {"01", "02", "03"}
    assert any(i.lmt_hosp_lv for i in items) and any(i.lmt_scope for i in items)
    assert any(i.lmt_age_min or i.lmt_age_max for i in items) and any(i.lmt_gend for i in items)
