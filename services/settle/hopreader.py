"""How a settle worker reads a hop, and what a hop carries in its headers.

Relays route by headers. Every hop is sent with its route and position in headers
(`yibao-route`, `yibao-pos`); a province or national relay reads only those, passes the value on
byte for byte, and writes the next position and its own stamp (`yibao-relayed`, the relays'
stamps since the value was written) into the next record's headers. So while relays pass a hop
on, its headers are newer than its body: the next city hop reads the body with the headers'
position, and the relays' stamps after the body's trace (`with_routing`), and writes the whole
hop again. A hop sent without these headers (by an older sender, or by hand) is read by its
body, as before. A value a relay did not parse is validated at the next city hop, and goes to
settle.city.dlq if it does not validate.

The city hops' reader validates in full, as SettlementHop, except that a claim or split it
validated itself earlier on the same claim's way (the treatment city's split, the insured city's
decision, the treatment city's answer all run in this process when it serves every level) is
not validated again when it comes back as equal JSON. Equal parsed JSON validates to equal
values, so the one validated before is used; anything else, a changed line included, is
validated in full, and a record that does not validate goes to the dead-letter topic as before.

A split this process made (the treatment city's, then the insured city's) is compared when it
comes back by building its JSON, a third of the cost of validating it. A 200-line inpatient claim
costs ~2 ms to validate (its lines' amounts and their cross-checks) and came back three times;
its split twice.

A hop that comes back as the very bytes this process sent (relays pass values on byte for byte)
is not parsed at all: the reader keeps, per claim, the value it last sent and the hop it encoded,
and a record whose value is equal to those bytes is that hop, with the headers' position and the
relays' stamps (validated) after its trace. Any other value, one byte changed included, is read
as above. Parsing those hops, comparing their claims and building their splits' JSON were ~9 % of
a worker's CPU under the mixed load."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
from pydantic import TypeAdapter

from schemas.events import (
    Claim,
    FeeSplit,
    HopAction,
    HopStamp,
    RouteStep,
    SettlementHop,
    SettlementHopInTransit,
)
from services.bus.envelope import CORRELATION, BadMessageError, Headers, whole_number

REMEMBERED = 512  # claims between their split and their answer, in this process
ROUTE = "yibao-route"  # level:admdvs:action of each step, joined by ">"
POS = "yibao-pos"  # the step that must act on the hop
RELAYED = "yibao-relayed"  # JSON: the relays' stamps since the value was written, to follow its trace
SPLITS = TypeAdapter(list[FeeSplit])
STAMPS = TypeAdapter(list[HopStamp])


def route_text(route: Sequence[RouteStep]) -> str:
    return ">".join(f"{s.level}:{s.admdvs}:{s.action}" for s in route)


@lru_cache(maxsize=4096)  # a province's routes are few
def _parse_route(text: str) -> tuple[RouteStep, ...]:
    steps = []
    for part in text.split(">"):
        level, admdvs, action = part.split(":")
        steps.append(RouteStep(level=level, admdvs=admdvs, action=action))
    return tuple(steps)


def parse_route(text: str) -> tuple[RouteStep, ...]:
    try:
        return _parse_route(text)
    except ValueError:  # a step without three parts, or a level, code or action that is not one
        raise BadMessageError(f"header {ROUTE} is {text[:120]!r}: expected steps level:admdvs:action "
                              "joined by '>' (city:440100:split>province:440000:relay…)", "BAD_HEADER") from None


def routing_headers(hop: SettlementHop) -> Headers:
    """The headers a hop is sent with: its route and position."""
    return [(ROUTE, route_text(hop.route).encode()), (POS, str(hop.pos).encode())]


def relayed_stamps(headers: dict[str, str]) -> list[Any]:
    text = headers.get(RELAYED)
    if not text:
        return []
    try:
        stamps = orjson.loads(text)
    except orjson.JSONDecodeError:
        stamps = None
    if not isinstance(stamps, list):
        raise BadMessageError(f"header {RELAYED} is {text[:120]!r}: expected a JSON list of hop stamps", "BAD_HEADER")
    return stamps


def with_routing(data: Any, headers: dict[str, str]) -> Any:
    """A hop's body as parsed JSON, brought up to date by its headers: their position, and the
    relays' stamps after its trace. Validation of the result says what is wrong with either."""
    pos = whole_number(headers, POS, None)
    relayed = relayed_stamps(headers)
    if not isinstance(data, dict) or (pos is None and not relayed):
        return data
    data = dict(data)
    if pos is not None:
        data["pos"] = pos
    trace = data.get("trace", [])
    if relayed and isinstance(trace, list):
        data["trace"] = [*trace, *relayed]
    return data


@dataclass(frozen=True)
class RelayView:
    """What a relay reads of a hop: its route and position, and the stamps of the relays before it."""

    route: tuple[RouteStep, ...]
    route_text: str
    pos: int
    relayed: list[Any]

    def onward(self, stamp: dict[str, Any]) -> Headers:
        """The next record's routing headers, this relay's stamp added."""
        return [(ROUTE, self.route_text.encode()), (POS, str(self.pos + 1).encode()),
                (RELAYED, orjson.dumps([*self.relayed, stamp]))]


