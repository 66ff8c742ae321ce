"""Pure settlement rules: the route through the hops, the catalogue split, and eligibility.

就医地目录 (the treatment city splits each line), 参保地政策 (the insured city decides),
就医地管理. No I/O here: functions take state and return values or raise a named error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

import orjson

from schemas.common import FilingType
from schemas.events import FeeLine, FeeSplit, HopAction, HopLevel, RouteStep
from schemas.filing_rules import FilingRules

FEN = Decimal("0.01")
EMERGENCY_MED_TYPES = frozenset({"13", "24"})  # 急诊, 急诊转住院: deemed filed


class RouteKind(StrEnum):
    LOCAL = "local"  # 本地: same pooling region
    INTRA_PROVINCE = "intra_province"  # 省内异地
    CROSS_PROVINCE = "cross_province"  # 跨省异地


def province_of(admdvs: str) -> str:
    return admdvs[:2] + "0000"


def route_kind(treat: str, insured: str) -> RouteKind:
    if treat == insured:
        return RouteKind.LOCAL
    if treat[:2] == insured[:2]:
        return RouteKind.INTRA_PROVINCE
    return RouteKind.CROSS_PROVINCE


def plan_route(treat: str, insured: str) -> list[RouteStep]:
    """hospital → city(treat) → … → city(insured) computes → … → city(treat) answers."""
    kind = route_kind(treat, insured)
    out = [RouteStep(level=HopLevel.CITY, admdvs=treat, action=HopAction.SPLIT)]
    if kind is not RouteKind.LOCAL:
        out.append(RouteStep(level=HopLevel.PROVINCE, admdvs=province_of(treat), action=HopAction.RELAY))
    if kind is RouteKind.CROSS_PROVINCE:
        out.append(RouteStep(level=HopLevel.NATIONAL, admdvs=province_of(insured), action=HopAction.RELAY))
        out.append(RouteStep(level=HopLevel.PROVINCE, admdvs=province_of(insured), action=HopAction.RELAY))
    back = [RouteStep(level=s.level, admdvs=s.admdvs, action=HopAction.RELAY) for s in reversed(out[1:])]
    compute = RouteStep(level=HopLevel.CITY, admdvs=insured, action=HopAction.COMPUTE)
    finish = RouteStep(level=HopLevel.CITY, admdvs=treat, action=HopAction.FINISH)
    return [*out, compute, *back, finish]


def mirror(route: list[RouteStep], pos: int) -> int:
    """The position on the way back that stands at the same hop as `pos` on the way out."""
    return len(route) - 1 - pos


# --- errors a desk clerk must understand -------------------------------------------------


class Refusal(Exception):
    """What the settle service will not do, with a machine code and a sentence for the hospital
    desk: the base of every refusal here, always built (code, message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class SettlementRefusedError(Refusal):
    """The insured or the treatment city refuses the claim."""


def refuse(code: str, message: str) -> SettlementRefusedError:
    return SettlementRefusedError(code, message)


# --- treatment city: hospital check and catalogue split -----------------------------------


@dataclass(frozen=True)
class Hospital:
    fixmedins_code: str
    fixmedins_name: str
    admdvs: str
    hosp_lv: str
    cross_province_enabled: bool
    key: str = ""
    paasid: str = ""  # the gateway account id, when it is not the fixmedins_code
    signature: str = ""  # x-tif-signature scheme (services.settle.auth.SCHEMES); empty: the default


@dataclass(frozen=True)
class CatalogueItem:
    code: str
    name: str
    chrgitm_lv: str  # 01 甲, 02 乙, 03 丙
    selfpay_prop: Decimal
    pric_uplmt_amt: Decimal | None
    lmt_gend: str | None
    med_chrgitm_type: str
    lmt_age_min: int | None = None  # 限年龄 (whole years at treatment)
    lmt_age_max: int | None = None
    lmt_hosp_lv: str | None = None  # 限医院级别: this level or higher
    lmt_scope: str | None = None  # 限门诊 "op" / 限住院 "ip"

    @property
    def restricted(self) -> bool:
        """限制使用: the item is paid only for some people, hospitals or settings."""
        return any(v is not None for v in (self.lmt_gend, self.lmt_age_min, self.lmt_age_max, self.lmt_hosp_lv,
                                           self.lmt_scope))


def check_hospital(h: Hospital | None, code: str, treat: str, kind: RouteKind) -> Hospital:
    if h is None or h.admdvs != treat:
        raise refuse("HOSPITAL_UNKNOWN", f"定点医药机构 {code} 不是就医地 {treat} 的定点机构")
    if kind is RouteKind.CROSS_PROVINCE and not h.cross_province_enabled:
        raise refuse("HOSPITAL_NOT_ENABLED",
                     f"{h.fixmedins_name}({code}) 未开通跨省异地就医直接结算，请参保人先自费后回参保地报销")
    return h


def yuan(x: Decimal) -> Decimal:
    return x.quantize(FEN, rounding=ROUND_HALF_UP)


def is_inpatient(med_type: str) -> bool:
    return med_type.startswith("2")  # 21 普通住院, 24 急诊转住院 …


def treatment_restriction(item: CatalogueItem, hosp_lv: str | None, med_type: str | None) -> str | None:
    """Restrictions the treatment city can judge: hospital level, outpatient/inpatient."""
    if item.lmt_hosp_lv and hosp_lv is not None and hosp_lv < item.lmt_hosp_lv:
        return f"限{item.lmt_hosp_lv}级及以上医院使用"
    if item.lmt_scope and med_type is not None:
        if item.lmt_scope == "ip" and not is_inpatient(med_type):
            return "限住院使用"
        if item.lmt_scope == "op" and is_inpatient(med_type):
            return "限门诊使用"
    return None


def split_line(line: FeeLine, item: CatalogueItem | None, hosp_lv: str | None = None,
               med_type: str | None = None) -> FeeSplit:
    """One fee line against the treatment-location catalogue: 甲 / 乙 先行自付 / 丙, 超限价,
    and the restrictions the treatment city can judge (hospital level, 门诊/住院)."""
    amt = yuan(line.det_item_fee_sumamt)
    zero = Decimal("0.00")
    reason = treatment_restriction(item, hosp_lv, med_type) if item is not None else "目录外项目"
    if item is None or item.chrgitm_lv == "03" or reason:
        return FeeSplit(
            feedetl_sn=line.feedetl_sn, med_list_codg=line.med_list_codg, det_item_fee_sumamt=amt,
            chrgitm_lv="03" if item is None or item.chrgitm_lv == "03" else item.chrgitm_lv,
            selfpay_prop=Decimal("1"), pric_uplmt_amt=item.pric_uplmt_amt if item else None,
            fulamt_ownpay_amt=amt, overlmt_amt=zero, preselfpay_amt=zero, inscp_scp_amt=zero,
            lmt_gend=item.lmt_gend if item else None, lmt_reason=reason,
        )
    overlmt = zero
    if item.pric_uplmt_amt is not None and line.pric > item.pric_uplmt_amt:
        overlmt = min(amt, yuan((line.pric - item.pric_uplmt_amt) * line.cnt))
    rest = amt - overlmt
    pre = yuan(rest * item.selfpay_prop) if item.chrgitm_lv == "02" else zero
    return FeeSplit(
        feedetl_sn=line.feedetl_sn, med_list_codg=line.med_list_codg, det_item_fee_sumamt=amt,
        chrgitm_lv=item.chrgitm_lv,
        selfpay_prop=item.selfpay_prop, pric_uplmt_amt=item.pric_uplmt_amt,
        fulamt_ownpay_amt=zero, overlmt_amt=overlmt, preselfpay_amt=pre, inscp_scp_amt=rest - pre,
        lmt_gend=item.lmt_gend, lmt_age_min=item.lmt_age_min, lmt_age_max=item.lmt_age_max,
    )


NATIONAL_FLAGS = ("bas_medn_flag", "hi_nego_drug_flag", "chld_medc_flag", "list_sp_item_flag", "drt_reim_flag")


def national_row(split: FeeSplit, line: FeeLine, item: CatalogueItem | None) -> dict[str, object]:
    """One line of the 2204/2301 answer as adapters read it: the split with the line's cnt and pric
    echoed, the item's class and flags ("0" where the catalogue says nothing) and memo (why it fell
    to self-pay). Built for the answer only: the hops carry the lean split."""
    return split.model_dump(mode="json") | {
        "cnt": str(line.cnt), "pric": str(line.pric), "med_chrgitm_type": item.med_chrgitm_type if item else "",
        "lmt_used_flag": "1" if item is not None and item.restricted else "0", "memo": split.lmt_reason or "",
    } | dict.fromkeys(NATIONAL_FLAGS, "0")


def age_on(brdy: date, day: date) -> int:
    return day.year - brdy.year - ((day.month, day.day) < (brdy.month, brdy.day))


def person_restriction(s: FeeSplit, gend: str, age: int | None) -> str | None:
    """Restrictions only the insured city can judge: 限性别, 限年龄."""
    if s.lmt_gend and s.lmt_gend != gend:
        return "限" + ("男" if s.lmt_gend == "1" else "女") + "性使用"
    if age is not None and s.lmt_age_min is not None and age < s.lmt_age_min:
        return f"限{s.lmt_age_min}岁及以上使用"
    if age is not None and s.lmt_age_max is not None and age > s.lmt_age_max:
        return f"限{s.lmt_age_max}岁及以下使用"
    return None


def apply_person_restrictions(lines: list[FeeSplit], gend: str, age: int | None = None) -> list[FeeSplit]:
    """Restricted items billed for a person outside the restriction fall wholly to self-pay."""
    out = []
    for s in lines:
        reason = person_restriction(s, gend, age) if s.fulamt_ownpay_amt != s.det_item_fee_sumamt else None
        if reason:
            s = s.model_copy(update={
                "fulamt_ownpay_amt": s.det_item_fee_sumamt, "overlmt_amt": Decimal("0.00"),
                "preselfpay_amt": Decimal("0.00"), "inscp_scp_amt": Decimal("0.00"), "lmt_reason": reason,
            })
        out.append(s)
    return out


# --- insured city: eligibility -------------------------------------------------------------


@dataclass(frozen=True)
class PersonState:
    """One enrolment of a person as the insured city sees it (its view of enroll.events)."""

    psn_no: str
    psn_name: str
    gend: str
    insuplc_admdvs: str
    insutype: str
    psn_type: str
    psn_insu_stas: str
    paid_through: date | None
    voucher_active: bool
    begndate: date | None = None
    benefit_from: date | None = None
    death_date: date | None = None
    brdy: date | None = None
    cvlserv_flag: bool = False
    hardship: bytes = b"[]"  # JSON list of {hardship_type, begndate, enddate}


HARDSHIP_ORDER = ("TEKUN", "DIBAO", "ORPHAN", "DIBAO_EDGE", "RELAPSE_RISK", "SEVERE_DISABILITY")


def hardship_on(p: PersonState, day: date) -> str | None:
    """The 救助对象 class that holds on `day` (the most protected one when several do)."""
    held = {h["hardship_type"] for h in orjson.loads(p.hardship)
            if date.fromisoformat(h["begndate"]) <= day and (not h.get("enddate")
                                                            or day <= date.fromisoformat(h["enddate"]))}
    return next((h for h in HARDSHIP_ORDER if h in held), None)


@dataclass(frozen=True)
class FilingState:
    fil_id: str
    fil_type: FilingType
    target_admdvs: str
    begndate: date
    enddate: date | None
    status: str


def filing_place_covers(f: FilingState, treat: str) -> bool:
    return f.target_admdvs == treat or (f.target_admdvs.endswith("0000") and f.target_admdvs[:2] == treat[:2])


def filing_covers(f: FilingState, treat: str, day: date) -> bool:
    in_time = f.begndate <= day and (f.enddate is None or day <= f.enddate)
    return f.status == "active" and filing_place_covers(f, treat) and in_time


STATUS_REFUSALS = {
    "0": ("NOT_ENROLLED", "未参保"),
    "2": ("INSURANCE_SUSPENDED", "暂停参保"),
    "3": ("ENROLMENT_INVALID", "参保无效"),
    "4": ("INSURANCE_TERMINATED", "终止参保"),
}


@dataclass(frozen=True)
class Eligibility:
    person: PersonState
    filing: FilingType | None  # the filing type the benefit reduction follows (cross-province only)


def check_eligibility(enrolments: list[PersonState], filings: list[FilingState], *, psn_no: str,
                      insuplc: str, insutype: str, treat: str, med_type: str, cert_type: str,
                      day: date, rules: FilingRules) -> Eligibility:
    """The insured city's decision (参保地): who pays, under which filing. Each refusal has its own code."""
    mine = [e for e in enrolments if e.insuplc_admdvs == insuplc]
    if not mine:
        raise refuse("PERSON_UNKNOWN", f"参保地 {insuplc} 查无此人员 {psn_no}，请核对人员编号和参保地")
    person = next((e for e in mine if e.insutype == insutype), None)
    if person is None:
        held = "、".join(sorted(e.insutype for e in mine))
        raise refuse("INSUTYPE_MISMATCH", f"人员 {psn_no} 未参加险种 {insutype}（在 {insuplc} 参保险种为 {held}）")
    if person.death_date and person.death_date < day:
        raise refuse("DECEASED", f"人员 {psn_no} 已于 {person.death_date} 登记死亡，不能享受待遇；如登记有误请到参保地更正")
    if person.psn_insu_stas != "1":
        code, text = STATUS_REFUSALS.get(person.psn_insu_stas, ("NOT_INSURED", "参保状态异常"))
        raise refuse(code, f"人员 {psn_no} 在 {insuplc} {text}（psn_insu_stas={person.psn_insu_stas}），不能享受待遇")
    start = person.benefit_from  # a newborn's is the birth date, before begndate
    if start is None or day < start:
        if start and person.begndate and start > person.begndate:
            raise refuse("WAITING_PERIOD", f"人员 {psn_no} 处于待遇等待期（参保于 {person.begndate}），{start} 起方可享受医保待遇")
        raise refuse("NOT_YET_INSURED", f"人员 {psn_no} 待遇享受开始日期为 {start or '未确定'}，就诊日期 {day} 尚不能享受待遇")
    if person.paid_through is None or person.paid_through < day:
        raise refuse("CONTRIBUTION_LAPSED",
                     f"人员 {psn_no} 医保缴费中断（已缴至 {person.paid_through or '无'}），请先在参保地补缴")
    if cert_type == "01" and not person.voucher_active:
        raise refuse("VOUCHER_INACTIVE", "医保电子凭证未激活，请在国家医保服务平台激活后再使用，或改用身份证/社保卡")
    cross = route_kind(treat, insuplc) is RouteKind.CROSS_PROVINCE
    if not rules.filing_required(insuplc, treat):
        return Eligibility(person, rules.deemed_type(insuplc, treat) if cross else None)
    covering = [f for f in filings if filing_covers(f, treat, day)]
    if covering:
        best = min(covering, key=lambda f: f.fil_type.long_term is False).fil_type
        return Eligibility(person, best if cross else None)
    if med_type in EMERGENCY_MED_TYPES:
        return Eligibility(person, FilingType.EMERGENCY if cross else None)  # 急诊抢救视同已备案
    raise _why_not_filed(filings, psn_no=psn_no, insuplc=insuplc, treat=treat, day=day)


def _why_not_filed(filings: list[FilingState], *, psn_no: str, insuplc: str, treat: str,
                   day: date) -> SettlementRefusedError:
    here = [f for f in filings if filing_place_covers(f, treat)]
    later = [f for f in here if f.status == "active" and f.begndate > day]
    if later:
        return refuse("FILING_AFTER_TREATMENT",
                      f"人员 {psn_no} 到 {treat} 的备案自 {later[0].begndate} 起有效，晚于就诊日期 {day}：出院结算前补办备案"
                      f"（开始日期不晚于入院日期）即可直接结算；已出院自费结算的，请回参保地 {insuplc} 手工报销")
    if any(f.status == "expired" or (f.enddate is not None and f.enddate < day) for f in here):
        return refuse("FILING_EXPIRED", f"人员 {psn_no} 到 {treat} 的备案已过有效期，请重新备案")
    if any(f.status == "cancelled" for f in here):
        return refuse("FILING_CANCELLED", f"人员 {psn_no} 到 {treat} 的备案已撤销，请重新备案")
    elsewhere = [f for f in filings if f.status == "active" and f.begndate <= day
                 and (f.enddate is None or day <= f.enddate)]
    if elsewhere:
        return refuse("FILING_OTHER_PLACE",
                      f"人员 {psn_no} 的备案地为 {elsewhere[0].target_admdvs}，不含就医地 {treat}：请变更备案地后再结算")
    return refuse("NOT_FILED",
                  f"人员 {psn_no} 未办理到 {treat} 的有效异地就医备案，请先通过国家医保服务平台APP备案；"
                  f"急诊抢救请医院按急诊 (med_type 13) 结算")
