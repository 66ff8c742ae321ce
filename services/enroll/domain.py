"""Pure enrolment rules: the GB 11643 citizen ID number, person numbers, masking."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_CHARS = "10X98765432"


class InvalidCertnoError(ValueError):
    """The ID number is not a valid 18-character 公民身份号码."""


@dataclass(frozen=True)
class Identity:
    certno: str
    gend: str  # 1 男, 2 女
    brdy: date


def check_char(first17: str) -> str:
    return CHECK_CHARS[sum(int(d) * w for d, w in zip(first17, WEIGHTS, strict=True)) % 11]


def parse_certno(certno: str, today: date | None = None) -> Identity:
    """Validate a GB 11643-1999 number and derive gender and birth date from it."""
    c = certno.strip().upper()
    if len(c) != 18 or not c[:17].isdigit() or not (c[17].isdigit() or c[17] == "X"):
        raise InvalidCertnoError("身份证号码须为18位：17位数字加1位校验码(数字或X)")
    expected = check_char(c[:17])
    if c[17] != expected:
        raise InvalidCertnoError(f"身份证号码校验码错误：第18位应为 {expected}，实为 {c[17]}")
    try:
        brdy = date(int(c[6:10]), int(c[10:12]), int(c[12:14]))
    except ValueError:
        raise InvalidCertnoError(f"身份证号码中的出生日期 {c[6:14]} 不是有效日期") from None
    if brdy > (today or date.today()):
        raise InvalidCertnoError(f"身份证号码中的出生日期 {brdy} 晚于今天")
    return Identity(certno=c, gend="1" if int(c[16]) % 2 else "2", brdy=brdy)


def mask_certno(certno: str) -> str:
    """For logs and answers: 3601**********123X."""
    return certno[:4] + "*" * 10 + certno[-4:]


def new_psn_no(admdvs: str) -> str:
    """人员编号: issuing region + 12 random digits (≤30 characters)."""
    return f"{admdvs}{secrets.randbelow(10**12):012d}"


def with_check_char(first17: str) -> str:
    """A valid number from its first 17 digits (for generators and tests)."""
    return first17 + check_char(first17)