class RelayReader:
    """Reads a hop on settle.province or settle.national by its headers, without parsing the value;
    a hop sent without them by its body (SettlementHopInTransit: routing fields only)."""

    @staticmethod
    def read_record(value: bytes, headers: dict[str, str]) -> RelayView:
        text = headers.get(ROUTE)
        if text is None:
            hop = SettlementHopInTransit.model_validate(orjson.loads(value))
            return RelayView(tuple(hop.route), route_text(hop.route), hop.pos, [])
        pos = whole_number(headers, POS, None)
        if pos is None:
            raise BadMessageError(f"header {POS} is missing: a hop with a {ROUTE} header needs its position",
                                  "BAD_HEADER")
        return RelayView(parse_route(text), text, pos, relayed_stamps(headers))


class Validated(NamedTuple):
    """A claim's last hop as it came (parsed JSON) and what validating it gave; `split_doc` None
    with a split: a split this process made and sent."""

    claim_doc: Any
    claim: Claim
    split_doc: Any
    split: list[FeeSplit] | None


class CityHopReader:
    """Reads a hop on settle.city: its body with its headers (`with_routing`), validated in full
    but for a claim or split this reader validated, or this process made, before on the same
    claim's way."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self.size = size
        self._seen: OrderedDict[str, Validated] = OrderedDict()
        self._sent: OrderedDict[str, tuple[bytes, SettlementHop]] = OrderedDict()  # by msgid: value, hop
        self.reused = 0  # claims and splits not validated again
        self.unparsed = 0  # hops that came back as the bytes sent

    def read_record(self, value: bytes, headers: dict[str, str]) -> SettlementHop:
        hop = self._as_sent(value, headers)
        if hop is not None:
            return hop
        return self.model_validate(with_routing(orjson.loads(value), headers))

    def sent(self, hop: SettlementHop, value: bytes) -> None:
        """A hop this process sends on, and `value`, the bytes it is sent as: if those bytes come
        back, they are this hop. A split it made (the treatment city's, the insured city's) that
        comes back as its JSON in another value is not validated again either."""
        msgid = hop.claim.msgid
        seen = self._seen.get(msgid)
        if seen is not None and seen.claim is hop.claim and hop.split is not None:
            self._seen[msgid] = seen._replace(split_doc=None, split=hop.split)
        self._sent[msgid] = (value, hop)
        self._sent.move_to_end(msgid)
        while len(self._sent) > self.size:
            self._sent.popitem(last=False)

    def _as_sent(self, value: bytes, headers: dict[str, str]) -> SettlementHop | None:
        """The hop this process sent as exactly `value`, moved on by the relays' headers; None for
        any other value (or one without a position header)."""
        msgid = headers.get(CORRELATION)
        mine = self._sent.pop(msgid, None) if msgid else None
        if mine is None or mine[0] != value:
            return None
        pos = whole_number(headers, POS, None)
        if pos is None:
            return None
        hop = mine[1]
        stamps = STAMPS.validate_python(relayed_stamps(headers))
        hop = hop.model_copy(update={"pos": pos, "trace": [*hop.trace, *stamps]})
        self.unparsed += 1
        if self._last_step(hop):
            self._seen.pop(hop.claim.msgid, None)  # the claim's answer: nothing comes back after it
        return hop

    def model_validate(self, data: Any) -> SettlementHop:
        claim_doc = data.get("claim") if isinstance(data, dict) else None
        msgid = claim_doc.get("msgid") if isinstance(claim_doc, dict) else None
        if not isinstance(msgid, str):
            return SettlementHop.model_validate(data)  # not ours to remember; validation says why
        seen = self._seen.pop(msgid, None)
        split_doc = data.get("split")
        if seen is not None:
            data = dict(data)
            if seen.claim_doc == claim_doc:
                data["claim"] = seen.claim
                self.reused += 1
            if seen.split is not None and split_doc is not None and self._same_split(seen.split_doc, seen.split,
                                                                                      split_doc):
                data["split"] = seen.split
                self.reused += 1
        hop = SettlementHop.model_validate(data)
        if self._last_step(hop):
            return hop  # the claim's answer: nothing comes back after it
        self._seen[msgid] = Validated(claim_doc, hop.claim, split_doc, hop.split)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return hop

    @staticmethod
    def _same_split(seen_doc: Any, split: list[FeeSplit], split_doc: Any) -> bool:
        if seen_doc is not None:
            return bool(seen_doc == split_doc)
        # made here: its JSON as a compact hop carries it, built and compared (a third of validating it)
        return bool(SPLITS.dump_python(split, mode="json", exclude_defaults=True) == split_doc)

    @staticmethod
    def _last_step(hop: SettlementHop) -> bool:
        return hop.pos < len(hop.route) and hop.route[hop.pos].action is HopAction.FINISH
