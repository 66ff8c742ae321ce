"""Pure filing rules (异地就医备案): who may file, for where, for how long."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from schemas.common import FilingType

MIN_TEMP_MONTHS = 6  # 临时外出: valid at least six months (reference §2.3)


class FilingRefusedError(ValueError):
    """The filing cannot be accepted; the message says why and what to do."""


@dataclass(frozen=True)
class EnrolmentStatus:
    psn_no: str
    insuplc_admdvs: str
    psn_insu_stas: str
    paid_through: date | None


def add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    for day in (d.day, 30, 29, 28):
        try:
            return date(year, month, day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def validate_filing(status: EnrolmentStatus | None, *, psn_no: str, fil_type: FilingType,
                    target_admdvs: str, begndate: date, enddate: date | None,
                    known_regions: set[str], today: date) -> date | None:
    """Check a filing request; returns the end date it will have (None: long-term)."""
    if status is None:
        raise FilingRefusedError(f"人员 {psn_no} 没有参保记录，不能办理异地就医备案；请先参保登记")
    if status.psn_insu_stas != "1":
        raise FilingRefusedError(f"人员 {psn_no} 参保状态为 {status.psn_insu_stas}（非正常参保），不能备案")
    if status.paid_through is None or status.paid_through < today:
        raise FilingRefusedError(
            f"人员 {psn_no} 医保缴费中断（已缴至 {status.paid_through or '无'}），请先在参保地补缴后再备案")
    province_target = target_admdvs.endswith("0000")
    if target_admdvs not in known_regions and not province_target:
        raise FilingRefusedError(f"备案地 {target_admdvs} 不是已知的统筹区或省份代码")
    if target_admdvs[:2] == status.insuplc_admdvs[:2]:
        raise FilingRefusedError(
            f"备案地 {target_admdvs} 与参保地 {status.insuplc_admdvs} 同省：跨省备案须选择外省的城市或省份")
    if fil_type.long_term:
        if enddate is not None:
            raise FilingRefusedError("长期居住类备案长期有效，不填写 enddate")
        return None
    end = enddate or add_months(begndate, MIN_TEMP_MONTHS)
    if end < add_months(begndate, MIN_TEMP_MONTHS) and fil_type is not FilingType.EMERGENCY:
        raise FilingRefusedError(f"临时外出就医备案有效期不少于{MIN_TEMP_MONTHS}个月：enddate 至少为 "
                                 f"{add_months(begndate, MIN_TEMP_MONTHS)}")
    return end
