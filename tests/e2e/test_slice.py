"""The vertical slice end to end: enrol, file, settle across every hop, see the alert."""

from __future__ import annotations

import asyncio
import secrets
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from sqlmodel import Session, select

from schemas.regions import designated_hospitals
from services.bus.faults import Fault
from services.enroll.domain import with_check_char
from services.settle.auth import hospital_headers
from services.settle.store import LedgerEntry
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import (
    DEFAULT_LINES,
    FEMALE_ONLY_LINE,
    GZ_HOSPITAL,
    Stack,
    claim_body,
    ledger_rows,
)
from tests.helpers import headers_of, read_all, read_until, wait_until

pytestmark = pytest.mark.integration
D = Decimal
@pytest.mark.embedded_smoke
async def test_cross_province_outpatient_settlement(stack: Stack, broker: BrokerUnderTest) -> None:
    psn = await stack.person("360100", balance="100.00")
    await stack.file(psn, "440100", "REFERRAL")
    ans = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100", lines=[*DEFAULT_LINES, FEMALE_ONLY_LINE])
    assert ans["infcode"] == 0, ans
    s = ans["output"]["setlinfo"]
    total = D(s["medfee_sumamt"])
    assert total == D("812.00")
    assert D(s["fund_pay_sumamt"]) + D(s["psn_part_amt"]) == total
    assert D(s["acct_pay"]) + D(s["psn_cash_pay"]) == D(s["psn_part_amt"])
    assert D(s["fulamt_ownpay_amt"]) + D(s["overlmt_selfpay"]) + D(s["preselfpay_amt"]) + D(s["inscp_scp_amt"]) == total
    assert s["clr_optins"] == "360100" and s["medins_setl_id"] == ans["msgid"]
    tct = next(line for line in ans["output"]["feedetail"] if line["feedetl_sn"] == FEMALE_ONLY_LINE["feedetl_sn"])
    assert tct["lmt_reason"] == "限女性使用" and D(tct["fulamt_ownpay_amt"]) == D("150.00")  # decided at the insured city
    assert D(s["acct_pay"]) == D("100.00") and D(s["balc"]) == 0
    trace = ans["output"]["hop_trace"]
    assert [(h["level"], h["admdvs"]) for h in trace] == [
        ("city", "440100"), ("province", "440000"), ("national", "360000"), ("province", "360000"),
        ("city", "360100"), ("province", "360000"), ("national", "360000"), ("province", "440000"),
        ("city", "440100")]
    assert len(ledger_rows(stack, ans["msgid"])) == 1

    # the result is on settle.hospital (keyed by hospital) and settle.completed (keyed by person)
    for topic, key in (("settle.hospital", GZ_HOSPITAL), ("settle.completed", psn)):
        def mine(records: list[Any]) -> list[Any]:
            return [r for r in records if headers_of(r).get("ce_correlationid") == ans["msgid"]]

        recs = mine(await read_until(broker, topic, lambda rs: bool(mine(rs)), what="this claim's result"))
        assert recs[0].key.decode() == key
        assert orjson.loads(recs[0].value)["outcome"]["setlinfo"]["setl_id"] == s["setl_id"]

    # the gender rule: a female-only item billed for a man
    alerts = await wait_until(lambda: _alerts(stack, ans["msgid"]), what="the gender alert")
    assert alerts[0]["rule_id"] == "R-GENDER" and D(alerts[0]["vola_amt"]) == D("150.00")

    # the same msgid again: the first answer, and no second ledger entry
    again = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100", msgid=ans["msgid"])
    assert again["output"]["setlinfo"]["setl_id"] == s["setl_id"]
    assert len(ledger_rows(stack, ans["msgid"])) == 1
    status = (await stack.http["settle"].get(f"/claims/{ans['msgid']}")).json()
    assert status["status"] == "settled" and len(status["result"]["trace"]) == 9


async def _alerts(stack: Stack, msgid: str) -> list[dict]:  # type: ignore[type-arg]
    return (await stack.as_("monitor", "supervisor", "440000").get("/alerts", params={"msgid": msgid})).json()  # type: ignore[no-any-return]


async def test_local_and_intra_province_claims_take_their_own_routes(stack: Stack) -> None:
    psn = await stack.person("360100")
    local = await stack.settle_claim(psn, "H36010200001", "360100", "360100")
    assert local["infcode"] == 0 and len(local["output"]["hop_trace"]) == 3
    intra = await stack.settle_claim(psn, "H36040200001", "360400", "360100")
    assert intra["infcode"] == 0 and [h["level"] for h in intra["output"]["hop_trace"]] == [
        "city", "province", "city", "province", "city"]


