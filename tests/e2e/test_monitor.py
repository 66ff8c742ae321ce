"""智能监控 through the real services: the pre-check refuses a claim's line or flags it in the answer,
the after-settlement rules raise windowed alerts (分解住院, a death learnt late), supervisors work
cases and hospitals appeal, each seeing only their own; the 3101 check at the monitor."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.settle.auth import SigningAuth
from tests.e2e.stack import DEFAULT_LINES, GZ_HOSPITAL, Stack, ledger_rows
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
D = Decimal
SIGN = SigningAuth()  # the x-tif-* headers of a hospital, for requests without a fixmedins_code in the body
CLARI = {"feedetl_sn": "7", "med_list_codg": "XJ01FAK001A001010100333", "cnt": 1, "pric": "30.00",
         "det_item_fee_sumamt": "30.00"}
SIMVA = {"feedetl_sn": "8", "med_list_codg": "XC10AAX001A001010100444", "cnt": 1, "pric": "15.00",
         "det_item_fee_sumamt": "15.00"}
OVER_CAP = {"feedetl_sn": "6", "med_list_codg": "XC09CAL032A001010100512", "cnt": 10, "pric": "4.00",
            "det_item_fee_sumamt": "40.00"}  # 氯沙坦钾片, capped at 3.80


async def alerts_of(stack: Stack, role: str, scope: str, **params: Any) -> list[dict[str, Any]]:
    r = await stack.as_("monitor", role, scope).get("/alerts", params=params)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.one_database
async def test_the_precheck_refuses_a_contraindicated_pair_and_flags_a_price_over_the_cap(stack: Stack) -> None:
    psn = await stack.person("360100")
    await stack.file(psn, "440100", "REFERRAL")
    refused = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100", lines=[*DEFAULT_LINES, CLARI, SIMVA])
    assert refused["infcode"] == -1 and "R-CONTRA" in refused["err_msg"], refused
    assert "明细 7,8" in refused["err_msg"]
    assert ledger_rows(stack, refused["msgid"]) == []  # refused before the insured city saw it

    flagged = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100", lines=[*DEFAULT_LINES, OVER_CAP])
    assert flagged["infcode"] == 0, flagged
    rows = flagged["output"]["precheck"]
    assert [(r["rule_id"], r["action"], r["vola_amt"]) for r in rows] == [("R-OVERSTD", "flag", "2.00")]
    assert rows[0]["judge_result_detail_dtos"][0]["feedetl_sn"] == "6"
    assert len(ledger_rows(stack, flagged["msgid"])) == 1


async def test_a_readmission_within_15_days_raises_the_split_admission_alert(stack: Stack) -> None:
    first_day = date.today() - timedelta(days=20)
    psn = await stack.person("360100", since=first_day - timedelta(days=30))
    await stack.file(psn, "440100", "REFERRAL", since=first_day)

    async def stay(begin: date, days: int, diag: str) -> dict[str, Any]:
        lines = [{"feedetl_sn": str(i), "med_list_codg": "001101000010000", "cnt": 1, "pric": "60.00",
                  "det_item_fee_sumamt": "60.00", "fee_ocur_time": f"{begin + timedelta(days=i)} 08:00:00"}
                 for i in range(days)]
        lines.append({"feedetl_sn": "s", "med_list_codg": "003313000010000", "cnt": 1, "pric": "1500.00",
                      "det_item_fee_sumamt": "1500.00", "fee_ocur_time": f"{begin} 10:00:00"})
        body = {"infno": "2304", "msgid": f"{GZ_HOSPITAL}{begin:%Y%m%d}{days:02d}{psn[-6:]}"[:30],
                "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100", "fixmedins_code": GZ_HOSPITAL,
                "input": {"data": {"psn_no": psn, "insutype": "310", "med_type": "21", "begntime": f"{begin}"},
                          "feedetail": lines, "diseinfo": [{"diag_code": diag, "diag_name": "阑尾炎"}]}}
        r = await stack.http["settle"].post("/fsi/callService", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["infcode"] == 0, r.text
        return r.json() | {"msgid": body["msgid"]}

    await stay(first_day, 5, "K35.800")  # discharged on day 4
    second = await stay(first_day + timedelta(days=12), 3, "K35.900")  # 8 days later, the same K35
    found = await wait_until(lambda: alerts_of(stack, "supervisor", "440000", msgid=second["msgid"],
                                               rule_id="R-SPLIT-ADM"), what="the split-admission alert")
    assert "出院 8 天后再次入院" in found[0]["vola_cont"] and found[0]["psn_no"] == psn
    assert found[0]["sev_deg"] == "高度可疑" and found[0]["phase"] == "post"


async def test_a_death_recorded_after_the_settlement_raises_r_dead(stack: Stack) -> None:
    psn = await stack.person("360100")
    await stack.file(psn, "440100", "REFERRAL")
    ans = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100", lines=[*DEFAULT_LINES, OVER_CAP])
    assert ans["infcode"] == 0, ans
    await wait_until(lambda: alerts_of(stack, "supervisor", "440000", msgid=ans["msgid"]),
                     what="the monitor to judge the settlement (its price-cap alert)")
    r = await stack.province("enroll", "360100").post("/enrolments", json={
        "psn_no": psn, "insuplc_admdvs": "360100", "insutype": "310", "paid_through": f"{date.today().year}-12-31",
        "voucher_active": True, "death_date": str(date.today() - timedelta(days=2))})
    assert r.status_code == 201, r.text
    found = await wait_until(lambda: alerts_of(stack, "supervisor", "440000", msgid=ans["msgid"], rule_id="R-DEAD"),
                             what="R-DEAD on the settlement made after the death")
    assert "死亡信息晚于结算到达" in found[0]["vola_cont"] and len(found) == 1


@pytest.mark.one_database
async def test_cases_are_worked_by_the_region_and_appealed_by_the_hospital(stack: Stack) -> None:
    psn = await stack.person("360100")
    await stack.file(psn, "440100", "REFERRAL")
    ans = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100", lines=[*DEFAULT_LINES, OVER_CAP])
    alert = (await wait_until(lambda: alerts_of(stack, "supervisor", "440000", msgid=ans["msgid"],
                                                rule_id="R-OVERSTD"), what="the price-cap alert"))[0]
    assert alert["alert_id"] == f"R-OVERSTD-{ans['msgid']}"

    # another region's supervisor neither sees it nor may open a case on it
    assert await alerts_of(stack, "supervisor", "360000", msgid=ans["msgid"]) == []
    other = stack.as_("monitor", "supervisor", "360000")
    r = await other.post("/cases", json={"alert_ids": [alert["alert_id"]], "title": "超标准收费"})
    assert r.status_code == 403 and "outside the region" in r.json()["error"]

    sup = stack.as_("monitor", "supervisor", "440000")
    r = await sup.post("/cases", json={"alert_ids": [alert["alert_id"]], "title": "氯沙坦钾片超限价"})
    assert r.status_code == 201, r.text
    case = r.json()
    assert case["status"] == "open" and D(case["vola_amt"]) == D("2.00")
    r = await sup.post("/cases", json={"alert_ids": [alert["alert_id"]], "title": "again"})
    assert r.status_code == 409 and "already in a case" in r.json()["error"]

    steps = f"/cases/{case['case_id']}/steps"
    r = await sup.post(steps, json={"step": "confirm", "recovered_amt": "2.00"})
    assert r.status_code == 409 and "confirm needs investigating" in r.json()["error"]
    assert (await sup.post(steps, json={"step": "investigate", "note": "调取处方"})).status_code == 200
    r = await sup.post(steps, json={"step": "confirm"})
    assert r.status_code == 422 and "recovered_amt" in r.json()["error"]
    r = await sup.post(steps, json={"step": "confirm", "recovered_amt": "2.00", "note": "追回超收部分"})
    assert r.status_code == 200 and r.json()["status"] == "confirmed"

    # the hospital sees its own alert and case, appeals; the supervisor answers
    hosp = stack.http["monitor"]  # signs as the hospital with x-tif-*
    mine = (await hosp.get("/alerts", params={"msgid": ans["msgid"]}, headers=SIGN.headers(GZ_HOSPITAL)))
    assert mine.status_code == 200, mine.text
    assert [a["alert_id"] for a in mine.json()] == [alert["alert_id"]]
    assert "certno" not in mine.text and "psn_name" not in mine.text
    r = await sup.post(steps, json={"step": "appeal", "note": "x"})
    assert r.status_code == 403 and "taken by the hospital" in r.json()["error"]
    r = await hosp.post(steps, json={"step": "appeal", "note": "限价调整前采购"},
                        headers=SIGN.headers(GZ_HOSPITAL))
    assert r.status_code == 200 and r.json()["status"] == "appealed", r.text
    r = await sup.post(steps, json={"step": "reject_appeal", "note": "限价已于上月公布"})
    body = r.json()
    assert body["status"] == "confirmed" and body["appeal"] == "限价调整前采购"
    assert [h["action"] for h in body["history"]] == ["open", "investigate", "confirm", "appeal", "reject_appeal"]

    # another hospital sees none of it
    other_hosp = "H44010600002"
    r = await hosp.get(f"/cases/{case['case_id']}", headers=SIGN.headers(other_hosp))
    assert r.status_code == 404


@pytest.mark.one_database
async def test_the_3101_check_judges_orders_with_the_persons_gender(stack: Stack) -> None:
    body = {"infno": "3101", "input": {"data": {"trig_scen": "2", "task_id": "T1", "patient_dtos": [{
        "patn_id": "P-3101", "gend": "1", "brdy": "1980-01-01", "poolarea": "360100",
        "fsi_encounter_dtos": [{
            "mdtrt_id": "MD1", "medins_id": GZ_HOSPITAL, "medins_lv": "3", "medins_admdvs": "440100",
            "adm_date": str(date.today()), "med_type": "11",
            "fsi_diagnose_dtos": [{"dise_codg": "N40.x00"}],
            "fsi_order_dtos": [
                {"rx_id": "1", "hilist_code": "002703000030000", "cnt": 1, "pric": 150, "sumamt": 150},
                {"rx_id": "2", "hilist_code": "XJ01FAK001A001010100333", "cnt": 1, "pric": 30, "sumamt": 30},
                {"rx_id": "3", "hilist_code": "XC10AAX001A001010100444", "cnt": 1, "pric": 15, "sumamt": 15}]}]}]}}}
    r = await stack.http["monitor"].post("/review", json=body, headers=SIGN.headers(GZ_HOSPITAL))
    assert r.status_code == 200, r.text
    got = {(x["rule_id"], x["sev_deg"], tuple(d["feedetl_sn"] for d in x["judge_result_detail_dtos"]))
           for x in r.json()["output"]["result"]}
    assert got == {("R-GENDER", "明确违规", ("1",)), ("R-CONTRA", "明确违规", ("2", "3"))}
    body["input"]["data"]["patient_dtos"][0]["fsi_encounter_dtos"][0]["medins_id"] = "H44010600002"  # type: ignore[index]
    r = await stack.http["monitor"].post("/review", json=body, headers=SIGN.headers(GZ_HOSPITAL))
    assert r.status_code == 403 and "its own encounters" in r.json()["error"]
    r = await stack.as_("monitor", "supervisor", "440000").post("/review", json=body)
    assert r.status_code == 403
