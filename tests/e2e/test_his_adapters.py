"""A hospital's existing HIS adapter against yibao, unchanged: request bodies shaped as public
adapters send them (national node names, numbers as strings and as JSON numbers, trailing zeros,
six-decimal unit prices, extra fields) and answers read at the national paths."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text

from schemas.common import new_msgid
from tests.e2e.stack import Stack

GZ = "H44010400001"
D = Decimal


def now() -> str:
    return f"{datetime.now():%Y-%m-%d %H:%M:%S}"


async def send(stack: Stack, infno: str, inp: dict[str, Any]) -> dict[str, Any]:
    """The whole national envelope, as an adapter fills it."""
    body = {"infno": infno, "msgid": new_msgid(GZ), "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100",
            "recer_sys_code": "FSI_LOCAL", "dev_no": "", "dev_safe_info": "", "cainfo": "", "signtype": "SM3",
            "infver": "V1.0", "opter_type": "1", "opter": "0001", "opter_name": "收费员", "inf_time": now(),
            "fixmedins_code": GZ, "fixmedins_name": "广州市第一人民医院", "sign_no": "", "input": inp}
    r = await stack.http["settle"].post("/fsi/callService", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def fee_line(mdtrt_id: str, psn: str, sn: str, code: str, cnt: Any, pric: Any, amount: Any,
             batch: str = "CB0001") -> dict[str, Any]:
    return {"feedetl_sn": sn, "mdtrt_id": mdtrt_id, "psn_no": psn, "chrg_bchno": batch, "dise_codg": "",
            "rxno": "", "rx_circ_flag": "0", "fee_ocur_time": now(), "med_list_codg": code,
            "medins_list_codg": "HIS-" + sn, "det_item_fee_sumamt": amount, "cnt": cnt, "pric": pric,
            "sin_dos_dscr": "", "used_frqu_dscr": "", "prd_days": 0, "medc_way_dscr": "", "bilg_dept_codg": "A01",
            "bilg_dept_name": "内科", "bilg_dr_codg": "D440100000001", "bilg_dr_name": "王医生", "acord_dept_codg": "",
            "acord_dept_name": "", "orders_dr_code": "", "orders_dr_name": "", "hosp_appr_flag": "1",
            "tcmdrug_used_way": "", "etip_flag": "", "etip_hosp_code": "", "dscg_tkdrug_flag": "",
            "matn_fee_flag": ""}


def settle_data(psn: str, mdtrt_id: str, med_type: str, total: str, **extra: Any) -> dict[str, Any]:
    return {"psn_no": psn, "mdtrt_cert_type": "02", "mdtrt_cert_no": "", "med_type": med_type,
            "medfee_sumamt": total, "psn_setlway": "01", "mdtrt_id": mdtrt_id, "chrg_bchno": "CB0001",
            "insutype": "310", "acct_used_flag": "0", "invono": "", "fulamt_ownpay_amt": "0.00",
            "overlmt_selfpay": "0.00", "preselfpay_amt": "0.00", "inscp_scp_amt": "0.00", **extra}


def split_parts(setlinfo: dict[str, Any]) -> Decimal:
    return D(setlinfo["fund_pay_sumamt"]) + D(setlinfo["psn_part_amt"])


async def test_outpatient_2201_2203_2204_2206_2207_as_an_adapter_sends_them(stack: Stack) -> None:
    psn = await stack.person()
    await stack.file(psn, "440100")
    certno = stack.certnos[psn]
    who = await send(stack, "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "", "card_sn": "",
                                              "begntime": now(), "psn_cert_type": "01", "certno": certno,
                                              "psn_name": "测试"}})  # the number in certno, not mdtrt_cert_no
    assert who["output"]["baseinfo"]["psn_no"] == psn, who
    reg = await send(stack, "2201", {"data": {  # the national 2201: no med_type
        "psn_no": psn, "insutype": "310", "begntime": now(), "mdtrt_cert_type": "02", "mdtrt_cert_no": "",
        "ipt_otp_no": "MZ202612050001", "atddr_no": "D440100000001", "dr_name": "王医生", "dept_code": "A01",
        "dept_name": "内科", "caty": "A03"}})
    assert reg["infcode"] == 0, reg
    visit = reg["output"]["data"]  # Out2201.data
    mdtrt_id = visit["mdtrt_id"]
    assert (visit["psn_no"], visit["ipt_otp_no"]) == (psn, "MZ202612050001")

    info = await send(stack, "2203", {
        "mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": psn, "med_type": "11", "begntime": now(),
                      "main_cond_dscr": "咳嗽三天", "dise_codg": "", "dise_name": "", "birctrl_type": "",
                      "birctrl_matn_date": ""},
        "diseinfo": [{"diag_type": 1, "diag_srt_no": "1", "diag_code": "J06.900", "diag_name": "急性上呼吸道感染",
                      "diag_dept": "内科", "dise_dor_no": "D440100000001", "dise_dor_name": "王医生",
                      "diag_time": now(), "vali_flag": "1"}]})
    assert info["infcode"] == 0, info
    with stack.settle.engine.connect() as c:
        kept = c.execute(text("SELECT diagnoses FROM settle_encounter_diagnoses WHERE mdtrt_id = :m"),
                         {"m": mdtrt_id}).scalar_one()
    assert [d["diag_code"] for d in orjson.loads(kept)] == ["J06.900"]

    # 28 tablets at 3.7857 (six-decimal price, count with trailing zeros, amount 105.9996 → 106.00),
    # a consultation sent as JSON numbers
    lines = [fee_line(mdtrt_id, psn, "1", "XC09CAL032A001010100512", "28.0000", 3.7857, "106.00"),
             fee_line(mdtrt_id, psn, "2", "001102000010000", 1, 25.000000, 25)]
    up = await send(stack, "2204", {"feedetail": lines})
    assert up["infcode"] == 0, up
    rows = {r["feedetl_sn"]: r for r in up["output"]["result"]}  # Out2204.result
    assert (D(rows["1"]["cnt"]), D(rows["1"]["pric"]), rows["1"]["chrgitm_lv"], rows["1"]["med_chrgitm_type"]) == \
        (D("28"), D("3.7857"), "02", "09")
    # 乙类 at 10 % 先行自付, under its 3.80 cap: worked by hand
    assert (D(rows["1"]["preselfpay_amt"]), D(rows["1"]["inscp_scp_amt"]), D(rows["1"]["overlmt_amt"])) == \
        (D("10.60"), D("95.40"), D("0"))
    assert (D(rows["2"]["inscp_scp_amt"]), rows["2"]["chrgitm_lv"]) == (D("25.00"), "01")
    assert all({"memo", "lmt_used_flag", "list_sp_item_flag", "bas_medn_flag"} <= set(r) for r in rows.values())

    # a second charge batch, taken back by its chrg_bchno (national 2205): only its line goes
    extra = await send(stack, "2204", {"feedetail": fee_line(mdtrt_id, psn, "3", "003307000010000", 1, 600, 600,
                                                             batch="CB0002")})  # one line as an object
    assert extra["infcode"] == 0, extra
    back = await send(stack, "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "CB0002", "psn_no": psn}})
    assert back["output"]["cancelled_lines"] == 1, back

    pre = await send(stack, "2206", {"data": settle_data(psn, mdtrt_id, "11", "131.00")})
    assert pre["infcode"] == 0, pre
    # the same lines sent inline with the settlement (no encounter) give the same pre-settlement
    inline = await send(stack, "2206", {
        "data": {"psn_no": psn, "insutype": "310", "med_type": "11", "begntime": now(), "acct_used_flag": "0"},
        "feedetail": lines})
    money = ("medfee_sumamt", "preselfpay_amt", "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "fund_pay_sumamt",
             "psn_cash_pay")
    assert {k: pre["output"]["setlinfo"][k] for k in money} == {k: inline["output"]["setlinfo"][k] for k in money}

    done = await send(stack, "2207", {"data": settle_data(psn, mdtrt_id, "11", "131.00")})
    assert done["infcode"] == 0, done
    s = done["output"]["setlinfo"]
    assert s["mdtrt_id"] == mdtrt_id and D(s["medfee_sumamt"]) == D("131.00")
    # 先行自付: the lines' 10.60, plus the insured city's extra 10 % of the 120.40 in scope for a
    # cross-province referral (360100's policy): 12.04
    assert (D(s["preselfpay_amt"]), D(s["inscp_scp_amt"])) == (D("22.64"), D("108.36"))
    assert split_parts(s) == D("131.00")
    assert {k: s[k] for k in money} == {k: pre["output"]["setlinfo"][k] for k in money}

    # the accumulators in the national 5206 rows, for the month asked
    ytd = await send(stack, "5206", {"data": {"psn_no": psn, "cum_ym": f"{date.today():%Y%m}"}})
    cum = {r["cum_type_code"]: r for r in ytd["output"]["cuminfo"]}
    assert D(cum["D310101_BIZ11"]["cum"]) == D(s["hifp_pay"]) and cum["D310101_BIZ11"]["cum_ym"] == f"{date.today():%Y%m}"

    # 3201 with the adapter's fields, setl_optins echoed
    tot = await send(stack, "3201", {"data": {
        "insutype": "310", "clr_type": "11", "setl_optins": "360100", "stmt_begndate": f"{date.today()}",
        "stmt_enddate": f"{date.today()}", "medfee_sumamt": 131.0, "fund_pay_sumamt": s["fund_pay_sumamt"],
        "acct_pay": "0.00", "fixmedins_setl_cnt": 1}})
    assert (tot["output"]["setl_optins"], tot["output"]["stmt_rslt"]) == ("360100", "0"), tot


async def test_inpatient_2401_2301_2304_as_an_adapter_sends_them(stack: Stack) -> None:
    psn = await stack.person()
    await stack.file(psn, "440100")
    adm = await send(stack, "2401", {
        "mdtrtinfo": {"psn_no": psn, "insutype": "310", "coner_name": "家属", "tel": "13800000000",
                      "begntime": now(), "mdtrt_cert_type": "02", "mdtrt_cert_no": "", "med_type": "21",
                      "ipt_no": "ZY2026120001", "medrcdno": "BA0001", "atddr_no": "D440100000002",
                      "chfpdr_name": "李医生", "adm_diag_dscr": "肺炎", "adm_dept_codg": "A03",
                      "adm_dept_name": "呼吸内科", "adm_bed": "12", "dscg_maindiag_code": "J18.900",
                      "dscg_maindiag_name": "肺炎", "main_cond_dscr": "", "dise_codg": "", "dise_name": "",
                      "oprn_oprt_code": "", "oprn_oprt_name": "", "fpsc_no": "", "matn_type": "", "birctrl_type": "",
                      "latechb_flag": "", "geso_val": "", "fetts": "", "fetus_cnt": "", "pret_flag": "",
                      "birctrl_matn_date": "", "dise_type_code": "", "insuplc_admdvs": "360100",
                      "mdtrtarea_admvs": "440100"},
        "diseinfo": [{"psn_no": psn, "diag_type": "1", "maindiag_flag": "1", "diag_srt_no": "1",
                      "diag_code": "J18.900", "diag_name": "肺炎", "adm_cond": "", "diag_dept": "呼吸内科",
                      "dise_dor_no": "D440100000002", "dise_dor_name": "李医生", "diag_time": now()}]})
    assert adm["infcode"] == 0, adm
    stay = adm["output"]["result"]  # Out2401.result
    assert stay["ipt_otp_no"] == "ZY2026120001"
    up = await send(stack, "2301", {"feedetail": [
        fee_line(stay["mdtrt_id"], psn, "1", "003307000010000", "1.0000", "600.000000", "600.00"),
        fee_line(stay["mdtrt_id"], psn, "2", "XC09CAL032A001010100512", 30, "3.90", 117)]})  # above the 3.80 cap
    assert up["infcode"] == 0, up
    over = next(r for r in up["output"]["result"] if r["feedetl_sn"] == "2")
    assert D(over["overlmt_amt"]) == D("3.00") and D(over["preselfpay_amt"]) == D("11.40")  # (3.90−3.80)×30; 114×10 %
    done = await send(stack, "2304", {"data": settle_data(psn, stay["mdtrt_id"], "21", "717.00",
                                                          mid_setl_flag="0")})
    assert done["infcode"] == 0, done
    s = done["output"]["setlinfo"]
    assert (s["mdtrt_id"], s["clr_type"], D(s["medfee_sumamt"])) == (stay["mdtrt_id"], "21", D("717.00"))
    assert D(s["overlmt_selfpay"]) == D("3.00") and split_parts(s) == D("717.00")


async def test_what_an_adapter_gets_wrong_is_named(stack: Stack) -> None:
    psn = await stack.person()
    await stack.file(psn, "440100")
    adm = await send(stack, "2401", {"mdtrtinfo": {"psn_no": psn, "insutype": "310", "begntime": now(),
                                                   "med_type": "21"}})
    stay = adm["output"]["result"]["mdtrt_id"]
    body = {"infno": "2203", "msgid": new_msgid(GZ), "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100",
            "fixmedins_code": GZ, "input": {"mdtrtinfo": {"mdtrt_id": stay, "psn_no": psn, "med_type": "11"}}}
    r = await stack.http["settle"].post("/fsi/callService", json=body)
    assert r.status_code == 422 and "NOT_OUTPATIENT" in r.json()["err_msg"]  # 2203 is for outpatient visits
    body |= {"infno": "2302", "msgid": new_msgid(GZ), "input": {"data": {"mdtrt_id": stay, "psn_no": psn}}}
    r = await stack.http["settle"].post("/fsi/callService", json=body)
    assert r.status_code == 422 and "chrg_bchno" in r.json()["err_msg"]  # never "every line" by default
    body |= {"infno": "2401", "msgid": new_msgid(GZ), "input": {"mdtrtinfo": {"psn_no": psn, "insutype": "310",
                                                                              "begntime": now()}}}
    r = await stack.http["settle"].post("/fsi/callService", json=body)
    assert r.status_code == 422 and "med_type" in r.json()["err_msg"]  # an admission must say its med_type
    body |= {"msgid": new_msgid(GZ), "input": {"data": None}}
    r = await stack.http["settle"].post("/fsi/callService", json=body)
    assert r.status_code == 422 and "input.mdtrtinfo" in r.json()["err_msg"]
