"""The benefit computation: the reference worked example to the fen, and invariants."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.common import FilingType
from schemas.events import FeeSplit
from services.settle import benefits
from services.settle.benefits import Accumulators, compute, fen, pick_policy
from services.settle.refdata import Reference

REF = Reference.load()
D = Decimal


def line(sn: str, total: str, fulamt: str = "0", overlmt: str = "0", pre: str = "0", lv: str = "01") -> FeeSplit:
    t = D(total)
    inscp = t - D(fulamt) - D(overlmt) - D(pre)
    return FeeSplit(feedetl_sn=sn, med_list_codg="X", det_item_fee_sumamt=t, chrgitm_lv=lv,  # type: ignore[arg-type]
                    selfpay_prop=D("0"), fulamt_ownpay_amt=D(fulamt), overlmt_amt=D(overlmt),
                    preselfpay_amt=D(pre), inscp_scp_amt=inscp)


# reference §4.5: 50,000 in all: 丙 3,000; 超限价 500; 乙 10,000 with 10% 先自付; 甲 36,500
WORKED_BILL = [
    line("1", "3000", fulamt="3000", lv="03"),
    line("2", "500", overlmt="500"),
    line("3", "10000", pre="1000", lv="02"),
    line("4", "36500"),
]


def worked(policy: benefits.Policy) -> benefits.Computation:
    return compute(policy, WORKED_BILL, med_type="21", psn_type="11", hosp_lv="3",
                   filing=FilingType.REFERRAL, acc=Accumulators(), acct_balance=fen("3000"), use_account=True)


def test_worked_example_strategy_b_extra_preselfpay_360100() -> None:
    c = worked(pick_policy(REF.policies, "360100", "310", __import__("datetime").date(2026, 3, 1)))
    assert (c.fulamt_ownpay_amt, c.overlmt_selfpay) == (300000, 50000)
    assert c.preselfpay_amt == fen("5550")
    assert c.inscp_scp_amt == fen("40950")
    assert c.act_pay_dedc == fen("800")
    assert c.pool_prop == D("0.85")
    assert c.hifp_pay == fen("34127.50")
    assert c.fund_pay_sumamt == fen("34127.50")
    assert c.psn_part_amt == fen("15872.50")
    assert (c.acct_pay, c.psn_cash_pay, c.balc) == (fen("3000"), fen("12872.50"), 0)


def test_worked_example_strategy_a_ratio_reduction() -> None:
    jx = pick_policy(REF.policies, "360100", "310", __import__("datetime").date(2026, 3, 1))
    tongchuan_style = replace(jx, remote_kind="ratio_reduction")
    c = worked(tongchuan_style)
    assert c.preselfpay_amt == fen("1000")
    assert c.inscp_scp_amt == fen("45500")
    assert c.pool_prop == D("0.75")
    assert c.hifp_pay == fen("33525.00")
    assert c.psn_part_amt == fen("16475.00")
    assert (c.acct_pay, c.psn_cash_pay, c.balc) == (fen("3000"), fen("13475.00"), 0)


def test_deductible_is_used_once_a_year() -> None:
    p = pick_policy(REF.policies, "360100", "310", __import__("datetime").date(2026, 3, 1))
    first = worked(p)
    second = compute(p, WORKED_BILL, med_type="21", psn_type="11", hosp_lv="3", filing=FilingType.REFERRAL,
                     acc=first.after, acct_balance=0, use_account=True)
    assert first.act_pay_dedc == fen("800") and second.act_pay_dedc == 0


def test_outpatient_annual_cap_holds_across_visits() -> None:
    p = pick_policy(REF.policies, "360100", "310", __import__("datetime").date(2026, 3, 1))
    acc, paid = Accumulators(), 0
    for _ in range(20):
        c = compute(p, [line("1", "1000")], med_type="11", psn_type="11", hosp_lv="1", filing=None,
                    acc=acc, acct_balance=0, use_account=False)
        acc, paid = c.after, paid + c.hifp_pay
    assert paid == p.outpatient.annual_cap_fen["11"]


def test_a_split_that_does_not_add_up_is_a_named_error_not_an_assert() -> None:
    """The check survives `python -O` (an assert would not) and names what does not add up."""
    c = worked(pick_policy(REF.policies, "360100", "310", __import__("datetime").date(2026, 3, 1)))
    c.check()
    with pytest.raises(benefits.SplitDoesNotAddUpError, match="fund \\+ person != total"):
        replace(c, hifp_pay=c.hifp_pay + 1, fund_pay_sumamt=c.fund_pay_sumamt + 1).check()
    with pytest.raises(benefits.SplitDoesNotAddUpError, match="account \\+ cash"):
        replace(c, acct_pay=c.acct_pay + 1, psn_cash_pay=c.psn_cash_pay).check()


def test_no_policy_is_a_named_error() -> None:
    with pytest.raises(benefits.PolicyError, match="没有险种"):
        pick_policy(REF.policies, "999999", "310", __import__("datetime").date(2026, 3, 1))


amounts = st.integers(min_value=0, max_value=5_000_000)  # fen


@st.composite
def bills(draw: st.DrawFn) -> list[FeeSplit]:
    out = []
    for i in range(draw(st.integers(1, 8))):
        parts = [draw(amounts) for _ in range(4)]
        total = sum(parts)
        out.append(line(str(i), str(D(total) / 100), fulamt=str(D(parts[0]) / 100),
                        overlmt=str(D(parts[1]) / 100), pre=str(D(parts[2]) / 100)))
    return out


@settings(max_examples=200, deadline=None)
@given(bill=bills(), med_type=st.sampled_from(["11", "21", "14"]), lv=st.sampled_from(["1", "2", "3"]),
       psn_type=st.sampled_from(["11", "21"]), region=st.sampled_from(["360100", "440100", "110000"]),
       insutype=st.sampled_from(["310", "390"]), filing=st.sampled_from([None, *FilingType]),
       balance=amounts, visits=st.integers(1, 4), cvlserv=st.booleans(),
       hardship=st.sampled_from([None, "TEKUN", "DIBAO", "DIBAO_EDGE", "RELAPSE_RISK"]))
def test_invariants_over_random_bills(bill, med_type, lv, psn_type, region, insutype, filing, balance, visits,  # type: ignore[no-untyped-def]
                                      cvlserv, hardship) -> None:
    """No negative part, parts add up, no fund pays outside the compliant scope, and no annual cap
    (pooled, critical, chronic, assistance) is exceeded over a year of claims."""
    p = pick_policy(REF.policies, region, insutype, __import__("datetime").date(2026, 3, 1))
    acc = Accumulators()
    rule = p.inpatient if med_type == "21" else p.outpatient
    for _ in range(visits):
        c = compute(p, bill, med_type=med_type, psn_type=psn_type, hosp_lv=lv, filing=filing, acc=acc,
                    acct_balance=balance, use_account=insutype == "310", cvlserv=cvlserv, hardship=hardship,
                    dise_codg="M03900" if med_type == "14" else None)
        for v in (c.hifp_pay, c.hifob_pay, c.hifmi_pay, c.cvlserv_pay, c.maf_pay, c.acct_pay, c.psn_cash_pay,
                  c.act_pay_dedc, c.preselfpay_amt, c.inscp_scp_amt, c.balc):
            assert v >= 0
        assert c.fund_pay_sumamt + c.psn_part_amt == c.medfee_sumamt
        assert c.fund_pay_sumamt <= c.inscp_scp_amt
        acc, balance = c.after, c.balc
        assert acc.hifp_paid_ip + acc.hifp_paid_op <= max(rule.annual_cap_fen.values())
        hc = p.critical_hardship  # 困难群体 classes whose policy lifts the critical layer's cap
        if not (hc is not None and hardship in hc.classes and hc.no_cap):
            assert acc.critical_paid <= p.critical_cap_fen
        assert acc.chronic_paid <= p.chronic["M03900"].annual_cap_fen
        aid = p.assistance.get(hardship or "")
        if aid is not None and aid.annual_cap_fen is not None:
            assert acc.maf_paid <= aid.annual_cap_fen
        if not (cvlserv and p.civil_servant_ratio):
            assert c.cvlserv_pay == 0


def test_supplementary_layers_in_order() -> None:
    """公务员补助 then 医疗救助, each on the compliant self-pay the layers before left."""
    p = pick_policy(REF.policies, "360100", "310", __import__("datetime").date(2026, 3, 1))
    bill = [line("1", "10000")]
    base = compute(p, bill, med_type="21", psn_type="11", hosp_lv="3", filing=None, acc=Accumulators(),
                   acct_balance=0, use_account=False)
    left = base.inscp_scp_amt - base.hifp_pay  # 800 deductible + 15 % of 9,200 = 2,180.00
    assert left == fen("2180")
    cvl = compute(p, bill, med_type="21", psn_type="11", hosp_lv="3", filing=None, acc=Accumulators(),
                  acct_balance=0, use_account=False, cvlserv=True)
    assert cvl.cvlserv_pay == fen("2092.80")  # 96 %
    both = compute(p, bill, med_type="21", psn_type="11", hosp_lv="3", filing=None, acc=Accumulators(),
                   acct_balance=0, use_account=False, cvlserv=True, hardship="DIBAO")
    assert both.maf_pay == fen("65.40")  # 75 % of the 87.20 left
    assert both.psn_part_amt == fen("21.80")
    edge = compute(p, bill, med_type="21", psn_type="11", hosp_lv="3", filing=None, acc=Accumulators(),
                   acct_balance=0, use_account=False, hardship="DIBAO_EDGE")
    assert edge.maf_pay == fen("108.00") and edge.after.maf_dedc_used == fen("2000")  # 60 % over a 2,000 deductible


def test_chronic_disease_outpatient() -> None:
    p = pick_policy(REF.policies, "360100", "310", __import__("datetime").date(2026, 3, 1))
    c = compute(p, [line("1", "1000")], med_type="14", psn_type="11", hosp_lv="3", filing=None,
                acc=Accumulators(), acct_balance=0, use_account=False, dise_codg="M01600")
    assert c.act_pay_dedc == 0 and c.hifp_pay == fen("700") and c.after.chronic_paid == fen("700")
    capped = compute(p, [line("1", "1000")], med_type="14", psn_type="11", hosp_lv="3", filing=None,
                     acc=replace(Accumulators(), chronic_paid=fen("3900")), acct_balance=0, use_account=False,
                     dise_codg="M01600")
    assert capped.hifp_pay == fen("100")  # the 4,000 limit of 糖尿病
    with pytest.raises(benefits.PolicyError, match="dise_codg"):
        compute(p, [line("1", "100")], med_type="14", psn_type="11", hosp_lv="3", filing=None,
                acc=Accumulators(), acct_balance=0, use_account=False, dise_codg="M99999")


def test_resident_critical_illness_tiers_and_hardship() -> None:
    """居民大病: 60 % up to 50,000 over the 17,000 threshold, 70 % above; 困难群体 half the threshold,
    +5 points, no cap."""
    p = pick_policy(REF.policies, "360100", "390", __import__("datetime").date(2026, 3, 1))
    at = replace(Accumulators(), compliant_selfpay=fen("17000"))
    assert benefits.critical_pay(p, at, fen("60000"), None) == fen("50000") * 60 // 100 + fen("10000") * 70 // 100
    assert benefits.critical_pay(p, Accumulators(), fen("17000"), None) == 0  # below the threshold: nothing
    # 低保: threshold 8,500, 65 % and 75 %, and the 300,000 cap does not apply
    assert benefits.critical_pay(p, Accumulators(), fen("17000"), "DIBAO") == fen("8500") * 65 // 100
    full = replace(Accumulators(), compliant_selfpay=fen("17000"), critical_paid=fen("300000"))
    assert benefits.critical_pay(p, full, fen("1000"), None) == 0
    assert benefits.critical_pay(p, full, fen("1000"), "DIBAO") > 0


def test_deductible_per_admission_where_configured() -> None:
    gz = pick_policy(REF.policies, "440100", "390", __import__("datetime").date(2026, 3, 1))
    nc = pick_policy(REF.policies, "360100", "390", __import__("datetime").date(2026, 3, 1))
    for policy, second in ((gz, fen("600")), (nc, 0)):
        first = compute(policy, [line("1", "5000")], med_type="21", psn_type="11", hosp_lv="3", filing=None,
                        acc=Accumulators(), acct_balance=0, use_account=False)
        again = compute(policy, [line("1", "5000")], med_type="21", psn_type="11", hosp_lv="3", filing=None,
                        acc=first.after, acct_balance=0, use_account=False)
        assert first.act_pay_dedc == fen("600") and again.act_pay_dedc == second
