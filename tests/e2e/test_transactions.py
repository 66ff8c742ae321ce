"""The hospital interface beyond 2207: pre-settlement (2206), reversal (2208), 冲正 (2601) and the
person's year-to-date accumulators (5206), all through the hop chain to the insured city."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from schemas.common import new_msgid
from services.enroll.domain import with_check_char
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import Stack
from tests.helpers import read_topic, wait_until

GZ, GZ2 = "H44010400001", "H44010600002"
D = Decimal


async def call(stack: Stack, infno: str, data: dict[str, Any], hospital: str = GZ) -> dict[str, Any]:
    body = {"infno": infno, "msgid": new_msgid(hospital), "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100",
            "fixmedins_code": hospital, "input": {"data": data}}
    r = await stack.http["settle"].post("/fsi/callService", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json() | {"msgid": body["msgid"]}  # type: ignore[no-any-return]


async def ytd(stack: Stack, psn: str) -> dict[str, Any]:
    await stack.present(psn, GZ)
    ans = await call(stack, "5206", {"psn_no": psn})
    assert ans["infcode"] == 0, ans
    return {k: v for k, v in ans["output"].items() if k != "hop_trace"}


# the national setlinfo / setldetail fields (reference: domain-nhsa.md, settlement output)
NATIONAL_SETLINFO = {"mdtrt_id", "setl_id", "psn_no", "psn_name", "psn_cert_type", "certno", "gend", "naty", "brdy",
                     "age", "insutype", "psn_type", "cvlserv_flag", "setl_time", "mdtrt_cert_type", "med_type",
                     "medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
                     "act_pay_dedc", "hifp_pay", "pool_prop_selfpay", "cvlserv_pay", "hifes_pay", "hifmi_pay",
                     "hifob_pay", "hifdm_pay", "maf_pay", "oth_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay",
                     "psn_cash_pay", "hosp_part_amt", "balc", "acct_mulaid_pay", "medins_setl_id", "clr_optins",
                     "clr_way", "clr_type"}
NATIONAL_SETLDETAIL = {"fund_pay_type", "fund_pay_type_name", "inscp_scp_amt", "crt_payb_lmt_amt", "fund_payamt",
                       "setl_proc_info"}


async def test_pre_settle_settle_reverse_and_redo(stack: Stack) -> None:
    psn = await stack.person(balance="500")
    await stack.file(psn, "440100")
    empty = await ytd(stack, psn)
    assert empty["cuminfo"] == [] and empty["acct_balc"] == "500.00"

    pre = await stack.settle_claim(psn, GZ, "440100", "360100", infno="2206")
    assert pre["infcode"] == 0 and pre["output"]["setlinfo"]["setl_id"].startswith("PRE")
    assert await ytd(stack, psn) == empty  # nothing kept

    done = await stack.settle_claim(psn, GZ, "440100", "360100")
    s = done["output"]["setlinfo"]
    assert {k: s[k] for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")} == \
        {k: pre["output"]["setlinfo"][k] for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")}
    used = await ytd(stack, psn)
    assert D(used["acct_balc"]) == D("500") - D(s["acct_pay"])
    rows = {r["cum_type_code"]: r for r in used["cuminfo"]}  # national rows: insutype, year, cum_ym, code, cum
    assert set(rows["D310101_BIZ11"]) == {"insutype", "year", "cum_ym", "cum_type_code", "cum"}
    assert D(rows["D310101_BIZ11"]["cum"]) == D(s["hifp_pay"]) and D(rows["Q0000_BIZ11"]["cum"]) == D(s["act_pay_dedc"])
    assert rows["Q0000_BIZ11"]["cum_ym"] == f"{datetime.now():%Y%m}" and rows["Q0000_BIZ11"]["insutype"] == "310"
    assert set(s) >= NATIONAL_SETLINFO, NATIONAL_SETLINFO - set(s)  # adapters read these without a null check
    assert all(set(d) >= NATIONAL_SETLDETAIL for d in done["output"]["setldetail"])
    assert s["age"] > 0 and s["brdy"] and s["certno"] == "" and D(s["hifes_pay"]) == D(s["acct_mulaid_pay"]) == 0

    # another hospital cannot reverse it; an unknown settlement is refused with a reason
    other = await call(stack, "2208", {"psn_no": psn, "setl_id": s["setl_id"]}, hospital=GZ2)
    assert other["output"]["err_code"] == "NOT_YOUR_SETTLEMENT"
    unknown = await call(stack, "2208", {"psn_no": psn, "setl_id": "360100000000000000000000000000"})
    assert unknown["infcode"] == -1 and unknown["output"]["err_code"] == "SETTLEMENT_UNKNOWN"

    rev = await call(stack, "2208", {"psn_no": psn, "setl_id": s["setl_id"]})
    assert rev["infcode"] == 0, rev
    r = rev["output"]["setlinfo"]
    assert D(r["medfee_sumamt"]) == -D(s["medfee_sumamt"]) and D(r["fund_pay_sumamt"]) == -D(s["fund_pay_sumamt"])
    assert rev["output"]["refd_setl_id"] == s["setl_id"]
    back = await ytd(stack, psn)
    assert back["acct_balc"] == "500.00"
    assert back["cuminfo"] and all(D(row["cum"]) == 0 for row in back["cuminfo"])
    status = (await stack.http["settle"].get(f"/claims/{done['msgid']}")).json()
    assert status["status"] == "reversed"
    again = await call(stack, "2208", {"psn_no": psn, "setl_id": s["setl_id"]})
    assert again["output"]["err_code"] == "ALREADY_REVERSED"

    # 冲正: the hospital never got the answer of a settlement; 2601 by its msgid undoes it
    lost = await stack.settle_claim(psn, GZ, "440100", "360100")
    redo = await call(stack, "2601", {"psn_no": psn, "omsgid": lost["msgid"]})
    assert redo["infcode"] == 0 and redo["output"]["effect"] == "reversed"
    assert (await ytd(stack, psn))["acct_balc"] == "500.00"

    # 冲正 of a request the insured city has not seen yet (still on its way): voided, refused should it come
    late = new_msgid(GZ)
    void = await call(stack, "2601", {"psn_no": psn, "omsgid": late})
    assert void["infcode"] == 0 and void["output"]["effect"] == "voided", void
    arrived = await stack.settle_claim(psn, GZ, "440100", "360100", msgid=late)
    assert arrived["output"]["err_code"] == "VOIDED" and void["msgid"] in arrived["err_msg"], arrived
    assert (await ytd(stack, psn))["acct_balc"] == "500.00"
    assert (await stack.http["settle"].get(f"/claims/{late}")).json()["status"] == "failed"


@pytest.mark.one_database
async def test_wrong_transaction_inputs_say_what_to_fix(stack: Stack) -> None:
    r = await stack.http["settle"].post("/fsi/callService", json={
        "infno": "2208", "msgid": new_msgid(GZ), "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100",
        "fixmedins_code": GZ, "input": {"data": {"psn_no": "P1"}}})
    assert r.status_code == 422 and "setl_id" in r.json()["err_msg"]


async def test_hospital_reconciliation_totals_and_detail(stack: Stack) -> None:
    psn = await stack.person()
    await stack.file(psn, "440100")
    a = (await stack.settle_claim(psn, GZ, "440100", "360100"))["output"]["setlinfo"]
    b = (await stack.settle_claim(psn, GZ, "440100", "360100"))["output"]["setlinfo"]
    r = (await call(stack, "2208", {"psn_no": psn, "setl_id": a["setl_id"]}))["output"]["setlinfo"]
    await stack.settle_claim(psn, GZ2, "440100", "360100")  # another hospital's: not in this hospital's books
    day = a["setl_time"][:10]
    period = {"stmt_begndate": day, "stmt_enddate": day}
    rows = [a, b, r]
    sums = {k: str(sum(D(x[k]) for x in rows)) for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")}

    ok = await call(stack, "3201", period | sums | {"fixmedins_setl_cnt": 1})
    assert ok["infcode"] == 0 and ok["output"]["stmt_rslt"] == "0", ok
    off = await call(stack, "3201", period | sums | {"fund_pay_sumamt": "0.00", "fixmedins_setl_cnt": 1})
    assert off["output"]["stmt_rslt"] == "1"
    assert D(off["output"]["difference"]["fund_pay_sumamt"]) == -D(sums["fund_pay_sumamt"])

    def row(x: dict[str, Any], **change: Any) -> dict[str, Any]:
        return {"setl_id": x["setl_id"], "psn_no": psn, "medfee_sumamt": x["medfee_sumamt"],
                "fund_pay_sumamt": x["fund_pay_sumamt"], "acct_pay": x["acct_pay"],
                "refd_setl_flag": "1" if D(x["medfee_sumamt"]) < 0 else "0"} | change
    body = {"infno": "3202", "msgid": new_msgid(GZ), "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100",
            "fixmedins_code": GZ, "input": {"data": period, "detail": [
                row(a), row(b, fund_pay_sumamt="1.00"), {**row(a), "setl_id": "X" * 30}]}}
    out = (await stack.http["settle"].post("/fsi/callService", json=body)).json()["output"]
    assert out["stmt_rslt"] == "1"
    assert [d["setl_id"] for d in out["differ"]] == [b["setl_id"]] and "fund_pay_sumamt" in out["differ"][0]["fields"]
    assert out["missing_at_platform"] == ["X" * 30]
    assert [m["setl_id"] for m in out["missing_at_hospital"]] == [r["setl_id"]]


def lines(*sns: str) -> list[dict[str, Any]]:
    catalogue = {"1": ("001102000010000", "25.00"), "2": ("003307000010000", "600.00"),
                 "3": ("XC09CAL032A001010100512", "3.50"), "4": ("001101000010000", "60.00")}
    return [{"feedetl_sn": sn, "med_list_codg": catalogue[sn][0], "cnt": 1, "pric": catalogue[sn][1],
             "det_item_fee_sumamt": catalogue[sn][1]} for sn in sns]


async def request(stack: Stack, infno: str, inp: dict[str, Any], msgid: str | None = None) -> Any:
    body = {"infno": infno, "msgid": msgid or new_msgid(GZ), "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100",
            "fixmedins_code": GZ, "input": inp}
    return await stack.http["settle"].post("/fsi/callService", json=body, timeout=60)


async def test_register_upload_settle_an_encounter(stack: Stack) -> None:
    psn = await stack.person()
    unfiled = await call(stack, "2201", {"psn_no": psn, "insutype": "310", "med_type": "11",
                                         "begntime": datetime_now()})
    assert unfiled["output"]["err_code"] == "NOT_FILED"  # the insured city decides at registration
    await stack.file(psn, "440100")
    visit = {"psn_no": psn, "insutype": "310", "med_type": "11", "begntime": datetime_now()}
    reg = await call(stack, "2201", visit)
    assert reg["infcode"] == 0, reg
    mdtrt_id = reg["output"]["data"]["mdtrt_id"]  # where adapters read it (2201: output.data)

    first_msgid = new_msgid(GZ)
    up = await request(stack, "2204", {"data": {"mdtrt_id": mdtrt_id}, "feedetail": lines("1", "2", "3")}, first_msgid)
    assert up.status_code == 200 and [x["chrgitm_lv"] for x in up.json()["output"]["result"]] == ["01", "02", "02"]
    again = await request(stack, "2204", {"data": {"mdtrt_id": mdtrt_id}, "feedetail": lines("1", "2", "3")},
                          first_msgid)
    assert again.json() == up.json()  # the same msgid again: the first answer, nothing uploaded twice
    dup = await request(stack, "2204", {"data": {"mdtrt_id": mdtrt_id}, "feedetail": lines("3")})
    assert dup.status_code == 422 and "FEE_DUPLICATE" in dup.json()["err_msg"]
    back = await request(stack, "2205", {"data": {"psn_no": psn, "mdtrt_id": mdtrt_id, "feedetl_sn": "3"}})
    assert back.json()["output"]["cancelled_lines"] == 1

    done = await call(stack, "2207", {"psn_no": psn, "mdtrt_id": mdtrt_id})
    assert done["infcode"] == 0, done
    assert D(done["output"]["setlinfo"]["medfee_sumamt"]) == D("625.00")  # lines 1 and 2: what was uploaded
    assert done["output"]["setlinfo"]["mdtrt_id"] == mdtrt_id  # the id the hospital registered, not a new one
    repeat = await request(stack, "2207", {"data": {"psn_no": psn, "mdtrt_id": mdtrt_id}}, done["msgid"])
    assert repeat.json()["output"]["setlinfo"]["setl_id"] == done["output"]["setlinfo"]["setl_id"]
    closed = await request(stack, "2204", {"data": {"mdtrt_id": mdtrt_id}, "feedetail": lines("4")})
    assert closed.status_code == 422 and "ENCOUNTER_CLOSED" in closed.json()["err_msg"]

    # an inpatient stay: 2401 admission, 2301 fees, 2304 discharge settlement
    adm = await call(stack, "2401", visit | {"med_type": "21"})
    stay = adm["output"]["result"]["mdtrt_id"]  # 2401: output.result
    assert (await request(stack, "2301", {"feedetail": [ln | {"mdtrt_id": stay} for ln in lines("2", "4")]})
            ).status_code == 200
    ip = await call(stack, "2304", {"psn_no": psn, "mdtrt_id": stay})
    assert ip["infcode"] == 0 and ip["output"]["setlinfo"]["clr_type"] == "21"

    # a registration that is not wanted any more
    other = (await call(stack, "2201", visit))["output"]["data"]["mdtrt_id"]
    r = await request(stack, "2202", {"data": {"psn_no": psn, "mdtrt_id": other}})
    assert r.json()["output"]["status"] == "cancelled"
    r = await request(stack, "2202", {"data": {"psn_no": psn, "mdtrt_id": other}})
    assert r.status_code == 422 and "ENCOUNTER_CLOSED" in r.json()["err_msg"]
    nothing = await request(stack, "2207", {"data": {"psn_no": psn, "mdtrt_id": "MD-none"}})
    assert nothing.status_code == 422 and "ENCOUNTER_UNKNOWN" in nothing.json()["err_msg"]


def datetime_now() -> str:
    return f"{datetime.now():%Y-%m-%d %H:%M:%S}"


async def test_person_info_by_id_card_without_the_number_on_the_bus(stack: Stack, broker: BrokerUnderTest) -> None:
    certno = with_check_char("36010219880808707")
    r = await stack.province("enroll", "360100").post("/enrolments/records", json={
        "certno": certno, "psn_name": "凭证", "insuplc_admdvs": "360100", "insutype": "310",
        "begndate": "2015-01-01", "paid_through": f"{datetime.now().year}-12-31",
        "hardship": [{"hardship_type": "DIBAO", "begndate": "2025-01-01"}],
        "card_no": "A36010001", "card_sn": "360100D156000005" + "0123456789ABCDEF"})
    psn = r.json()["psn_no"]
    await wait_until(lambda: stack._settle_knows(psn), what="settle to see the person")
    ans = await call(stack, "1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": certno})
    assert ans["infcode"] == 0, ans
    out = ans["output"]
    assert out["baseinfo"]["psn_no"] == psn and out["baseinfo"]["brdy"] == "1988-08-08"
    assert [(i["insutype"], i["psn_insu_stas"]) for i in out["insuinfo"]] == [("310", "1")]
    assert out["idetinfo"] == [{"psn_idet_type": "DIBAO", "begntime": "2025-01-01", "endtime": None}]
    unknown = await call(stack, "1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": with_check_char("11010519900101123")})
    assert unknown["output"]["err_code"] == "PERSON_UNKNOWN"
    card = await call(stack, "1101", {"mdtrt_cert_type": "03", "mdtrt_cert_no": "A36010001",
                                      "card_sn": "360100D156000005" + "0123456789ABCDEF"})
    assert card["output"]["baseinfo"]["psn_no"] == psn
    r = await request(stack, "1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "A36010001"}})
    assert r.status_code == 422 and "card_sn" in r.json()["err_msg"]
    r = await stack.province("enroll", "360100").post(f"/persons/{psn}/ectoken")
    assert r.status_code == 403  # only the person themselves
    token = (await stack.as_("enroll", "insured", psn).post(f"/persons/{psn}/ectoken")).json()["ectoken"]
    scanned = await call(stack, "1101", {"mdtrt_cert_type": "01", "mdtrt_cert_no": token})
    assert scanned["output"]["baseinfo"]["psn_no"] == psn
    r = await request(stack, "1101", {"data": {"mdtrt_cert_type": "01", "mdtrt_cert_no": token[:-1] + ("1" if token[-1] == "0" else "0")}})
    assert r.status_code == 422 and "校验失败" in r.json()["err_msg"]
    off = await stack.person(voucher=False)
    r = await stack.as_("enroll", "insured", off).post(f"/persons/{off}/ectoken")
    assert r.status_code == 422 and r.json()["code"] == "VOUCHER_INACTIVE"
    for topic in ("enroll.events", "settle.city", "settle.national"):  # the raw number never travels
        records = await read_topic(broker, topic, 10**6, timeout=3)  # everything there is
        assert records and all(certno.encode() not in (m.value or b"") for m in records)


async def test_chronic_disease_encounter(stack: Stack) -> None:
    psn = await stack.person()
    await stack.file(psn, "440100")
    reg = await call(stack, "2201", {"psn_no": psn, "insutype": "310", "med_type": "14", "dise_codg": "M01600",
                                     "begntime": datetime_now()})
    mdtrt_id = reg["output"]["data"]["mdtrt_id"]
    await request(stack, "2204", {"data": {"mdtrt_id": mdtrt_id}, "feedetail": lines("1")})
    done = await call(stack, "2207", {"psn_no": psn, "mdtrt_id": mdtrt_id})
    s = done["output"]["setlinfo"]
    assert done["infcode"] == 0 and D(s["act_pay_dedc"]) == 0  # 门诊慢特病: no deductible
    assert D(s["hifp_pay"]) > 0 and D(s["pool_prop_selfpay"]) == D("0.70")


@pytest.mark.one_database  # the crash is injected with a SQLite trigger
async def test_a_crash_between_an_upload_and_its_answer_leaves_neither(stack: Stack) -> None:
    """The upload and the msgid's answer commit together: after a crash between them, the resend
    with the same msgid uploads once and answers, instead of FEE_DUPLICATE."""
    psn = await stack.person()
    await stack.file(psn, "440100")
    reg = await call(stack, "2201", {"psn_no": psn, "insutype": "310", "med_type": "11", "begntime": datetime_now()})
    upload = {"data": {"mdtrt_id": reg["output"]["data"]["mdtrt_id"]}, "feedetail": lines("1", "2")}
    msgid = new_msgid(GZ)
    with stack.settle.engine.begin() as c:
        c.exec_driver_sql(f"CREATE TRIGGER crash BEFORE INSERT ON settle_local_answer WHEN NEW.msgid = '{msgid}' "
                          "BEGIN SELECT RAISE(ABORT, 'injected crash'); END")
    with pytest.raises(Exception, match="injected crash"):
        await request(stack, "2204", upload, msgid)
    with stack.settle.engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER crash")
    again = await request(stack, "2204", upload, msgid)
    assert again.status_code == 200, again.text
    assert [x["feedetl_sn"] for x in again.json()["output"]["result"]] == ["1", "2"]
