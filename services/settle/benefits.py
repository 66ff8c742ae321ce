"""参保地政策: the benefit computation of the insured region, policies as effective-dated data.

All money here is integer fen; ratios are Decimal. Every result checks that its parts add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from schemas.common import FilingType
from schemas.events import FeeSplit
from services.settle.domain import Refusal

INPATIENT_MED_TYPES = frozenset({"21", "22", "23", "24", "28", "52"})
CHRONIC_MED_TYPE = "14"  # 门诊慢特病


_HUNDRED, _ONE, _FEN = Decimal(100), Decimal(1), Decimal("0.01")  # built once: fen() runs for every line's amounts


def fen(yuan: Decimal | str | int) -> int:
    d = yuan if type(yuan) is Decimal else Decimal(yuan)
    return int((d * _HUNDRED).quantize(_ONE, rounding=ROUND_HALF_UP))


def yuan_of(amount_fen: int) -> Decimal:
    """Integer fen back to yuan with two decimals (what the wire carries)."""
    return (Decimal(amount_fen) / _HUNDRED).quantize(_FEN)


def mul(amount_fen: int, ratio: Decimal) -> int:
    return int((Decimal(amount_fen) * ratio).quantize(_ONE, rounding=ROUND_HALF_UP))


class PolicyError(Refusal):
    """No policy is configured for what the claim needs, or the claim lacks what the policy needs."""


@dataclass(frozen=True)
class EncounterRule:
    deductible_fen: dict[str, int]  # by hospital level
    ratio: dict[str, dict[str, Decimal]]  # psn_type → level → ratio
    annual_cap_fen: dict[str, int]  # psn_type → cap of the pooled fund
    deductible_per: str = "year"  # "year": once a year; "admission": at every admission


@dataclass(frozen=True)
class CriticalTier:
    above_fen: int  # of the compliant self-pay above the threshold
    ratio: Decimal


@dataclass(frozen=True)
class HardshipCritical:
    """困难群体 in the critical-illness layer: a lower threshold, a higher ratio, maybe no cap."""

    classes: frozenset[str]
    threshold_factor: Decimal
    ratio_plus: Decimal
    no_cap: bool


@dataclass(frozen=True)
class AssistanceRule:
    """医疗救助 for one class of 救助对象: on the compliant self-pay left after the insurance layers."""

    deductible_fen: int
    ratio: Decimal
    annual_cap_fen: int | None  # None: no cap


@dataclass(frozen=True)
class ChronicRule:
    """门诊慢特病: one disease's ratio and annual limit (no deductible)."""

    name: str
    ratio: Decimal
    annual_cap_fen: int


@dataclass(frozen=True)
class Policy:
    admdvs: str
    insutype: str
    effective_from: date
    remote_kind: str  # "ratio_reduction" (points off the ratio) or "extra_preselfpay"
    remote_by_filing: dict[str, Decimal]
    inpatient: EncounterRule
    outpatient: EncounterRule
    critical_fund: str  # hifob (职工大额) or hifmi (居民大病)
    critical_threshold_fen: int
    critical_ratio: Decimal
    critical_cap_fen: int
    critical_tiers: tuple[CriticalTier, ...] = ()  # rising ratios by amount over the threshold
    critical_hardship: HardshipCritical | None = None
    civil_servant_ratio: Decimal = Decimal(0)  # 公务员医疗补助 on what is left after the basic and critical layers
    assistance: dict[str, AssistanceRule] = field(default_factory=dict)  # by HardshipType
    chronic: dict[str, ChronicRule] = field(default_factory=dict)  # by disease code (M + 5 digits)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Policy:
        def rule(r: dict[str, Any]) -> EncounterRule:
            return EncounterRule(
                deductible_fen={k: fen(v) for k, v in r["deductible"].items()},
                ratio={pt: {lv: Decimal(x) for lv, x in m.items()} for pt, m in r["ratio"].items()},
                annual_cap_fen={k: fen(v) for k, v in r["annual_cap"].items()},
                deductible_per=r.get("deductible_per", "year"),
            )
        c = d["critical"]
        return cls(
            admdvs=d["admdvs"], insutype=d["insutype"], effective_from=date.fromisoformat(d["effective_from"]),
            remote_kind=d["remote"]["kind"],
            remote_by_filing={k: Decimal(v) for k, v in d["remote"]["by_filing"].items()},
            inpatient=rule(d["inpatient"]), outpatient=rule(d["outpatient"]), critical_fund=c["fund"],
            critical_threshold_fen=fen(c["threshold"]), critical_ratio=Decimal(c["ratio"]),
            critical_cap_fen=fen(c["cap"]),
            critical_tiers=tuple(CriticalTier(fen(t["above"]), Decimal(t["ratio"])) for t in c.get("tiers", [])),
            critical_hardship=HardshipCritical(
                frozenset(c["hardship"]["classes"]), Decimal(c["hardship"]["threshold_factor"]),
                Decimal(c["hardship"]["ratio_plus"]), bool(c["hardship"].get("no_cap"))) if c.get("hardship") else None,
            civil_servant_ratio=Decimal(d.get("civil_servant", {}).get("ratio", "0")),
            assistance={k: AssistanceRule(fen(v["deductible"]), Decimal(v["ratio"]),
                                          fen(v["annual_cap"]) if v.get("annual_cap") else None)
                        for k, v in d.get("assistance", {}).items()},
            chronic={k: ChronicRule(v["name"], Decimal(v["ratio"]), fen(v["annual_cap"]))
                     for k, v in d.get("chronic", {}).items()},
        )


