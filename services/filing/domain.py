"""Pure filing rules (异地就医备案, reference §2.3–2.5): who may file, for where, for how long.

No I/O: functions take state and the configured `FilingRules` and return values or raise
`FilingRefusedError` with a machine code and a sentence that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from schemas.common import FilingType
from schemas.filing_rules import FilingRules

STATUS_TEXT = {"0": "未参保", "2": "暂停参保", "3": "参保无效", "4": "终止参保"}


class FilingRefusedError(ValueError):
    """The filing cannot be accepted; the message says why and what to do."""

    def __init__(self, message: str, code: str = "FILING_REFUSED") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class EnrolmentStatus:
    psn_no: str
    insuplc_admdvs: str
    insutype: str
    psn_insu_stas: str
    paid_through: date | None
    death_date: date | None = None


@dataclass(frozen=True)
class Decision:
    enddate: date | None
    late: bool
    notice: str | None


def add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    for day in (d.day, 30, 29, 28):
        try:
            return date(year, month, day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def pick_enrolment(statuses: list[EnrolmentStatus], psn_no: str, insuplc: str | None,
                   today: date) -> EnrolmentStatus:
    """The enrolment a filing belongs to: active, paid, one region (or the one named)."""
    cands = [s for s in statuses if insuplc is None or s.insuplc_admdvs == insuplc]
    if not cands:
        where = f"在 {insuplc} " if insuplc else ""
        raise FilingRefusedError(f"人员 {psn_no} {where}没有参保记录，不能办理异地就医备案；请先参保登记", "NOT_ENROLLED")
    if any(s.death_date and s.death_date <= today for s in cands):
        raise FilingRefusedError(f"人员 {psn_no} 已登记死亡，不能备案", "DECEASED")
    active = [s for s in cands if s.psn_insu_stas == "1"]
    if not active:
        stas = cands[0].psn_insu_stas
        raise FilingRefusedError(f"人员 {psn_no} 参保状态为 {stas}（{STATUS_TEXT.get(stas, '非正常参保')}），"
                                 "只有正常参保的人员才能备案", "NOT_ACTIVE")
    regions = sorted({s.insuplc_admdvs for s in active})
    if len(regions) > 1:
        raise FilingRefusedError(f"人员 {psn_no} 同时在 {'、'.join(regions)} 正常参保：请在 insuplc_admdvs 中指明参保地，"
                                 "并尽快处理重复参保", "AMBIGUOUS_ENROLMENT")
    s = min(active, key=lambda x: x.insutype not in ("310", "390"))
    if s.paid_through is None or s.paid_through < today:
        raise FilingRefusedError(
            f"人员 {psn_no} 医保缴费中断（已缴至 {s.paid_through or '无'}），请先在参保地补缴后再备案", "CONTRIBUTION_LAPSED")
    return s


def validate_filing(status: EnrolmentStatus, *, fil_type: FilingType, target_admdvs: str, begndate: date,
                    enddate: date | None, commitment: bool, materials: list[str],
                    referral_hospital: dict[str, object] | None, referral_code: str | None,
                    rules: FilingRules, known_regions: set[str], known_provinces: set[str],
                    today: date, changing: bool = False) -> Decision:
    """Check a filing request against the rules; returns its end date (None: long-term) and notices.

    `changing`: the filing exists and keeps its start date; whether it was filed late was judged
    when it was filed, not again on each change."""
    insured = status.insuplc_admdvs
    if target_admdvs not in known_regions and target_admdvs not in known_provinces:
        raise FilingRefusedError(f"备案地 {target_admdvs} 不是已知的统筹区或省份代码", "UNKNOWN_TARGET")
    if target_admdvs == insured or (target_admdvs.endswith("0000") and target_admdvs[:2] == insured[:2]):
        raise FilingRefusedError(f"备案地 {target_admdvs} 与参保地 {insured} 相同：在参保地就医无需备案", "SAME_REGION")
    notices: list[str] = []
    if not rules.filing_required(insured, target_admdvs):
        notices.append(f"{insured[:2]}0000 参保人员到 {target_admdvs[:2]}0000 就医无需备案即可直接结算；本备案仍已登记")
    late = begndate < today and not changing
    if late:
        if (today - begndate).days > rules.late_filing_max_days:
            raise FilingRefusedError(
                f"补办备案须在就医开始后 {rules.late_filing_max_days} 天内办理（开始日期 {begndate}）；"
                f"已出院结算的费用请持票据回参保地 {insured} 手工报销", "LATE_FILING_TOO_LATE")
        notices.append(f"补办备案：出院结算前办理的，定点医院可直接结算；已经全额自费出院结算的费用，"
                       f"请持票据回参保地 {insured} 手工报销")
    if fil_type.long_term:
        if enddate is not None:
            raise FilingRefusedError("长期居住类备案长期有效，不填写 enddate", "ENDDATE_NOT_ALLOWED")
        allowed = rules.long_term_materials.get(fil_type.value, [])
        if not commitment and not set(materials) & set(allowed):
            raise FilingRefusedError(f"{fil_type.value} 备案须提交 {' / '.join(allowed)} 之一，"
                                     "或选择承诺制 (commitment=true) 以个人承诺代替证明材料", "MATERIALS_MISSING")
        return Decision(None, late, "；".join(notices) or None)
    if fil_type is FilingType.REFERRAL:
        _check_referral(referral_hospital, referral_code, insured, rules)
    if fil_type is FilingType.EMERGENCY:
        end = enddate or begndate + timedelta(days=rules.emergency_valid_days)
    else:
        minimum = add_months(begndate, rules.min_temp_months)
        end = enddate or minimum
        if end < minimum:
            raise FilingRefusedError(f"临时外出就医备案有效期不少于{rules.min_temp_months}个月：enddate 至少为 {minimum}",
                                     "VALIDITY_TOO_SHORT")
    if end < begndate:
        raise FilingRefusedError(f"enddate {end} 早于 begndate {begndate}", "VALIDITY_TOO_SHORT")
    return Decision(end, late, "；".join(notices) or None)


def _check_referral(h: dict[str, object] | None, code: str | None, insured: str, rules: FilingRules) -> None:
    if not code:
        raise FilingRefusedError("异地转诊备案须填写开具转诊证明的医院 referral_fixmedins_code", "REFERRAL_MISSING")
    if h is None or h.get("admdvs") != insured:
        raise FilingRefusedError(f"转诊证明须由参保地 {insured} 的定点医疗机构开具，{code} 不是", "REFERRAL_INVALID")
    if str(h.get("hosp_lv", "0")) < rules.referral_min_hosp_lv:
        raise FilingRefusedError(f"{h.get('fixmedins_name')}({code}) 为{h.get('hosp_lv')}级医院：参保地规定转诊须由"
                                 f"{rules.referral_min_hosp_lv}级及以上定点医院开具", "REFERRAL_INVALID")


def check_holding(fil_type: FilingType, begndate: date, rules: FilingRules, today: date, action: str) -> None:
    """A long-term filing may be changed or cancelled only after the minimum holding period."""
    if not fil_type.long_term or rules.min_holding_months == 0:
        return
    free = add_months(begndate, rules.min_holding_months)
    if today < free:
        raise FilingRefusedError(f"长期居住类备案须至少保持 {rules.min_holding_months} 个月，{free} 起方可{action}",
                                 "HOLDING_PERIOD")
