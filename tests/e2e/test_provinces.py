"""Provincial platforms feed enroll.inbound and filing.inbound with a standard Kafka client
(confluent-kafka), bad records come back as rejections, and hospitals then settle against
what the provinces published. Plus the counter's paths: transfers, waiting periods, status at a
date, reminders, filing change/cancel/expiry."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.bus.settings import BusSettings
from services.enroll.domain import with_check_char
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import YEAR_END, Stack
from tests.helpers import headers_of, read_topic, read_until, wait_until

TODAY = date.today()


def publish(broker: BrokerUnderTest, topic: str, records: list[tuple[str, str, str, bytes]]) -> None:
    """(key, ce_source, ce_type, value) with only confluent-kafka and CloudEvents binary-mode headers."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for key, source, ce_type, value in records:
        p.produce(broker.topic(topic), key=key.encode(), value=value, headers=[
            ("ce_specversion", b"1.0"), ("ce_id", str(uuid.uuid4()).encode()), ("ce_source", source.encode()),
            ("ce_type", ce_type.encode()), ("ce_time", datetime.now(UTC).isoformat().encode()),
            ("content-type", b"application/json")])
    assert p.flush(20) == 0


def record(certno: str, region: str, **kw: Any) -> bytes:
    return json.dumps({"record_id": kw.pop("record_id", certno[-6:]), "certno": certno, "psn_name": "省平台",
                       "insuplc_admdvs": region, "insutype": "310", "paid_through": YEAR_END,
                       "voucher_active": True} | kw).encode()


ENROL = "yibao.enroll.EnrolmentRecord.v1"
FILE = "yibao.filing.FileTreatment.v1"


@pytest.fixture
def bus_settings(bus_settings: BusSettings) -> BusSettings:
    # a retry budget of some seconds (not ~2), so that a filing waiting for its enrolment does not
    # run out of attempts while this test is still noticing the first retry
    return bus_settings.model_copy(update={"retry_attempts": 8})


