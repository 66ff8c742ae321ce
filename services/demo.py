"""`yibao demo`: a narrated scenario against a running platform (`make run`)."""

from __future__ import annotations

import secrets
import time
from datetime import date, datetime, timedelta
from typing import Any

import httpx

from schemas.common import new_msgid
from services.enroll.domain import with_check_char
from services.identity import headers_for
from services.platform import DEFAULT_PORTS
from services.settle.auth import SigningAuth

HOSPITAL = "H44010400001"  # 广州市第一人民医院, 三级, cross-province enabled


def say(text: str) -> None:
    print(f"\n▶ {text}")


def wait_for(what: str, probe: Any, timeout: float = 15.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > end:
            raise SystemExit(f"gave up waiting for {what} after {timeout}s: is `make run` up?")
        time.sleep(0.2)


def fee_lines() -> list[dict[str, Any]]:
    return [
        {"feedetl_sn": "1", "med_list_codg": "001102000010000", "cnt": 1, "pric": "25.00", "det_item_fee_sumamt": "25.00"},
        {"feedetl_sn": "2", "med_list_codg": "XC09CAL032A001010100512", "cnt": 30, "pric": "4.00", "det_item_fee_sumamt": "120.00"},
        {"feedetl_sn": "3", "med_list_codg": "003307000010000", "cnt": 1, "pric": "650.00", "det_item_fee_sumamt": "650.00"},
        {"feedetl_sn": "4", "med_list_codg": "XN02BEA086A001010100777", "cnt": 2, "pric": "18.50", "det_item_fee_sumamt": "37.00"},
        {"feedetl_sn": "5", "med_list_codg": "002703000030000", "cnt": 1, "pric": "150.00", "det_item_fee_sumamt": "150.00"},
    ]


def claim(psn_no: str, lines: list[dict[str, Any]], infno: str = "2207", med_type: str = "11",
          begin: date | None = None, diagnosis: str | None = None) -> dict[str, Any]:
    """A hospital's settlement request in the national envelope."""
    day = f"{begin} 08:00:00" if begin else f"{datetime.now():%Y-%m-%d %H:%M:%S}"
    return {"infno": infno, "msgid": new_msgid(HOSPITAL), "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100",
            "fixmedins_code": HOSPITAL, "fixmedins_name": "广州市第一人民医院", "infver": "V1.0",
            "opter_type": "1", "opter": "0001", "opter_name": "收费员", "inf_time": f"{datetime.now():%Y-%m-%d %H:%M:%S}",
            "input": {"data": {"psn_no": psn_no, "insutype": "310", "med_type": med_type, "mdtrt_cert_type": "02",
                               "acct_used_flag": "1", "begntime": day}, "feedetail": lines,
                      "diseinfo": [{"diag_code": diagnosis}] if diagnosis else []}}


def stay(psn_no: str, begin: date, days: int, diagnosis: str) -> dict[str, Any]:
    """2304 for an inpatient stay: a bed each day, the operation on the first."""
    lines = [{"feedetl_sn": str(i), "med_list_codg": "001101000010000", "cnt": 1, "pric": "60.00",
              "det_item_fee_sumamt": "60.00", "fee_ocur_time": f"{begin + timedelta(days=i)} 08:00:00"} for i in range(days)]
    lines.append({"feedetl_sn": "op", "med_list_codg": "003313000010000", "cnt": 1, "pric": "1500.00",
                  "det_item_fee_sumamt": "1500.00", "fee_ocur_time": f"{begin} 10:00:00"})
    return claim(psn_no, lines, infno="2304", med_type="21", begin=begin, diagnosis=diagnosis)


def show_alerts(alerts: list[dict[str, Any]]) -> None:
    for a in alerts:
        print(f"  ALERT {a['rule_id']} {a['rule_name']} [{a['sev_deg']}] at {a['fixmedins_code']}: "
              f"{a['vola_cont']} (¥{a['vola_amt']})")


def main(host: str = "127.0.0.1", ports: dict[str, int] | None = None) -> None:
    url = {k: f"http://{host}:{p}" for k, p in (ports or DEFAULT_PORTS).items()}
    c = httpx.Client(timeout=30, auth=SigningAuth())  # hospitals sign their calls (x-tif-* headers)
    for name, u in url.items():
        try:
            c.get(u + "/healthz").raise_for_status()
        except httpx.HTTPError:
            raise SystemExit(f"{name} does not answer at {u}: start the platform with `make run` first") from None

    # each caller has an identity: the hospital signs (x-tif-*), the others carry bearer tokens
    jiangxi = headers_for("province", "360000", "jiangxi-platform")
    supervisor = headers_for("supervisor", "440000", "guangdong-supervision")
    say("1. 参保登记 — a 南昌 (360100) employee is registered and enrolled in 职工医保 (310)")
    certno = with_check_char(f"360102{1975 + secrets.randbelow(20)}0612{secrets.randbelow(500) * 2 + 1:03d}")
    r = c.post(url["enroll"] + "/persons", json={"certno": certno, "psn_name": "李建国", "admdvs": "360100"},
               headers=jiangxi)
    r.raise_for_status()
    psn = r.json()
    print(f"  registered {psn['psn_name']} ({psn['certno']}), gender {psn['gend']}, born {psn['brdy']} → psn_no {psn['psn_no']}")
    r = c.post(url["enroll"] + "/enrolments", json={
        "psn_no": psn["psn_no"], "insuplc_admdvs": "360100", "insutype": "310", "psn_type": "11",
        "paid_through": f"{date.today().year}-12-31", "voucher_active": True, "acct_balc": "3000.00",
        "begndate": str(date.today() - timedelta(days=90))}, headers=jiangxi)
    r.raise_for_status()
    print("  enrolled: 360100 职工医保 since 90 days ago, 在职, paid to year end, 个人账户 3000.00 → enroll.events")

    say("2. 异地就医备案 — he files 异地转诊 (referral by 江西省人民医院 H36010200001) to 广州 (440100)")
    def try_file() -> Any:
        r = c.post(url["filing"] + "/filings", json={
            "psn_no": psn["psn_no"], "fil_type": "REFERRAL", "target_admdvs": "440100",
            "begndate": str(date.today() - timedelta(days=30)), "referral_fixmedins_code": "H36010200001"},
            headers=jiangxi)
        return r.json() if r.status_code == 201 else None
    filing = wait_for("the filing service to see the enrolment", try_file)
    print(f"  filing {filing['fil_id']}: REFERRAL → 440100, valid {filing['begndate']} … {filing['enddate']} → filing.events")
    wait_for("the insured city to see the filing", lambda: (
        (r := c.get(f"{url['settle']}/persons/{psn['psn_no']}/status", headers=jiangxi)).status_code == 200
        and r.json()["filings"]))

    say(f"3. 门诊结算 (2207) at {HOSPITAL} 广州市第一人民医院 — the claim crosses every hop")
    req = claim(psn["psn_no"], fee_lines())
    t0 = time.perf_counter()
    ans = c.post(url["settle"] + "/fsi/callService", json=req).json()
    ms = (time.perf_counter() - t0) * 1000
    if ans["infcode"] != 0:
        raise SystemExit(f"  settlement refused: {ans['err_msg']}")
    out = ans["output"]
    s = out["setlinfo"]
    print(f"  answered in {ms:.0f} ms, infcode 0, setl_id {s['setl_id']} for {s['psn_name']} "
          "(the name travelled sealed; the settle API opened it for the hospital)")
    print("\n  fee lines as split by the treatment city's catalogue (就医地目录):")
    print(f"  {'sn':>3} {'item':<24} {'lv':>3} {'amount':>9} {'全自费':>8} {'超限价':>8} {'先自付':>8} {'范围内':>9}")
    for f in out["feedetail"]:
        print(f"  {f['feedetl_sn']:>3} {f['med_list_codg']:<24} {f['chrgitm_lv']:>3} {f['det_item_fee_sumamt']:>9} "
              f"{f['fulamt_ownpay_amt']:>8} {f['overlmt_amt']:>8} {f['preselfpay_amt']:>8} {f['inscp_scp_amt']:>9}")
    print("\n  one-bill split by the insured city's policy (参保地政策, 360100, REFERRAL: +10% 先行自付):")
    for k, label in [("medfee_sumamt", "医疗费总额"), ("fulamt_ownpay_amt", "全自费"), ("overlmt_selfpay", "超限价自费"),
                     ("preselfpay_amt", "先行自付"), ("inscp_scp_amt", "符合政策范围"), ("act_pay_dedc", "起付线"),
                     ("pool_prop_selfpay", "统筹支付比例"), ("hifp_pay", "统筹基金支付"), ("fund_pay_sumamt", "基金支付总额"),
                     ("psn_part_amt", "个人负担"), ("acct_pay", "个人账户支付"), ("psn_cash_pay", "现金支付"), ("balc", "账户余额")]:
        print(f"    {label:<10} {k:<18} {s[k]:>10}")
    print("\n  hop trace (ms since the first hop received the claim):")
    t_first = out["hop_trace"][0]["received_ms"]
    prev = None
    for h in out["hop_trace"]:
        transit = f"+{h['received_ms'] - prev:>3} ms in transit" if prev else ""
        print(f"    {h['received_ms'] - t_first:>5} ms  {h['level']:<8} {h['admdvs']}  {h['action']:<7} {transit}")
        prev = h["sent_ms"]

    for row in out.get("precheck", []):
        sns = ",".join(d["feedetl_sn"] for d in row["judge_result_detail_dtos"])
        print(f"\n  事中审核 flagged lines {sns}: {row['rule_id']} "
              f"{row['rule_name']} [{row['sev_deg']}] {row['vola_cont']}")

    say("4. 事中审核 — a prescription pairs 克拉霉素 with 辛伐他汀 (配伍禁忌): refused before it is paid")
    pair = [{"feedetl_sn": "1", "med_list_codg": "001102000010000", "cnt": 1, "pric": "25.00", "det_item_fee_sumamt": "25.00"},
            {"feedetl_sn": "2", "med_list_codg": "XJ01FAK001A001010100333", "cnt": 1, "pric": "30.00", "det_item_fee_sumamt": "30.00"},
            {"feedetl_sn": "3", "med_list_codg": "XC10AAX001A001010100444", "cnt": 1, "pric": "15.00", "det_item_fee_sumamt": "15.00"}]
    refused = c.post(url["settle"] + "/fsi/callService", json=claim(psn["psn_no"], pair)).json()
    print(f"  infcode {refused['infcode']} {refused['output'].get('err_code')}: {refused['err_msg']}")
    again = c.post(url["settle"] + "/fsi/callService", json=claim(psn["psn_no"], pair[:2])).json()
    print(f"  the hospital takes line 3 off and settles again: infcode {again['infcode']}, "
          f"fund pays {again['output']['setlinfo']['fund_pay_sumamt']}")

    say("5. 智能监控 after settlement — 宫颈细胞学检查 is restricted to women; the claim was billed for a man")
    alerts = wait_for("the gender-rule alert", lambda: [a for a in c.get(
        url["monitor"] + "/alerts", params={"msgid": str(req["msgid"])}, headers=supervisor).json()
        if a["rule_id"] == "R-GENDER"])
    show_alerts(c.get(url["monitor"] + "/alerts", params={"msgid": str(req["msgid"])}, headers=supervisor).json()
                or alerts)
    print(f"\n  The same msgid again returns the first answer; status: GET {url['settle']}/claims/{req['msgid']}")

    say("6. 分解住院 — discharged, then admitted again 8 days later with a related diagnosis (a window over his history)")
    first = date.today() - timedelta(days=25)
    for begin, days, diag in ((first, 5, "K35.800"), (first + timedelta(days=12), 3, "K35.900")):
        body = stay(psn["psn_no"], begin, days, diag)
        ans = c.post(url["settle"] + "/fsi/callService", json=body).json()
        print(f"  2304 住院结算 {begin} for {days} days, diagnosis {diag}: infcode {ans['infcode']} "
              f"{ans.get('err_msg') or ''}")
    second = body["msgid"]
    split = wait_for("the split-admission alert", lambda: c.get(
        url["monitor"] + "/alerts", params={"msgid": second, "rule_id": "R-SPLIT-ADM"}, headers=supervisor).json())
    show_alerts(split)

    say("7. 每个调用方都有身份 — without one, or outside its own scope, nothing is answered")
    r = httpx.get(f"{url['enroll']}/persons/{psn['psn_no']}", timeout=10)
    print(f"  anonymous GET /persons/{psn['psn_no']} → {r.status_code}: {r.json()['error']}")
    r = c.get(f"{url['enroll']}/persons/{psn['psn_no']}", headers=headers_for("province", "440000", "guangdong-platform"))
    print(f"  广东's platform asks for 江西's insured → {r.status_code}: {r.json()['error']}")
    print("  tokens: `yibao token --role province --scope 360000 --name <who>` (see docs/guide.md, Callers)")