def pick_policy(policies: list[Policy], admdvs: str, insutype: str, day: date) -> Policy:
    valid = [p for p in policies if p.admdvs == admdvs and p.insutype == insutype and p.effective_from <= day]
    if not valid:
        raise PolicyError("NO_POLICY", f"参保地 {admdvs} 没有险种 {insutype} 在 {day} 生效的待遇政策")
    return max(valid, key=lambda p: p.effective_from)


@dataclass
class Accumulators:
    """人员累计信息 for one person, year and insutype (5206)."""

    dedc_used_ip: int = 0
    dedc_used_op: int = 0
    hifp_paid_ip: int = 0
    hifp_paid_op: int = 0
    compliant_selfpay: int = 0  # 合规自付 base of the critical-illness layer
    critical_paid: int = 0
    chronic_paid: int = 0  # 门诊慢特病 pooled fund paid this year
    maf_dedc_used: int = 0  # 医疗救助 deductible used this year
    maf_paid: int = 0


@dataclass
class Computation:
    medfee_sumamt: int
    fulamt_ownpay_amt: int
    overlmt_selfpay: int
    preselfpay_amt: int
    inscp_scp_amt: int
    act_pay_dedc: int
    hifp_pay: int
    pool_prop: Decimal
    hifob_pay: int
    hifmi_pay: int
    cvlserv_pay: int
    maf_pay: int
    fund_pay_sumamt: int
    psn_part_amt: int
    acct_pay: int
    psn_cash_pay: int
    balc: int
    inpatient: bool
    after: Accumulators = field(default_factory=Accumulators)

    def check(self) -> None:
        """The split adds up, to the fen, or SplitDoesNotAddUpError (kept under `python -O`, unlike assert)."""
        parts = self.fulamt_ownpay_amt + self.overlmt_selfpay + self.preselfpay_amt + self.inscp_scp_amt
        failed = [what for what, holds in (
            (f"line parts {parts} != total {self.medfee_sumamt}", parts == self.medfee_sumamt),
            ("fund + person != total", self.fund_pay_sumamt + self.psn_part_amt == self.medfee_sumamt),
            ("account + cash != person part", self.acct_pay + self.psn_cash_pay == self.psn_part_amt),
            ("a negative payment", min(self.hifp_pay, self.acct_pay, self.psn_cash_pay, self.act_pay_dedc,
                                       self.cvlserv_pay, self.maf_pay) >= 0),
            ("funds pay beyond the compliant scope", self.fund_pay_sumamt <= self.inscp_scp_amt),
        ) if not holds]
        if failed:
            raise SplitDoesNotAddUpError("; ".join(failed))


class SplitDoesNotAddUpError(ArithmeticError):
    """A computed split whose parts do not add up to its whole: a defect, never paid out."""


def critical_pay(policy: Policy, acc: Accumulators, compliant: int, hardship: str | None) -> int:
    """The critical-illness layer on this claim's compliant self-pay, by tiers over the yearly threshold."""
    threshold, plus, capped = policy.critical_threshold_fen, Decimal(0), True
    hc = policy.critical_hardship
    if hc is not None and hardship in hc.classes:
        threshold, plus, capped = mul(threshold, hc.threshold_factor), hc.ratio_plus, not hc.no_cap
    lo = max(acc.compliant_selfpay - threshold, 0)
    hi = max(acc.compliant_selfpay + compliant - threshold, 0)
    tiers = policy.critical_tiers or (CriticalTier(0, policy.critical_ratio),)
    pay = 0
    for i, t in enumerate(tiers):
        top = tiers[i + 1].above_fen if i + 1 < len(tiers) else hi
        overlap = max(min(hi, top) - max(lo, t.above_fen), 0)
        pay += mul(overlap, min(t.ratio + plus, Decimal(1)))
    return min(pay, max(policy.critical_cap_fen - acc.critical_paid, 0)) if capped else pay


def chronic_rule(policy: Policy, dise_codg: str | None) -> ChronicRule:
    rule = policy.chronic.get(dise_codg or "")
    if rule is None:
        known = "、".join(f"{k} {v.name}" for k, v in sorted(policy.chronic.items())) or "无"
        raise PolicyError("NO_POLICY", f"门诊慢特病 (med_type 14) 须填写参保地认定的病种 dise_codg；{policy.admdvs} 的病种：{known}")
    return rule


