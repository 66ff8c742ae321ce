"""services/settle/hopreader.py: relays read a hop by its headers and leave its value unread; the
city hops read the body brought up to date by those headers. Along a claim's way, on the bytes
each step sends, a claim and split validated once are not validated again when they come back
equal, and anything that differs — one line's amount — is validated in full and refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.events import Claim, FeeLine, FeeSplit, HopAction, SettlementHop
from services.bus.envelope import BadMessageError, encode, make_headers, strict_headers
from services.settle.domain import plan_route
from services.settle.hopreader import CityHopReader, RelayReader, routing_headers, with_routing

ZERO = Decimal("0.00")


def claim(lines: int = 40) -> Claim:
    fees = [FeeLine(feedetl_sn=str(i), med_list_codg=f"00110100{i:07d}", cnt=Decimal(2), pric=Decimal("12.35"),
                    det_item_fee_sumamt=Decimal("24.70")) for i in range(1, lines + 1)]
    return Claim(msgid="H44010400001202612061200000001", infno="2304", fixmedins_code="H44010400001",
                 mdtrtarea_admvs="440100", insuplc_admdvs="360100", psn_no="36010000000000000001", insutype="310",
                 med_type="21", begntime="2026-12-06", fees=fees, deadline_ms=1)


def split_of(c: Claim) -> list[FeeSplit]:
    return [FeeSplit(feedetl_sn=f.feedetl_sn, med_list_codg=f.med_list_codg, det_item_fee_sumamt=f.det_item_fee_sumamt,
                     chrgitm_lv="01", selfpay_prop=Decimal("0"), fulamt_ownpay_amt=ZERO, overlmt_amt=ZERO,
                     preselfpay_amt=ZERO, inscp_scp_amt=f.det_item_fee_sumamt) for f in c.fees]


def wire(hop: SettlementHop) -> Any:
    """What the next step parses: the hop as sent, read back."""
    return orjson.loads(encode(hop))


def at(hop: SettlementHop, action: HopAction, **changes: Any) -> SettlementHop:
    pos = next(i for i, s in enumerate(hop.route) if s.action is action and i >= hop.pos)
    return hop.model_copy(update={"pos": pos, **changes})


def test_a_claim_and_its_split_are_validated_once_along_the_way() -> None:
    reader = CityHopReader()
    first = SettlementHop(claim=claim(), route=plan_route("440100", "360100"), pos=0)
    at_split = reader.model_validate(wire(first))  # the treatment city: validated in full
    assert reader.reused == 0

    at_compute = reader.model_validate(wire(at(at_split, HopAction.COMPUTE, split=split_of(at_split.claim))))
    assert at_compute.claim is at_split.claim and reader.reused == 1  # the split is new here: validated

    answered = at(at_compute, HopAction.FINISH)
    at_finish = reader.model_validate(wire(answered))
    assert at_finish.claim is at_split.claim and reader.reused == 3
    assert at_finish.split and at_compute.split and all(
        a is b for a, b in zip(at_finish.split, at_compute.split, strict=True))
    assert at_finish == answered  # the same values as validating it all again
    assert reader.model_validate(wire(answered)).claim is not at_split.claim  # answered: forgotten


def test_a_line_that_changed_on_the_way_is_validated_and_refused() -> None:
    reader = CityHopReader()
    first = SettlementHop(claim=claim(), route=plan_route("440100", "360100"), pos=0)
    reader.model_validate(wire(first))
    tampered = wire(at(first, HopAction.COMPUTE, split=split_of(first.claim)))
    tampered["claim"]["fees"][7]["det_item_fee_sumamt"] = "99.99"  # no longer cnt × pric
    with pytest.raises(ValidationError, match="cnt × pric"):
        reader.model_validate(tampered)
    assert reader.reused == 0


def test_what_it_remembers_is_bounded() -> None:
    reader = CityHopReader(size=3)
    for n in range(10):
        c = claim(2).model_copy(update={"msgid": f"H44010400001202612061200{n:06d}"})
        reader.model_validate(wire(SettlementHop(claim=c, route=plan_route("440100", "360100"), pos=0)))
    assert len(reader._seen) == 3


def sent(hop: SettlementHop) -> tuple[bytes, dict[str, str]]:
    """The value and headers a city hop sends the hop with."""
    return encode(hop), strict_headers(make_headers(hop, "/test", extra=routing_headers(hop)))


def test_relays_route_by_headers_and_the_city_reads_their_stamps_after_the_trace() -> None:
    first = SettlementHop(claim=claim(), route=plan_route("440100", "360100"), pos=0)
    split = at(CityHopReader().model_validate(wire(first)), HopAction.SPLIT)
    value, headers = sent(split.model_copy(update={"pos": 1}))
    for pos in (1, 2, 3):  # province, national, province: none of them parses the value
        view = RelayReader.read_record(b"not JSON: a relay does not read it", headers)
        assert view.pos == pos and view.route == tuple(first.route)
        step = view.route[pos]
        stamp = {"level": step.level, "admdvs": step.admdvs, "action": step.action, "received_ms": pos,
                 "sent_ms": pos, "attempt": 1}
        headers = headers | {k: v.decode() for k, v in view.onward(stamp)}
    hop = CityHopReader().read_record(value, headers)
    assert hop.pos == 4 and hop.route[hop.pos].action is HopAction.COMPUTE
    assert [(t.level, t.received_ms) for t in hop.trace] == [("province", 1), ("national", 2), ("province", 3)]
    assert hop.claim == first.claim


def test_a_hop_sent_without_routing_headers_is_read_by_its_body() -> None:
    hop = SettlementHop(claim=claim(2), route=plan_route("440100", "360100"), pos=1)
    view = RelayReader.read_record(encode(hop), {"ce_type": "x"})
    assert (view.pos, view.route, view.relayed) == (1, tuple(hop.route), [])
    again = CityHopReader().read_record(encode(hop), {})
    assert again == hop


@pytest.mark.parametrize(("headers", "words"), [
    ({"yibao-route": "city:440100:split>province:440000", "yibao-pos": "1"}, "yibao-route"),
    ({"yibao-route": "city:440100:split>moon:440000:relay", "yibao-pos": "1"}, "yibao-route"),
    ({"yibao-route": "city:440100:split>province:440000:relay"}, "yibao-pos is missing"),
    ({"yibao-route": "city:440100:split>province:440000:relay", "yibao-pos": "one"}, "yibao-pos"),
    ({"yibao-route": "city:440100:split>province:440000:relay", "yibao-pos": "1", "yibao-relayed": "{"},
     "yibao-relayed"),
])
def test_bad_routing_headers_are_bad_input_that_says_which(headers: dict[str, str], words: str) -> None:
    with pytest.raises(BadMessageError, match=words) as e:
        RelayReader.read_record(b"{}", headers)
    assert e.value.code == "BAD_HEADER"


def test_a_split_made_here_is_compared_not_validated_when_it_comes_back() -> None:
    reader = CityHopReader()
    at_split = reader.model_validate(wire(SettlementHop(claim=claim(), route=plan_route("440100", "360100"), pos=0)))
    made = at(at_split, HopAction.COMPUTE, split=split_of(at_split.claim))
    reader.sent(made, encode(made))  # the treatment city sends its split on
    at_compute = reader.model_validate(wire(made))
    assert reader.reused == 2 and at_compute == made and at_compute.split and made.split
    assert all(a is b for a, b in zip(at_compute.split, made.split, strict=True))  # the objects it made

    changed = wire(at(at_compute, HopAction.FINISH))
    changed["split"][3]["inscp_scp_amt"] = "20.00"  # not the split this process sent on
    reader.sent(at_compute, encode(at_compute))
    at_finish = reader.model_validate(changed)
    assert at_finish.split and at_finish.split[3].inscp_scp_amt == Decimal("20.00")  # validated: what came
    assert reader.reused == 3  # the claim only


def relayed(hop: SettlementHop, value: bytes) -> dict[str, str]:
    """The headers the next city hop reads `value` with, after the relays between (as relay_hop)."""
    headers = strict_headers(make_headers(hop, "/test", correlation_id=hop.claim.msgid, extra=routing_headers(hop)))
    view = RelayReader.read_record(value, headers)
    while view.route[view.pos].action is HopAction.RELAY:
        step = view.route[view.pos]
        stamp = {"level": step.level, "admdvs": step.admdvs, "action": step.action, "received_ms": view.pos,
                 "sent_ms": view.pos, "attempt": 1}
        headers = headers | {k: v.decode() for k, v in view.onward(stamp)}
        view = RelayReader.read_record(value, headers)
    return headers


def test_a_hop_that_comes_back_as_the_bytes_sent_is_that_hop_unparsed() -> None:
    reader = CityHopReader()
    at_split = reader.model_validate(wire(SettlementHop(claim=claim(), route=plan_route("440100", "360100"), pos=0)))
    out = at_split.model_copy(update={"pos": 1, "split": split_of(at_split.claim)})  # on to the province
    value = encode(out)
    reader.sent(out, value)
    headers = relayed(out, value)

    at_compute = reader.read_record(value, headers)
    assert reader.unparsed == 1 and at_compute.claim is out.claim and at_compute.split is out.split
    assert at_compute == SettlementHop.model_validate(with_routing(orjson.loads(value), headers))  # as if parsed
    assert at_compute.route[at_compute.pos].action is HopAction.COMPUTE
    assert [t.level for t in at_compute.trace] == ["province", "national", "province"]

    again = reader.read_record(value, headers)  # delivered twice: the second is read as any other value
    assert reader.unparsed == 1 and again == at_compute


def test_a_value_not_the_bytes_sent_is_read_in_full() -> None:
    reader = CityHopReader()
    at_split = reader.model_validate(wire(SettlementHop(claim=claim(), route=plan_route("440100", "360100"), pos=0)))
    out = at_split.model_copy(update={"pos": 1, "split": split_of(at_split.claim)})
    reader.sent(out, encode(out))
    split = split_of(at_split.claim)
    split[3] = split[3].model_copy(update={"inscp_scp_amt": Decimal("20.00")})
    other = encode(out.model_copy(update={"split": split}))  # one amount differs on the way
    hop = reader.read_record(other, relayed(out, other))
    assert reader.unparsed == 0 and hop.split and hop.split[3].inscp_scp_amt == Decimal("20.00")


def test_the_relays_stamps_on_a_hop_sent_here_are_validated() -> None:
    reader = CityHopReader()
    out = SettlementHop(claim=claim(2), route=plan_route("440100", "360100"), pos=1)
    value = encode(out)
    reader.sent(out, value)
    headers = relayed(out, value) | {"yibao-relayed": '[{"level": "province"}]'}
    with pytest.raises(ValidationError, match="admdvs"):
        reader.read_record(value, headers)