async def test_provinces_publish_then_hospitals_settle(stack: Stack, broker: BrokerUnderTest) -> None:
    pytest.importorskip("confluent_kafka")
    enroll, settle = stack.operator("enroll"), stack.operator("settle")
    a = with_check_char("36010219700101101")  # enrolled by 江西, and again by 广东: a duplicate
    bad_certno = "360102197001011010"
    records = [
        (a, "/province/360000", ENROL, record(a, "360100")),
        (a, "/province/360000", ENROL, record(with_check_char("44010219700101202"), "440100", record_id="R-WRONG")),
        (bad_certno, "/province/360000", ENROL, record(bad_certno, "360100", record_id="R-CHECK")),
        ("x", "/province/360000", ENROL, json.dumps({"record_id": "R-SCHEMA", "certno": a}).encode()),
        ("y", "/province/360000", ENROL, b"{not json"),
        (a, "/province/440000", ENROL, record(a, "440100", record_id="R-GD")),
    ]
    await asyncio.to_thread(publish, broker, "enroll.inbound", records)

    rejected = await read_topic(broker, "enroll.rejections", 4)
    got = {json.loads(r.value)["record_id"]: json.loads(r.value)["reason_code"] for r in rejected}
    assert got == {"R-WRONG": "WRONG_PROVINCE", "R-CHECK": "INVALID_CERTNO", "R-SCHEMA": "SCHEMA_INVALID",
                   None: "NOT_JSON"}
    assert {r.key for r in rejected} == {b"360000"}  # each province consumes its own rejections
    dlq = await read_topic(broker, "enroll.inbound.dlq", 4)
    assert {r.value for r in dlq} == {records[i][3] for i in (1, 2, 3, 4)}  # the bytes, unchanged
    assert all(headers_of(r)["dlq-original-topic"] == "enroll.inbound" for r in dlq)

    async def person() -> Any:
        r = await enroll.post("/persons/lookup", json={"certno": a})
        return r.json() if r.status_code == 200 and len(r.json()["enrolments"]) == 2 else None
    p = await wait_until(person, what="both provinces' records to be applied")
    psn = p["psn_no"]
    assert p["certno"].count("*") == 10  # masked in answers

    dups = (await enroll.get("/duplicates")).json()
    assert [(d["psn_no"], d["a_admdvs"], d["b_admdvs"]) for d in dups] == [(psn, "360100", "440100")]
    check = (await enroll.get("/duplicates/check")).json()
    assert check["consistent"] and check["batch"] == 1
    events = await read_topic(broker, "enroll.duplicates", 1)
    assert json.loads(events[0].value)["status"] == "open"

    # 江西 files for its insured person; 广东 may not file for 江西's insured
    filing = {"psn_no": psn, "insuplc_admdvs": "360100", "fil_type": "REFERRAL", "target_admdvs": "440100",
              "begndate": TODAY.isoformat(), "referral_fixmedins_code": "H36010200001", "record_id": "F-OK"}
    await asyncio.to_thread(publish, broker, "filing.inbound", [
        (psn, "/province/360000", FILE, json.dumps(filing).encode()),
        (psn, "/province/440000", FILE, json.dumps(filing | {"record_id": "F-GD"}).encode()),
    ])
    rej = await read_topic(broker, "filing.rejections", 1)
    assert [(json.loads(r.value)["record_id"], json.loads(r.value)["reason_code"]) for r in rej] == \
        [("F-GD", "WRONG_PROVINCE")]
    await wait_until(lambda: stack._settle_knows(psn, filings=1), what="the insured city to see the filing")

    # the duplicate is resolved by ending 广东's enrolment; the national answer stays consistent
    r = await stack.province("enroll", "360100").post(f"/duplicates/{dups[0]['dup_id']}/resolve",
                                                      json={"end_admdvs": "440100"})
    assert r.status_code == 403 and "440100" in r.json()["error"]  # 江西 may not end 广东's enrolment
    r = await stack.province("enroll", "440100").post(f"/duplicates/{dups[0]['dup_id']}/resolve",
                                                      json={"end_admdvs": "440100"})
    assert r.status_code == 200 and r.json()["status"] == "resolved"
    assert (await enroll.get("/duplicates/check")).json() | {"batch": 0, "consistent": True} == \
        (await enroll.get("/duplicates/check")).json()

    res = await stack.settle_claim(psn, "H44010400001", "440100", "360100")
    assert res["infcode"] == 0, res
    assert res["output"]["setlinfo"]["psn_no"] == psn

    async def terminated_in_gd() -> bool:
        s = (await settle.get(f"/persons/{psn}/status")).json()
        return any(e["insuplc_admdvs"] == "440100" and e["psn_insu_stas"] == "4" for e in s["enrolments"])
    await wait_until(terminated_in_gd, what="settle to see the ended enrolment")
    res = await stack.settle_claim(psn, "H44010400001", "440100", "440100")
    assert res["infcode"] == -1 and res["output"]["err_code"] == "INSURANCE_TERMINATED", res


async def test_a_filing_ahead_of_its_enrolment_is_retried_until_the_enrolment_arrives(stack: Stack, broker: BrokerUnderTest) -> None:
    """A province publishes the filing before the enrolment has reached the filing service: the
    filing waits on the retry topic and is approved once the enrolment is there; a filing for a
    person who never enrols is refused NOT_ENROLLED when the retries are spent."""
    pytest.importorskip("confluent_kafka")
    enroll, filing = stack.province("enroll", "360100"), stack.province("filing", "360100")
    psn = {}
    for tag, digits in (("LATE", "36010219850101707"), ("NEVER", "36010219850101808")):
        r = await enroll.post("/persons", json={"certno": with_check_char(digits), "psn_name": tag, "admdvs": "360100"})
        assert r.status_code == 201, r.text
        psn[tag] = r.json()["psn_no"]
    body = {"insuplc_admdvs": "360100", "fil_type": "REFERRAL", "target_admdvs": "440100",
            "begndate": TODAY.isoformat(), "referral_fixmedins_code": "H36010200001"}
    await asyncio.to_thread(publish, broker, "filing.inbound", [
        (p, "/province/360000", FILE, json.dumps(body | {"psn_no": p, "record_id": f"F-{tag}"}).encode())
        for tag, p in psn.items()])

    def retried(records: list[Any]) -> set[str]:
        return {json.loads(r.value)["record_id"] for r in records}
    await read_until(broker, "filing.inbound.retry", lambda rs: retried(rs) >= {"F-LATE", "F-NEVER"},
                     what="both filings to be put back for a retry")
    r = await enroll.post("/enrolments", json={"psn_no": psn["LATE"], "insuplc_admdvs": "360100", "insutype": "310",
                                               "paid_through": YEAR_END})
    assert r.status_code == 201, r.text

    async def filed() -> Any:
        r = await filing.get(f"/persons/{psn['LATE']}/filings")
        return r.json() if r.status_code == 200 and r.json() else None
    assert [f["fil_type"] for f in await wait_until(filed, what="the late filing to be approved")] == ["REFERRAL"]

    def refused(records: list[Any]) -> dict[str, str]:
        return {m["record_id"]: m["reason_code"] for m in (json.loads(r.value) for r in records)
                if m["record_id"] in ("F-LATE", "F-NEVER")}
    rej = await read_until(broker, "filing.rejections", lambda rs: "F-NEVER" in refused(rs),
                           what="the filing of a person never enrolled to be refused")
    assert refused(rej) == {"F-NEVER": "NOT_ENROLLED"}
    dlq = await read_until(broker, "filing.inbound.dlq", lambda rs: len(rs) >= 1, what="the dead letter")
    assert [headers_of(r)["dlq-attempts"] for r in dlq] == ["8"]