async def test_refusals_a_desk_clerk_understands(stack: Stack) -> None:
    cases = []
    lapsed = await stack.person("360100", paid_through="2025-06-30")

    async def file_lapsed() -> dict | None:  # type: ignore[type-arg]
        r = await stack.province("filing", "360100").post("/filings", json={
            "psn_no": lapsed, "fil_type": "REFERRAL", "target_admdvs": "440100", "begndate": "2026-01-01"})
        assert r.status_code == 422
        return None if "没有参保记录" in r.json()["error"] else r.json()  # not seen by filing yet

    assert "缴费中断" in (await wait_until(file_lapsed, what="filing to see the enrolment"))["error"]
    cases.append(("CONTRIBUTION_LAPSED", "缴费中断", await stack.settle_claim(lapsed, GZ_HOSPITAL, "440100", "360100")))
    cases.append(("PERSON_UNKNOWN", "查无此人员", await stack.settle_claim("360100999999999999", GZ_HOSPITAL, "440100", "360100")))
    no_voucher = await stack.person("360100", voucher=False)
    await stack.file(no_voucher, "440100")
    cases.append(("VOUCHER_INACTIVE", "电子凭证未激活",
                  await stack.settle_claim(no_voucher, GZ_HOSPITAL, "440100", "360100", cert="01")))
    unfiled = await stack.person("360100")
    cases.append(("NOT_FILED", "备案", await stack.settle_claim(unfiled, GZ_HOSPITAL, "440100", "360100")))
    cases.append(("HOSPITAL_NOT_ENABLED", "未开通跨省",
                  await stack.settle_claim(unfiled, "H33020600003", "330200", "360100")))
    for code, words, ans in cases:
        assert ans["infcode"] == -1, (code, ans)
        assert ans["output"]["err_code"] == code and words in ans["err_msg"], (code, ans)
    emergency = await stack.settle_claim(unfiled, GZ_HOSPITAL, "440100", "360100", med_type="13")
    assert emergency["infcode"] == 0  # 急诊抢救视同已备案
    with Session(stack.settle.engine) as s:
        refused = [ans["msgid"] for _, _, ans in cases]
        assert not s.exec(select(LedgerEntry).where(LedgerEntry.msgid.in_(refused))).all()  # type: ignore[attr-defined]