def compute(policy: Policy, lines: list[FeeSplit], *, med_type: str, psn_type: str, hosp_lv: str,
            filing: FilingType | None, acc: Accumulators, acct_balance: int,
            use_account: bool, cvlserv: bool = False, hardship: str | None = None,
            dise_codg: str | None = None) -> Computation:
    """One settlement by the insured region's policy; `acc` is the year-to-date state before it.

    `cvlserv`: the person has 公务员医疗补助; `hardship`: their 救助对象 class on the day;
    `dise_codg`: the 门诊慢特病 disease when med_type is 14."""
    inpatient = med_type in INPATIENT_MED_TYPES
    chronic = chronic_rule(policy, dise_codg) if med_type == CHRONIC_MED_TYPE else None
    rule = policy.inpatient if inpatient else policy.outpatient
    total = sum(fen(s.det_item_fee_sumamt) for s in lines)
    fulamt = sum(fen(s.fulamt_ownpay_amt) for s in lines)
    overlmt = sum(fen(s.overlmt_amt) for s in lines)
    pre = sum(fen(s.preselfpay_amt) for s in lines)
    inscp = sum(fen(s.inscp_scp_amt) for s in lines)

    reduction = policy.remote_by_filing.get(filing.value, Decimal(0)) if filing else Decimal(0)
    if policy.remote_kind == "extra_preselfpay" and reduction:
        extra = mul(inscp, reduction)
        pre, inscp = pre + extra, inscp - extra
    ratio = rule.ratio.get(psn_type, rule.ratio["11"])[hosp_lv]
    if policy.remote_kind == "ratio_reduction":
        ratio = max(ratio - reduction, Decimal(0))

    used = acc.dedc_used_ip if inpatient else acc.dedc_used_op
    if rule.deductible_per == "admission":
        used = 0  # 起付线 at every admission
    dedc = min(max(rule.deductible_fen[hosp_lv] - used, 0), inscp)
    paid = acc.hifp_paid_ip if inpatient else acc.hifp_paid_op
    cap_left = max(rule.annual_cap_fen.get(psn_type, rule.annual_cap_fen["11"]) - paid, 0)
    if chronic is not None:  # 门诊慢特病: its own ratio and limit, no deductible
        dedc = 0
        ratio = max(chronic.ratio - (reduction if policy.remote_kind == "ratio_reduction" else 0), Decimal(0))
        cap_left = max(chronic.annual_cap_fen - acc.chronic_paid, 0)
    hifp = min(mul(inscp - dedc, ratio), cap_left)

    # critical-illness layer (职工大额 hifob / 居民大病 hifmi) on compliant self-pay over the threshold
    compliant = inscp - hifp
    critical = critical_pay(policy, acc, compliant, hardship) if inpatient else 0

    # 公务员医疗补助, then 医疗救助, each on the compliant self-pay still left
    left = inscp - hifp - critical
    cvl = mul(left, policy.civil_servant_ratio) if cvlserv else 0
    left -= cvl
    maf = maf_dedc = 0
    aid = policy.assistance.get(hardship or "")
    if aid is not None:
        maf_dedc = min(max(aid.deductible_fen - acc.maf_dedc_used, 0), left)
        maf = mul(left - maf_dedc, aid.ratio)
        if aid.annual_cap_fen is not None:
            maf = min(maf, max(aid.annual_cap_fen - acc.maf_paid, 0))

    fund = hifp + critical + cvl + maf
    person = total - fund
    acct = min(person, acct_balance) if use_account else 0
    after = replace(acc, compliant_selfpay=acc.compliant_selfpay + (compliant if inpatient else 0),
                    critical_paid=acc.critical_paid + critical, maf_dedc_used=acc.maf_dedc_used + maf_dedc,
                    maf_paid=acc.maf_paid + maf)
    if chronic is not None:
        after.chronic_paid += hifp
    elif inpatient:
        after.dedc_used_ip += dedc
        after.hifp_paid_ip += hifp
    else:
        after.dedc_used_op += dedc
        after.hifp_paid_op += hifp
    c = Computation(
        medfee_sumamt=total, fulamt_ownpay_amt=fulamt, overlmt_selfpay=overlmt, preselfpay_amt=pre,
        inscp_scp_amt=inscp, act_pay_dedc=dedc, hifp_pay=hifp, pool_prop=ratio,
        hifob_pay=critical if policy.critical_fund == "hifob" else 0,
        hifmi_pay=critical if policy.critical_fund == "hifmi" else 0, cvlserv_pay=cvl, maf_pay=maf,
        fund_pay_sumamt=fund, psn_part_amt=person, acct_pay=acct, psn_cash_pay=person - acct,
        balc=acct_balance - acct, inpatient=inpatient, after=after,
    )
    c.check()
    return c
