"""What a request gets whose msgid was received before: interface.known_msgid."""

from __future__ import annotations

from datetime import date

import orjson

from schemas.events import Claim
from services.settle.interface import Accepted, Clash, InFlight, Replay, known_msgid
from services.settle.store import ClaimRecord

MSGID = "H44010400001202612050000000001"


def claim(**kw: str) -> Claim:
    fields = dict(msgid=MSGID, infno="5206", fixmedins_code="H44010400001", mdtrtarea_admvs="440100",
                  insuplc_admdvs="360100", psn_no="360100000000000001", insutype="310", med_type="11",
                  begntime=date(2026, 12, 5), deadline_ms=0)
    return Claim(**(fields | kw))  # type: ignore[arg-type]


def first(status: str = "settled", **kw: str) -> ClaimRecord:
    fields = dict(msgid=MSGID, infno="5206", fixmedins_code="H44010400001", insuplc_admdvs="360100",
                  psn_no="360100000000000001", status=status, created_ms=1, updated_ms=2,
                  result=orjson.dumps({"msgid": MSGID, "outcome": {"infcode": 0}}) if status != "pending" else None)
    return ClaimRecord(**(fields | kw))


def test_a_new_msgid_is_accepted_and_the_same_request_waits_or_gets_its_first_answer() -> None:
    assert known_msgid(None, claim()) == Accepted()
    assert known_msgid(first("pending"), claim()) == InFlight()
    assert known_msgid(first("settled"), claim()) == Replay({"msgid": MSGID, "outcome": {"infcode": 0}})
    assert isinstance(known_msgid(first("failed"), claim()), Replay)  # a refusal is the first answer too


def test_a_msgid_used_by_another_hospital_or_for_another_request_is_a_clash() -> None:
    other_hospital = known_msgid(first(fixmedins_code="H44010400002"), claim())
    assert isinstance(other_hospital, Clash) and "已被使用" in other_hospital.message
    other_person = known_msgid(first("pending", psn_no="360100000000000002"), claim())
    assert isinstance(other_person, Clash) and "psn_no" in other_person.message
    assert isinstance(known_msgid(first(infno="2207"), claim()), Clash)