async def test_counter_paths_transfer_waiting_reminders_and_filing_lifecycle(stack: Stack, broker: BrokerUnderTest) -> None:
    enroll, ops = stack.province("enroll", "360100"), stack.operator("enroll")
    filing = stack.province("filing", "330100")  # the person moves to 杭州: 浙江 files for them

    # 居民 enrolling late: the waiting period, refused with its own reason at a local hospital
    late = with_check_char("36010219900101303")
    r = await enroll.post("/enrolments/records", json={
        "certno": late, "psn_name": "晚参保", "insuplc_admdvs": "360100", "insutype": "390",
        "begndate": TODAY.replace(month=1, day=1).isoformat(), "enrol_date": TODAY.isoformat(),
        "paid_through": YEAR_END})
    assert r.status_code == 201, r.text
    assert r.json()["benefit_from"] == (TODAY + timedelta(days=90)).isoformat()
    psn_late = r.json()["psn_no"]
    await wait_until(lambda: stack._settle_knows(psn_late), what="settle to see the resident")
    res = await stack.settle_claim(psn_late, "H36010200001", "360100", "360100", insutype="390")
    assert res["output"]["err_code"] == "WAITING_PERIOD" and str(TODAY + timedelta(days=90)) in res["err_msg"]

    # 转移接续 南昌 → 杭州: one active enrolment afterwards, years carried, both regions told
    r = await enroll.post("/enrolments/records", json={
        "certno": with_check_char("36010219800101404"), "psn_name": "转移", "insuplc_admdvs": "360100",
        "insutype": "310", "begndate": "2015-01-01", "paid_through": YEAR_END, "contrib_months": 130,
        "emp_no": "E360100001"})
    psn = r.json()["psn_no"]
    r = await enroll.post("/transfers", json={"psn_no": psn, "insutype": "310", "from_admdvs": "360100",
                                              "to_admdvs": "330100", "transfer_date": TODAY.isoformat()})
    assert r.status_code == 201 and r.json()["contrib_months"] == 130 and r.json()["psn_insu_stas"] == "1"
    person = (await enroll.get(f"/persons/{psn}")).json()
    assert sorted((e["insuplc_admdvs"], e["psn_insu_stas"]) for e in person["enrolments"]) == \
        [("330100", "1"), ("360100", "4")]
    before = (await enroll.get(f"/persons/{psn}/status", params={"on": "2020-06-01"})).json()
    assert [(e["insuplc_admdvs"], e["benefits"]) for e in before["enrolments"]] == [("360100", True)]
    now = (await enroll.get(f"/persons/{psn}/status")).json()
    assert {(e["insuplc_admdvs"], e["benefits"]) for e in now["enrolments"]} == {("360100", False), ("330100", True)}
    assert [h["change"] for h in (await enroll.get(f"/persons/{psn}/history")).json()] == \
        ["enrolled", "transferred_out", "transferred_in"]
    r = await enroll.post("/transfers", json={"psn_no": psn, "insutype": "310", "from_admdvs": "360100",
                                              "to_admdvs": "330100", "transfer_date": TODAY.isoformat()})
    assert r.status_code == 422 and r.json()["code"] == "NOT_ENROLLED_AT_SOURCE"

    # 断保提醒: a person (and the employer) whose current month is unpaid past the due day, once
    r = await enroll.post("/enrolments/records", json={
        "certno": with_check_char("36010219750101505"), "psn_name": "欠费", "insuplc_admdvs": "360100",
        "insutype": "310", "begndate": "2020-01-01", "paid_through": "2026-10-31", "emp_no": "E360100009"})
    assert r.status_code == 201
    scan = (await ops.post("/ops/reminders/scan", params={"on": "2026-11-16"})).json()
    assert scan["persons_reminded"] >= 1 and scan["employers_reminded"] >= 1
    assert (await ops.post("/ops/reminders/scan", params={"on": "2026-11-17"})).json() == \
        {"persons_reminded": 0, "employers_reminded": 0}
    def kinds(records: list[Any]) -> set[str]:
        return {m["kind"] for m in map(lambda r: json.loads(r.value), records) if m.get("emp_no") == "E360100009"}

    reminders = await read_until(broker, "enroll.reminders", lambda rs: len(kinds(rs)) == 2, what="both reminders")
    assert kinds(reminders) == {"person", "employer"}

    # filing lifecycle: long-term within the holding period cannot be cancelled; temporary expires on time
    await wait_until(lambda: stack._settle_knows(psn), what="settle to see the transferred person")

    async def file(body: dict[str, Any]) -> Any:
        r = await filing.post("/filings", json={"psn_no": psn, "begndate": TODAY.isoformat()} | body)
        return r.json() if r.status_code == 201 else None
    long = await wait_until(lambda: file({"fil_type": "RETIRED_RELOCATED", "target_admdvs": "440000",
                                          "commitment": True}), what="filing to see the transfer")
    assert long["insuplc_admdvs"] == "330100" and long["enddate"] is None
    r = await filing.delete(f"/filings/{long['fil_id']}")
    assert r.status_code == 422 and r.json()["code"] == "HOLDING_PERIOD"
    temp = await file({"fil_type": "OTHER_TEMP", "target_admdvs": "110000"})
    r = await filing.patch(f"/filings/{temp['fil_id']}", json={"target_admdvs": "310000"})
    assert r.status_code == 200 and r.json()["change"] == "changed" and r.json()["version"] == 2, r.text
    end = date.fromisoformat(temp["enddate"])
    expire = stack.operator("filing")
    assert (await expire.post("/ops/expire", params={"on": end.isoformat()})).json()["expired"] == 0
    assert (await expire.post("/ops/expire", params={"on": (end + timedelta(days=1)).isoformat()})).json()[
        "expired"] >= 1
    assert (await filing.get(f"/filings/{temp['fil_id']}")).json()["status"] == "expired"
    def changes(records: list[Any]) -> list[str]:
        return [e["change"] for e in map(lambda m: json.loads(m.value), records) if e["fil_id"] == temp["fil_id"]]

    events = await read_until(broker, "filing.events", lambda rs: "expired" in changes(rs), what="the expiry")
    assert changes(events) == ["approved", "changed", "expired"]