async def test_wrong_requests_get_a_4xx_that_says_what_to_fix(stack: Stack) -> None:
    settle = stack.http["settle"]
    enroll, filing = stack.province("enroll", "360100"), stack.province("filing", "360100")
    monitor, ops = stack.as_("monitor", "supervisor", "000000"), stack.operator("settle")
    def gz() -> dict[str, str]:  # a body without fixmedins_code is not signed by SigningAuth: sign it here
        return hospital_headers(GZ_HOSPITAL, designated_hospitals()[GZ_HOSPITAL]["key"])
    r = await settle.post("/fsi/callService", json={"infno": "2207"}, headers=gz())
    assert r.status_code == 422 and r.json()["infcode"] == -1 and "msgid" in r.json()["err_msg"]
    body = claim_body("P1", GZ_HOSPITAL, "440100", "360100")
    r = await settle.post("/fsi/callService", json=body | {"infno": "9999"})
    assert r.status_code == 400 and "9999" in r.json()["err_msg"]
    r = await settle.post("/fsi/callService", json=body | {"insuplc_admdvs": "999999"})
    assert r.status_code == 400 and "999999" in r.json()["err_msg"]
    body["input"]["feedetail"] = []
    r = await settle.post("/fsi/callService", json=body)
    assert r.status_code == 422 and "feedetail" in r.json()["err_msg"]
    r = await settle.post("/fsi/callService", content=b"{not json", headers={"content-type": "application/json"} | gz())
    assert r.status_code == 422 and "not valid JSON (parsing stopped at character 1)" in r.json()["err_msg"]
    r = await settle.get("/claims/H44010400001209901010000000")
    assert r.status_code == 404
    r = await enroll.post("/persons", json={"certno": "110105194912310021", "psn_name": "x", "admdvs": "360100"})
    assert r.status_code == 422 and "校验码" in r.json()["error"]
    r = await enroll.post("/enrolments", json={"psn_no": "nobody", "insuplc_admdvs": "360100", "insutype": "310"})
    assert r.status_code == 404
    r = await enroll.post("/enrolments", json={"psn_no": "x", "insuplc_admdvs": "360100", "insutype": "311"})
    assert r.status_code == 422 and "insutype" in r.json()["error"]
    r = await filing.post("/filings", json={"psn_no": "nobody", "fil_type": "REFERRAL", "target_admdvs": "440100",
                                            "begndate": "2026-01-01"})
    assert r.status_code == 422 and "没有参保记录" in r.json()["error"]
    r = await monitor.get("/alerts", params={"fixmedins_code": "bad"})
    assert r.status_code == 422
    r = await ops.put("/ops/faults", json={"level": "planet"})
    assert r.status_code == 422
    # input bounds: a body too big, a line whose amount is not cnt × pric, a query out of range, a method
    huge = claim_body("P1", GZ_HOSPITAL, "440100", "360100")
    huge["input"]["data"]["psn_no"] = "9" * (3 * 1024 * 1024)
    r = await settle.post("/fsi/callService", json=huge)
    assert r.status_code == 413 and r.json()["infcode"] == -1 and "KiB" in r.json()["err_msg"]
    r = await enroll.post("/persons", content=b"{" + b" " * (3 * 1024 * 1024) + b"}",
                          headers={"content-type": "application/json"})
    assert r.status_code == 413 and "KiB" in r.json()["error"]
    inflated = claim_body("P1", GZ_HOSPITAL, "440100", "360100", lines=[
        {"feedetl_sn": "1", "med_list_codg": "001102000010000", "cnt": 1, "pric": "25.00", "det_item_fee_sumamt": "25.00"},
        {"feedetl_sn": "2", "med_list_codg": "003307000010000", "cnt": 2, "pric": "600.00",
         "det_item_fee_sumamt": "99999999999999.99"}])
    r = await settle.post("/fsi/callService", json=inflated)
    assert r.status_code == 422 and "fee line 2" in r.json()["err_msg"] and "1200.00" in r.json()["err_msg"], r.text
    r = await enroll.get("/duplicates", params={"limit": -10**22})
    assert r.status_code == 422 and "limit" in r.json()["error"]
    r = await settle.delete("/fsi/callService")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    spec = (await settle.get("/openapi.json")).json()
    assert {"401", "403", "413", "422"} <= set(spec["paths"]["/fsi/callService"]["post"]["responses"])


async def test_no_name_or_id_number_travels_outside_the_inbound_topic(stack: Stack, broker: BrokerUnderTest) -> None:
    """Hop, result, reply, event and rejection topics carry psn_no, not a name or an ID number; only
    what the provinces publish (enroll.inbound and its dead letters) holds them. The hospital's answer
    still names the person."""
    name = f"隐名{secrets.token_hex(3)}"
    psn = await stack.person("360100", name=name)
    certno = stack.certnos[psn]
    await stack.file(psn, "440100")
    await stack.present(psn, GZ_HOSPITAL)  # 1101 by ID card: the answer names the person
    settled = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100")
    assert settled["output"]["setlinfo"]["psn_name"] == name  # opened for the hospital
    reg = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100", infno="2201")
    assert reg["output"]["data"]["psn_name"] == name  # 2201 answers at output.data
    masked = (await stack.province("enroll", "360100").get(f"/persons/{psn}")).json()["certno"]
    assert "*" in masked  # the API masks it too
    # a province's record the enroll service refuses: the rejection must not repeat the number
    bad = with_check_char("36010219700101999")[:-1] + "X"  # a wrong check character
    sent = await stack.services["enroll"].runtime.bus.send_raw(
        "enroll.inbound", bad.encode(), orjson.dumps({"record_id": "R-BAD", "certno": bad, "psn_name": name,
                                                      "insuplc_admdvs": "360100", "insutype": "310"}),
        headers=[("ce_type", b"yibao.enroll.EnrolmentRecord.v1"), ("ce_source", b"/province/360000")])
    await sent
    await read_until(broker, "enroll.rejections", lambda rs: any(b"R-BAD" in r.value for r in rs),
                     what="the rejection of R-BAD")

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await consumer.start()
    try:
        topics = sorted(t.removeprefix(broker.prefix) for t in await consumer.topics() if t.startswith(broker.prefix))
    finally:
        await consumer.stop()
    allowed = {"enroll.inbound", "enroll.inbound.dlq", "enroll.inbound.retry"}
    secrets_ = [name.encode(), certno.encode(), bad.encode()]
    checked = 0
    for topic in topics:
        if topic in allowed:
            continue
        for r in await read_all(broker, topic):
            parts = [r.key or b"", r.value or b"", *(v or b"" for _, v in r.headers or ())]
            assert not any(x in part for x in secrets_ for part in parts), (topic, r.offset)
            checked += 1
    assert checked >= 20 and {"settle.city", "settle.completed", "enroll.events", "enroll.rejections"} <= set(topics)


