"""GB 11643 ID numbers and filing validity."""

from __future__ import annotations

from datetime import date

import pytest

from schemas.common import FilingType
from schemas.filing_rules import FilingRules
from schemas.regions import designated_hospitals, pooling_regions, provinces
from services.enroll.domain import (
    RULES_FILE,
    EnrolmentRules,
    InvalidCertnoError,
    benefit_from,
    effective_paid_through,
    lapse_due,
    mask_certno,
    parse_certno,
    rules_for,
    with_check_char,
)
from services.filing.domain import (
    Decision,
    EnrolmentStatus,
    FilingRefusedError,
    add_months,
    check_holding,
    pick_enrolment,
    validate_filing,
)


def test_valid_number_gives_gender_and_birth_date() -> None:
    ident = parse_certno("11010519491231002X")  # the standard's own example
    assert ident.gend == "2" and ident.brdy == date(1949, 12, 31)
    male = parse_certno(with_check_char("36010219800612123"))
    assert male.gend == "1"


@pytest.mark.parametrize("certno,fragment", [
    ("110105194912310021", "校验码错误"),
    ("11010519491231002", "18位"),
    ("1101051949123100AX", "18位"),
    (with_check_char("36010219801332123"), "出生日期"),
    (with_check_char("36010230000101123"), "晚于今天"),
])
def test_invalid_numbers_say_why(certno: str, fragment: str) -> None:
    with pytest.raises(InvalidCertnoError, match=fragment):
        parse_certno(certno, today=date(2026, 11, 23))


def test_mask() -> None:
    assert mask_certno("11010519491231002X") == "1101**********002X"


TODAY = date(2026, 11, 23)
OK = EnrolmentStatus("P1", "360100", "310", "1", date(2026, 12, 31))
RULES = FilingRules.load()
H_REFERRER = designated_hospitals()["H36010200001"]  # 江西省人民医院, level 3, 南昌


def file(fil_type: FilingType = FilingType.REFERRAL, target: str = "440100", begn: date = TODAY,
         end: date | None = None, commitment: bool = False, materials: list[str] | None = None,
         referral: str | None = "H36010200001", status: EnrolmentStatus = OK, changing: bool = False) -> Decision:
    return validate_filing(status, fil_type=fil_type, target_admdvs=target, begndate=begn, enddate=end,
                           commitment=commitment, materials=materials or [],
                           referral_hospital=designated_hospitals().get(referral) if referral else None,
                           referral_code=referral, rules=RULES, known_regions=set(pooling_regions()),
                           known_provinces=set(provinces()), today=TODAY, changing=changing)


def test_temporary_filing_lasts_at_least_six_months() -> None:
    assert file().enddate == date(2027, 5, 23)
    assert file(FilingType.OTHER_TEMP).enddate == date(2027, 5, 23)
    with pytest.raises(FilingRefusedError, match="不少于6个月") as e:
        file(end=date(2027, 1, 1))
    assert e.value.code == "VALIDITY_TOO_SHORT"


def test_emergency_filing_covers_the_episode() -> None:
    assert file(FilingType.EMERGENCY, referral=None).enddate == date(2026, 12, 23)  # 30 days, configured


def test_long_term_filing_is_open_ended_with_proof_or_commitment() -> None:
    assert file(FilingType.RETIRED_RELOCATED, "440000", commitment=True).enddate is None
    assert file(FilingType.LONG_TERM_RESIDENT, "440000", materials=["居住证"]).enddate is None
    with pytest.raises(FilingRefusedError, match="承诺制") as e:
        file(FilingType.WORKING_REMOTE, "440000", materials=["居住证"])
    assert e.value.code == "MATERIALS_MISSING"


def test_late_filing_is_accepted_with_the_manual_reimbursement_notice() -> None:
    d = file(begn=date(2026, 11, 1))
    assert d.late and "手工报销" in (d.notice or "")
    with pytest.raises(FilingRefusedError) as e:
        file(begn=date(2026, 1, 1))
    assert e.value.code == "LATE_FILING_TOO_LATE" and "手工报销" in str(e.value)


def test_a_change_keeps_the_start_date_and_is_not_late_again() -> None:
    # filed yesterday for the minimum six months, its target changed today: still valid, not 补办
    d = file(FilingType.OTHER_TEMP, begn=date(2026, 11, 22), end=date(2027, 5, 22), changing=True)
    assert d.enddate == date(2027, 5, 22) and not d.late and "手工报销" not in (d.notice or "")
    d = file(FilingType.OTHER_TEMP, begn=date(2026, 1, 1), end=date(2027, 1, 1), changing=True)
    assert d.enddate == date(2027, 1, 1)  # begun long ago: a change is not a late filing


def test_no_filing_pair_is_said_in_the_notice() -> None:
    zj = EnrolmentStatus("P1", "330100", "310", "1", date(2026, 12, 31))
    assert "无需备案" in (file(FilingType.OTHER_TEMP, "310000", status=zj).notice or "")