async def test_a_reported_death_ends_every_enrolment_and_settlement_says_why(stack: Stack) -> None:
    enroll = stack.province("enroll", "360100")
    certno = with_check_char("36010219400101606")
    base = {"certno": certno, "psn_name": "身故", "insuplc_admdvs": "360100", "begndate": "2010-01-01",
            "paid_through": YEAR_END}
    for insutype in ("310", "330"):  # basic scheme plus 大额医疗费用补助
        r = await enroll.post("/enrolments/records", json=base | {"insutype": insutype})
        assert r.status_code == 201, r.text
    psn = r.json()["psn_no"]
    await wait_until(lambda: stack._settle_knows(psn), what="settle to see the person")
    died = (TODAY - timedelta(days=3)).isoformat()
    r = await enroll.post("/enrolments/records", json=base | {"insutype": "310", "death_date": died})
    assert r.status_code == 201 and r.json()["psn_insu_stas"] == "4"
    person = (await enroll.get(f"/persons/{psn}")).json()
    assert person["death_date"] == died
    assert {(e["insutype"], e["psn_insu_stas"]) for e in person["enrolments"]} == {("310", "4"), ("330", "4")}

    async def refused() -> Any:
        res = await stack.settle_claim(psn, "H36010200001", "360100", "360100")
        return res if res["output"].get("err_code") == "DECEASED" else None
    res = await wait_until(refused, what="settle to refuse a claim after the death date")
    assert died in res["err_msg"]