@pytest.mark.one_database
async def test_hospitals_act_and_read_only_for_themselves(stack: Stack) -> None:
    psn = await stack.person()
    await stack.file(psn, "440100")
    body = claim_body(psn, "H44010400001", "440100", "360100")
    bare = httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.settle.app), base_url="http://settle")
    try:
        r = await bare.post("/fsi/callService", json=body)
        assert r.status_code == 401 and r.json()["infcode"] == -1 and "x-tif-signature" in r.json()["err_msg"]
        other = hospital_headers("H44010600002", designated_hospitals()["H44010600002"]["key"])
        r = await bare.post("/fsi/callService", json=body, headers=other)
        assert r.status_code == 403 and "H44010600002" in r.json()["err_msg"]
        ans = await stack.settle_claim(psn, "H44010400001", "440100", "360100")
        assert ans["infcode"] == 0
        other = hospital_headers("H44010600002", designated_hospitals()["H44010600002"]["key"])
        r = await bare.get(f"/claims/{ans['msgid']}", headers=other)
        assert r.status_code == 404  # another hospital's request does not exist for it
        assert (await stack.http["settle"].get(f"/claims/{ans['msgid']}")).json()["status"] == "settled"
        # its msgid again from another hospital: refused, and nothing of the first answer shown
        reuse = claim_body(psn, "H44010600002", "440100", "360100", msgid=ans["msgid"])
        other = hospital_headers("H44010600002", designated_hospitals()["H44010600002"]["key"])  # a fresh nonce
        r = await bare.post("/fsi/callService", json=reuse, headers=other)
        assert r.status_code == 409 and r.json()["infcode"] == -1 and "已被使用" in r.json()["err_msg"]
        assert ans["output"]["setlinfo"]["setl_id"] not in r.text and psn not in r.text
    finally:
        await bare.aclose()


async def test_a_msgid_answers_again_only_the_request_it_was_first_used_for(stack: Stack) -> None:
    first, second = await stack.person(), await stack.person()
    for p in (first, second):
        await stack.file(p, "440100")
    ans = await stack.settle_claim(first, GZ_HOSPITAL, "440100", "360100")
    assert ans["infcode"] == 0
    # the same hospital sends the msgid again for another person: told to make a new one
    body = claim_body(second, GZ_HOSPITAL, "440100", "360100", msgid=ans["msgid"])
    r = await stack.http["settle"].post("/fsi/callService", json=body)
    assert r.status_code == 409 and "psn_no 不同" in r.json()["err_msg"]
    assert ans["output"]["setlinfo"]["setl_id"] not in r.text
    # and with another transaction code for the same person
    body = claim_body(first, GZ_HOSPITAL, "440100", "360100", msgid=ans["msgid"], infno="2206")
    r = await stack.http["settle"].post("/fsi/callService", json=body)
    assert r.status_code == 409 and "infno 不同" in r.json()["err_msg"]
    # the second person's claim under a new msgid settles, and the first has one ledger entry
    assert (await stack.settle_claim(second, GZ_HOSPITAL, "440100", "360100"))["infcode"] == 0
    assert len(ledger_rows(stack, ans["msgid"])) == 1


async def test_a_reused_msgid_refused_while_the_first_request_is_in_flight_leaves_it_its_answer(
        stack: Stack) -> None:
    first, second = await stack.person(), await stack.person()
    for p in (first, second):
        await stack.file(p, "440100")
    stack.settle.ctx.faults.set(Fault(level="city", region="360100", slow_ms=1500))  # the first stays pending
    try:
        body = claim_body(first, GZ_HOSPITAL, "440100", "360100")
        pending = asyncio.create_task(stack.http["settle"].post("/fsi/callService", json=body, timeout=60))
        await wait_until(lambda: _status(stack, body["msgid"]), what="the first request on its way")
        reuse = claim_body(second, GZ_HOSPITAL, "440100", "360100", msgid=body["msgid"])
        r = await stack.http["settle"].post("/fsi/callService", json=reuse)
        assert r.status_code == 409 and "psn_no 不同" in r.json()["err_msg"]
        assert not pending.done()
    finally:
        stack.settle.ctx.faults.replace([])
    ans = (await pending).json()
    assert ans["infcode"] == 0 and ans["output"]["setlinfo"]["psn_no"] == first  # answered in time, not from the record
    assert ans["output"]["api_timing"] is not None


