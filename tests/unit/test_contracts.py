"""The wire contracts: committed JSON Schema matches the models; the registry is consistent."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from schemas.common import new_msgid
from schemas.events import EVENT_TYPES
from schemas.export import JSON_DIR, render
from schemas.topics import TOPICS, all_topic_names, topic
from services.bus.faults import Faults


def test_committed_json_schema_has_not_drifted() -> None:
    """Fails when a model changed without `make schemas`."""
    for ce_type in EVENT_TYPES:
        path = JSON_DIR / f"{ce_type}.json"
        assert path.exists(), f"{path} missing: run `make schemas`"
        assert path.read_text(encoding="utf-8") == render(ce_type), f"{path} drifted: run `make schemas`"
    extra = {p.stem for p in JSON_DIR.glob("*.json")} - set(EVENT_TYPES)
    assert not extra, f"schema files without a model: {extra}"


def test_every_topic_carries_registered_types_and_has_retry_and_dlq() -> None:
    names = dict(all_topic_names())
    for spec in TOPICS.values():
        assert set(spec.types) <= set(EVENT_TYPES)
        if spec.consumed:
            assert spec.retry in names and spec.dlq in names
        assert topic(spec.retry) is spec


def test_fault_spec_parsing() -> None:
    f = Faults.parse("city:360100=down; province:*=slow:50;national:*=fail:0.25")
    assert f.rules[("city", "360100")].down
    assert f.rules[("province", "*")].slow_ms == 50
    assert f.rules[("national", "*")].fail_p == 0.25


def test_a_relay_reads_a_hop_as_the_same_type_and_passes_the_rest_on_as_it_came() -> None:
    from schemas.events import SettlementHop, SettlementHopInTransit, event_type_of
    from services.settle.domain import plan_route

    claim = {"msgid": "M1", "infno": "2207", "fixmedins_code": "H44010400001", "mdtrtarea_admvs": "440100",
             "insuplc_admdvs": "360100", "psn_no": "P1", "insutype": "310", "med_type": "11",
             "begntime": "2026-11-24", "deadline_ms": 1,
             "fees": [{"feedetl_sn": "1", "med_list_codg": "X", "cnt": "2", "pric": "1.50",
                       "det_item_fee_sumamt": "3.00"}]}
    route = [s.model_dump(mode="json") for s in plan_route("440100", "360100")]
    hop = SettlementHop.model_validate({"claim": claim, "route": route, "pos": 1, "hosp_lv": "3"})
    view = SettlementHopInTransit.model_validate_json(hop.model_dump_json())
    assert event_type_of(view) == event_type_of(SettlementHop)  # it travels on as what it was
    view.pos += 1
    again = SettlementHop.model_validate_json(view.model_dump_json())
    assert again == hop.model_copy(update={"pos": 2})
    # the relay does not look inside the claim: a broken one passes, the next city hop rejects it
    broken = orjson.loads(hop.model_dump_json())
    broken["claim"]["fees"][0]["cnt"] = "-1"
    assert SettlementHopInTransit.model_validate(broken).model_extra["claim"]["fees"][0]["cnt"] == "-1"
    with pytest.raises(ValidationError):
        SettlementHop.model_validate(broken)


def test_msgids_of_one_hospital_in_one_second_differ_and_keep_the_national_format() -> None:
    ids = [new_msgid("H44010400001") for _ in range(5000)]
    assert len(set(ids)) == len(ids)  # 5,000 in well under a second: the sequence, not chance
    assert all(len(m) == 30 and m.startswith("H44010400001") and m[12:].isdigit() for m in ids)
    assert new_msgid("H36010200001") != new_msgid("H36010200001")
