"""Pure enrolment rules: the GB 11643 citizen ID number, person numbers, masking."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_CHARS = "10X98765432"


class InvalidCertnoError(ValueError):
    """The ID number is not a valid 18-character 公民身份号码."""

    code = "INVALID_CERTNO"


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


# --- enrolment rules (参保规则): waiting periods, newborns, contribution periods ---------------


class EnrollRefusedError(ValueError):
    """A record that breaks an enrolment rule; `code` names the rule for the sender."""

    code = "ENROLMENT_REFUSED"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


@dataclass(frozen=True)
class EnrolmentRules:
    """One pooling region's enrolment policy (configuration: refdata/enrolment_rules.json)."""

    resident_window_from: str  # 集中参保期, MM-DD
    resident_window_to: str
    resident_waiting_days: int  # 居民 enrolling after the window: 待遇等待期
    newborn_days: int  # a newborn enrolled within this many days of birth is covered from birth
    employee_waiting_days: int
    employee_due_day: int  # 职工 monthly contribution due by this day of the month
    resident_grace_days: int  # 居民 annual contribution: days after the window before a reminder

    @staticmethod
    def load(path: Path) -> dict[str, EnrolmentRules]:
        raw = json.loads(path.read_text(encoding="utf-8"))
        base = raw["default"]
        out = {"default": EnrolmentRules(**base)}
        for region, diff in raw.get("regions", {}).items():
            out[region] = EnrolmentRules(**(base | diff))
        return out


RULES_FILE = Path(__file__).parent / "refdata" / "enrolment_rules.json"


def rules_for(table: dict[str, EnrolmentRules], admdvs: str) -> EnrolmentRules:
    return table.get(admdvs) or table["default"]


def _md(year: int, mmdd: str) -> date:
    m, d = (int(x) for x in mmdd.split("-"))
    return date(year, m, d)


def is_resident(insutype: str) -> bool:
    return insutype in ("390", "392")


def resident_window(rules: EnrolmentRules, year: int) -> tuple[date, date]:
    """集中参保期 for coverage year `year`: from the configured day of the year before, to the end day
    (in the year before, or early in `year` when the end day comes before the start day)."""
    start, end = _md(year - 1, rules.resident_window_from), _md(year - 1, rules.resident_window_to)
    return start, end if end >= start else _md(year, rules.resident_window_to)


def benefit_from(rules: EnrolmentRules, insutype: str, brdy: date, begndate: date, enrol_date: date) -> date:
    """待遇享受开始日期 of a new (or re-activated) enrolment.

    居民: a newborn enrolled within `newborn_days` of birth is covered from birth; enrolling by the
    end of the 集中参保期 covers from `begndate`; enrolling later starts the waiting period. 职工: from `begndate` plus the region's (usually zero) waiting days.
    """
    if is_resident(insutype):
        if brdy <= enrol_date and (enrol_date - brdy).days <= rules.newborn_days:
            return brdy
        if enrol_date <= resident_window(rules, begndate.year)[1]:
            return begndate
        return max(begndate, enrol_date + timedelta(days=rules.resident_waiting_days))
    return begndate + timedelta(days=rules.employee_waiting_days)


def period_bounds(period: str) -> tuple[date, date]:
    """`2026-03` → (2026-03-01, 2026-03-31); `2026` → (2026-01-01, 2026-12-31)."""
    if len(period) == 4:
        y = int(period)
        return date(y, 1, 1), date(y, 12, 31)
    y, m = int(period[:4]), int(period[5:7])
    nxt = date(y + (m == 12), m % 12 + 1, 1)
    return date(y, m, 1), nxt - timedelta(days=1)


def effective_paid_through(paid_through: date | None, missing_periods: list[str]) -> date | None:
    """Contributions count only up to the first unpaid period (欠缴 breaks continuity)."""
    if not missing_periods:
        return paid_through
    gap = min(period_bounds(p)[0] for p in missing_periods)
    if paid_through is None or gap <= paid_through:
        return gap - timedelta(days=1)
    return paid_through


def current_period(insutype: str, day: date) -> str:
    """职工 contribute monthly, 居民 yearly."""
    return f"{day.year}" if is_resident(insutype) else f"{day.year}-{day.month:02d}"


def due_date(rules: EnrolmentRules, insutype: str, period: str) -> date:
    start, _ = period_bounds(period)
    if is_resident(insutype):
        return resident_window(rules, start.year)[1] + timedelta(days=rules.resident_grace_days)
    return start.replace(day=min(rules.employee_due_day, 28))


def lapse_due(rules: EnrolmentRules, insutype: str, paid_through: date | None,
              today: date) -> tuple[str, date] | None:
    """(period, due date) when the current period is unpaid past its due day, else None."""
    period = current_period(insutype, today)
    _, end = period_bounds(period)
    if paid_through is not None and paid_through >= end:
        return None
    due = due_date(rules, insutype, period)
    return (period, due) if today > due else None