async def _status(stack: Stack, msgid: str) -> str | None:
    r = await stack.http["settle"].get(f"/claims/{msgid}")
    return r.json()["status"] if r.status_code == 200 else None


async def test_relays_pass_the_claim_on_unread_and_the_next_city_hop_rejects_a_bad_one(stack: Stack,
                                                                                      broker: BrokerUnderTest) -> None:
    """Province and national hops route by headers (services/settle/hopreader.py): the value they
    pass on is the bytes they got, their position and stamps travel in headers, one that breaks
    the contract is dead-lettered by the next city hop, and bad routing headers at the relay."""
    psn = await stack.person("360100")
    await stack.file(psn, "440100", "REFERRAL")
    ans = await stack.settle_claim(psn, GZ_HOSPITAL, "440100", "360100")
    assert ans["infcode"] == 0, ans

    def mine(records: list[Any]) -> list[Any]:
        return [r for r in records if headers_of(r).get("ce_correlationid") == ans["msgid"]]

    legs = mine(await read_until(broker, "settle.province", lambda rs: len(mine(rs)) >= 4, what="the province legs"))
    assert [headers_of(r)["yibao-pos"] for r in legs] == ["1", "3", "5", "7"]
    assert legs[1].value == legs[0].value and legs[3].value == legs[2].value  # two relays on: the same bytes
    relayed = orjson.loads(headers_of(legs[1])["yibao-relayed"])
    assert [(t["level"], t["admdvs"]) for t in relayed] == [("province", "440000"), ("national", "360000")]
    first, back = orjson.loads(legs[0].value), orjson.loads(legs[2].value)
    assert back["pos"] == 5 and back["claim"] == first["claim"]  # the insured city wrote it whole, claim as it left
    assert "yibao-relayed" not in headers_of(legs[2])  # its stamps are in the body's trace now
    assert [t["level"] for t in back["trace"]] == ["city", "province", "national", "province", "city"]

    bad = first | {"claim": first["claim"] | {"msgid": ans["msgid"] + "X",
                                              "fees": [first["claim"]["fees"][0] | {"cnt": "-1"}]}}
    headers = [(k, v) for k, v in legs[0].headers if k not in ("ce_id", "ce_correlationid", "ce_deadline")]
    headers += [("ce_id", b"relay-test-" + ans["msgid"].encode()), ("ce_correlationid", (ans["msgid"] + "X").encode())]
    await stack.settle.runtime.bus.send_raw("settle.province", "440000", orjson.dumps(bad), headers)
    misrouted = [(k, v) for k, v in headers if k not in ("ce_id", "ce_correlationid", "yibao-route")]
    misrouted += [("ce_id", b"relay-test-Y" + ans["msgid"].encode()), ("ce_correlationid", (ans["msgid"] + "Y").encode()),
                  ("yibao-route", b"city:440100:split>province:440000")]
    await stack.settle.runtime.bus.send_raw("settle.province", "440000", orjson.dumps(first), misrouted)

    def dead(records: list[Any], suffix: str = "X") -> list[Any]:
        return [r for r in records if headers_of(r).get("ce_correlationid") == ans["msgid"] + suffix]

    got = dead(await read_until(broker, "settle.city.dlq", lambda rs: bool(dead(rs)), what="the bad claim's dead letter"))
    h = headers_of(got[0])
    assert h["dlq-original-topic"] == "settle.city" and "claim.fees.0.cnt" in h["dlq-error-message"], h
    assert got[0].value == orjson.dumps(bad)  # as it was sent: the relays did not touch it
    assert h["yibao-pos"] == "4" and [t["level"] for t in orjson.loads(h["yibao-relayed"])] == [
        "province", "national", "province"]

    got = dead(await read_until(broker, "settle.province.dlq", lambda rs: bool(dead(rs, "Y")),
                                what="the misrouted hop's dead letter"), "Y")
    h = headers_of(got[0])
    assert h["dlq-error-class"] == "BadMessageError" and "yibao-route" in h["dlq-error-message"], h
