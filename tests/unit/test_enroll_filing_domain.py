"""GB 11643 ID numbers and filing validity."""

from __future__ import annotations

from datetime import date

import pytest

from schemas.common import FilingType
from services.enroll.domain import InvalidCertnoError, mask_certno, parse_certno, with_check_char
from services.filing.domain import EnrolmentStatus, FilingRefusedError, add_months, validate_filing


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


OK = EnrolmentStatus("P1", "360100", "1", date(2026, 12, 31))
KNOWN = {"440100", "360100", "360400"}


def file(status: EnrolmentStatus | None = OK, fil_type: FilingType = FilingType.REFERRAL, target: str = "440100",
         end: date | None = None) -> date | None:
    return validate_filing(status, psn_no="P1", fil_type=fil_type, target_admdvs=target, begndate=date(2026, 11, 23),
                           enddate=end, known_regions=KNOWN, today=date(2026, 11, 23))


def test_temporary_filing_lasts_at_least_six_months() -> None:
    assert file() == date(2027, 5, 23)
    with pytest.raises(FilingRefusedError, match="不少于6个月"):
        file(end=date(2027, 1, 1))


def test_long_term_filing_is_open_ended() -> None:
    assert file(fil_type=FilingType.RETIRED_RELOCATED, target="440000") is None


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(status=None), "没有参保记录"),
    (dict(status=EnrolmentStatus("P1", "360100", "4", date(2026, 12, 31))), "非正常参保"),
    (dict(status=EnrolmentStatus("P1", "360100", "1", date(2026, 10, 31))), "缴费中断"),
    (dict(target="360400"), "同省"),
    (dict(target="450100"), "不是已知"),
])
def test_who_may_not_file(kwargs: dict, fragment: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(FilingRefusedError, match=fragment):
        file(**kwargs)


def test_add_months_clamps_month_end() -> None:
    assert add_months(date(2026, 8, 31), 6) == date(2027, 2, 28)
