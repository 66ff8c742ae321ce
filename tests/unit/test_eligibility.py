"""The insured city's eligibility decision: one row per rule, each with its exact decision and reason.

Rules from reference §2.3–2.5 and issue 4: status, waiting period, newborns, voucher activation,
death, and the filing (type, place, validity, deemed-filed emergency, late filing, per-pair
no-filing rules from schemas/refdata/filing_rules.json).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any

import pytest

from schemas.common import FilingType
from schemas.filing_rules import FilingRules
from services.settle.domain import (
    FilingState,
    PersonState,
    SettlementRefusedError,
    check_eligibility,
)

DAY = date(2026, 11, 23)
RULES = FilingRules.load()
P = PersonState(psn_no="P1", psn_name="n", gend="1", insuplc_admdvs="360100", insutype="310", psn_type="11",
                psn_insu_stas="1", paid_through=date(2026, 12, 31), voucher_active=True,
                begndate=date(2020, 1, 1), benefit_from=date(2020, 1, 1))
GZ = P.__class__(**{**P.__dict__, "insuplc_admdvs": "440100"})  # insured in 广州
ZJ = P.__class__(**{**P.__dict__, "insuplc_admdvs": "330100"})  # insured in 杭州
REF = FilingState("F1", FilingType.REFERRAL, "440100", date(2026, 6, 1), date(2026, 12, 1), "active")
LONG = FilingState("F2", FilingType.LONG_TERM_RESIDENT, "440000", date(2025, 1, 1), None, "active")


def p(**kw: Any) -> PersonState:
    return replace(P, **kw)


def f(**kw: Any) -> FilingState:
    return replace(REF, **kw)


def decide(enrolments: list[PersonState] | None = None, filings: list[FilingState] | None = None, *,
           insuplc: str = "360100", insutype: str = "310", treat: str = "440100", med_type: str = "11",
           cert: str = "02", day: date = DAY) -> FilingType | None:
    e = check_eligibility([P] if enrolments is None else enrolments, [REF] if filings is None else filings,
                          psn_no="P1", insuplc=insuplc, insutype=insutype, treat=treat, med_type=med_type,
                          cert_type=cert, day=day, rules=RULES)
    return e.filing


REFUSED = [
    ("no enrolment at all", dict(enrolments=[]), "PERSON_UNKNOWN"),
    ("enrolled elsewhere only", dict(enrolments=[GZ]), "PERSON_UNKNOWN"),
    ("other insutype", dict(insutype="390"), "INSUTYPE_MISMATCH"),
    ("died before treatment", dict(enrolments=[p(death_date=date(2026, 11, 1))]), "DECEASED"),
    ("status 0 未参保", dict(enrolments=[p(psn_insu_stas="0")]), "NOT_ENROLLED"),
    ("status 2 暂停", dict(enrolments=[p(psn_insu_stas="2")]), "INSURANCE_SUSPENDED"),
    ("status 3 无效", dict(enrolments=[p(psn_insu_stas="3")]), "ENROLMENT_INVALID"),
    ("status 4 终止 (transferred out)", dict(enrolments=[p(psn_insu_stas="4")]), "INSURANCE_TERMINATED"),
    ("enrolment starts later", dict(enrolments=[p(begndate=date(2026, 12, 1), benefit_from=date(2026, 12, 1))]),
     "NOT_YET_INSURED"),
    ("居民 late enrolment: waiting period",
     dict(enrolments=[p(insutype="390", begndate=date(2026, 10, 17), benefit_from=date(2027, 1, 15))],
          insutype="390"), "WAITING_PERIOD"),
    ("contributions lapsed", dict(enrolments=[p(paid_through=date(2026, 10, 31))]), "CONTRIBUTION_LAPSED"),
    ("never paid", dict(enrolments=[p(paid_through=None)]), "CONTRIBUTION_LAPSED"),
    ("e-voucher not activated", dict(enrolments=[p(voucher_active=False)], cert="01"), "VOUCHER_INACTIVE"),
    ("cross-province, no filing", dict(filings=[]), "NOT_FILED"),
    ("filed to another city", dict(treat="310000"), "FILING_OTHER_PLACE"),
    ("filing past its end date", dict(filings=[f(enddate=date(2026, 11, 1))]), "FILING_EXPIRED"),
    ("filing expired by the timer", dict(filings=[f(status="expired")]), "FILING_EXPIRED"),
    ("filing cancelled", dict(filings=[f(status="cancelled")]), "FILING_CANCELLED"),
    ("filing starts after treatment (补办 too late)", dict(filings=[f(begndate=date(2026, 12, 1))]),
     "FILING_AFTER_TREATMENT"),
    ("广东 requires filing inside the province", dict(enrolments=[GZ], insuplc="440100", treat="440300", filings=[]),
     "NOT_FILED"),
]


@pytest.mark.parametrize("case,kwargs,code", REFUSED, ids=[c for c, _, _ in REFUSED])
def test_refused(case: str, kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(SettlementRefusedError) as e:
        decide(**kwargs)
    assert e.value.code == code, e.value.message
    assert "P1" in e.value.message or "凭证" in e.value.message  # a sentence for the desk about this person


ACCEPTED = [
    ("referral covers place and date", dict(), FilingType.REFERRAL),
    ("急诊 deemed filed", dict(filings=[], med_type="13"), FilingType.EMERGENCY),
    ("急诊转住院 deemed filed", dict(filings=[], med_type="24"), FilingType.EMERGENCY),
    ("long-term filing to the whole province", dict(filings=[LONG], treat="440300"), FilingType.LONG_TERM_RESIDENT),
    ("the most favourable filing wins", dict(filings=[REF, LONG]), FilingType.LONG_TERM_RESIDENT),
    ("late filing back-dated to admission (补办 before discharge)",
     dict(filings=[f(begndate=DAY)]), FilingType.REFERRAL),
    ("intra-province 江西: no filing needed", dict(filings=[], treat="360400"), None),
    ("local", dict(filings=[], treat="360100"), None),
    ("双向: long-term filer treated back home", dict(filings=[LONG], treat="360100"), None),
    ("voucher inactive but ID card used", dict(enrolments=[p(voucher_active=False)], cert="02"), FilingType.REFERRAL),
    ("浙江→上海 pair needs no filing (deemed 其他临时外出)",
     dict(enrolments=[ZJ], insuplc="330100", treat="310000", filings=[]), FilingType.OTHER_TEMP),
    ("广东 intra-province with a filing: no cross-province reduction",
     dict(enrolments=[GZ], insuplc="440100", treat="440300",
          filings=[f(target_admdvs="440300")]), None),
    ("treated on the day of death", dict(enrolments=[p(death_date=DAY)]), FilingType.REFERRAL),
    ("newborn covered from birth, before the enrolment date",
     dict(enrolments=[p(insutype="390", begndate=date(2026, 12, 1), benefit_from=date(2026, 11, 2))],
          insutype="390"), FilingType.REFERRAL),
    ("居民 after the waiting period", dict(enrolments=[p(insutype="390", begndate=date(2026, 6, 1),
                                                        benefit_from=date(2026, 8, 30))], insutype="390"),
     FilingType.REFERRAL),
]


@pytest.mark.parametrize("case,kwargs,filing", ACCEPTED, ids=[c for c, _, _ in ACCEPTED])
def test_accepted(case: str, kwargs: dict[str, Any], filing: FilingType | None) -> None:
    assert decide(**kwargs) == filing


def test_the_table_is_long_enough() -> None:
    assert len(REFUSED) + len(ACCEPTED) >= 20
    assert len({code for _, _, code in REFUSED}) >= 15  # distinct reasons, not one code reused
