"""How a settle worker reads a hop on settle.city: in full, as SettlementHop, except that a claim or
split it validated itself earlier on the same claim's way (the treatment city's split, the insured
city's decision, the treatment city's answer all run in this process when it serves every level)
is not validated again when it comes back as equal JSON. Equal parsed JSON validates to equal
values, so the one validated before is used; anything else, a changed line included, is
validated in full, and a record that does not validate goes to the dead-letter topic as before.

A 200-line inpatient claim costs ~2 ms to validate (its lines' amounts and their cross-checks) and
came back three times; its split twice."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

from schemas.events import Claim, FeeSplit, HopAction, SettlementHop

REMEMBERED = 512  # claims between their split and their answer, in this process


class Validated(NamedTuple):
    """A claim's last hop as it came (parsed JSON) and what validating it gave."""

    claim_doc: Any
    claim: Claim
    split_doc: Any
    split: list[FeeSplit] | None


class CityHopReader:
    def __init__(self, size: int = REMEMBERED) -> None:
        self.size = size
        self._seen: OrderedDict[str, Validated] = OrderedDict()
        self.reused = 0  # claims and splits not validated again

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
            if seen.split is not None and split_doc is not None and seen.split_doc == split_doc:
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
    def _last_step(hop: SettlementHop) -> bool:
        return hop.pos < len(hop.route) and hop.route[hop.pos].action is HopAction.FINISH