@pytest.mark.parametrize("kwargs,code", [
    (dict(referral=None), "REFERRAL_MISSING"),
    (dict(referral="H44010400001"), "REFERRAL_INVALID"),  # not a hospital of the insured region
    (dict(referral="H36012100003"), "REFERRAL_INVALID"),  # a level-1 hospital may not refer
    (dict(target="360400"), None),  # intra-province filing is allowed (some provinces require it)
    (dict(target="360100"), "SAME_REGION"),
    (dict(target="360000"), "SAME_REGION"),
    (dict(target="450199"), "UNKNOWN_TARGET"),
    (dict(fil_type=FilingType.LONG_TERM_RESIDENT, target="440000", commitment=True, end=date(2027, 1, 1)),
     "ENDDATE_NOT_ALLOWED"),
])
def test_filing_refusals_have_codes(kwargs: dict, code: str | None) -> None:  # type: ignore[type-arg]
    if code is None:
        assert file(**kwargs).enddate
        return
    with pytest.raises(FilingRefusedError) as e:
        file(**kwargs)
    assert e.value.code == code


@pytest.mark.parametrize("statuses,code", [
    ([], "NOT_ENROLLED"),
    ([EnrolmentStatus("P1", "360100", "310", "4", date(2026, 12, 31))], "NOT_ACTIVE"),
    ([EnrolmentStatus("P1", "360100", "310", "1", date(2026, 10, 31))], "CONTRIBUTION_LAPSED"),
    ([EnrolmentStatus("P1", "360100", "310", "1", date(2026, 12, 31), death_date=date(2026, 11, 1))], "DECEASED"),
    ([OK, EnrolmentStatus("P1", "440100", "310", "1", date(2026, 12, 31))], "AMBIGUOUS_ENROLMENT"),
])
def test_who_may_not_file(statuses: list[EnrolmentStatus], code: str) -> None:
    with pytest.raises(FilingRefusedError) as e:
        pick_enrolment(statuses, "P1", None, TODAY)
    assert e.value.code == code


def test_the_named_region_resolves_two_enrolments() -> None:
    two = [OK, EnrolmentStatus("P1", "440100", "310", "1", date(2026, 12, 31))]
    assert pick_enrolment(two, "P1", "440100", TODAY).insuplc_admdvs == "440100"


def test_holding_period_for_long_term_filings() -> None:
    with pytest.raises(FilingRefusedError, match="2027-05-01") as e:
        check_holding(FilingType.RETIRED_RELOCATED, date(2026, 11, 1), RULES, TODAY, "撤销")
    assert e.value.code == "HOLDING_PERIOD"
    check_holding(FilingType.RETIRED_RELOCATED, date(2026, 5, 1), RULES, TODAY, "撤销")
    check_holding(FilingType.OTHER_TEMP, date(2026, 11, 1), RULES, TODAY, "撤销")  # temporary: any time


def test_holding_period_is_at_most_six_months() -> None:
    with pytest.raises(ValueError, match="不超过6个月"):
        FilingRules(min_holding_months=7)


def test_add_months_clamps_month_end() -> None:
    assert add_months(date(2026, 8, 31), 6) == date(2027, 2, 28)


# --- enrolment rules ---------------------------------------------------------------------------

ER = EnrolmentRules.load(RULES_FILE)


def test_resident_benefit_start_window_late_and_newborn() -> None:
    nc = rules_for(ER, "360100")
    adult = date(1980, 1, 1)
    # enrolled in the 集中参保期 for next year: covered from 1 January
    assert benefit_from(nc, "390", adult, date(2027, 1, 1), date(2026, 10, 10)) == date(2027, 1, 1)
    # enrolled late: the 90-day waiting period
    assert benefit_from(nc, "390", adult, date(2026, 3, 1), date(2026, 3, 1)) == date(2026, 5, 30)
    # 广州 configures 60 days
    assert benefit_from(rules_for(ER, "440100"), "390", adult, date(2026, 3, 1), date(2026, 3, 1)) == date(2026, 4, 30)
    # a newborn enrolled within 90 days of birth is covered from birth
    born = date(2026, 9, 1)
    assert benefit_from(nc, "390", born, date(2026, 11, 20), date(2026, 11, 20)) == born
    # … but not after 90 days
    assert benefit_from(nc, "390", born, date(2026, 12, 20), date(2026, 12, 20)) == date(2027, 3, 20)
    # 职工: from the enrolment date
    assert benefit_from(nc, "310", adult, date(2026, 3, 1), date(2026, 3, 5)) == date(2026, 3, 1)


def test_missing_periods_break_continuity() -> None:
    assert effective_paid_through(date(2026, 12, 31), []) == date(2026, 12, 31)
    assert effective_paid_through(date(2026, 12, 31), ["2026-09", "2026-10"]) == date(2026, 8, 31)
    assert effective_paid_through(date(2026, 6, 30), ["2026-09"]) == date(2026, 6, 30)
    assert effective_paid_through(None, ["2026"]) == date(2025, 12, 31)


def test_lapse_due_dates() -> None:
    nc = rules_for(ER, "360100")
    assert lapse_due(nc, "310", date(2026, 10, 31), date(2026, 11, 16)) == ("2026-11", date(2026, 11, 15))
    assert lapse_due(nc, "310", date(2026, 10, 31), date(2026, 11, 15)) is None  # not yet due
    assert lapse_due(nc, "310", date(2026, 11, 30), date(2026, 11, 16)) is None  # paid
    assert lapse_due(nc, "390", date(2025, 12, 31), date(2026, 1, 5)) == ("2026", date(2025, 12, 31))
    assert lapse_due(rules_for(ER, "320100"), "310", date(2026, 10, 31), date(2026, 11, 16)) is None  # due 20th
