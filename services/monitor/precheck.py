"""事中 pre-check (the 3102 check): the catalogue's precheck rules on a claim before the insured city
settles it, run by the treatment city's hop in-process (no call across the network, so inside the
hop's time budget). A hit of a rule whose action is refuse refuses the claim with the lines and
reasons; the other hits travel with the claim and come back in the hospital's answer."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import Claim
from services.monitor.catalogue import RuleBook
from services.monitor.facts import Episode, Hit, from_claim, judge_result
from services.monitor.rules import Items, evaluate

TRIG_SCEN = {"2207": "6", "2206": "7", "2304": "8", "2303": "9"}  # 门诊结算, 门诊预结算, 住院结算, 住院预结算


@dataclass(frozen=True)
class Verdict:
    hits: list[Hit]
    rows: list[dict[str, object]]  # 3102 result rows, one per hit

    @property
    def refused(self) -> list[Hit]:
        return [h for h in self.hits if h.refuse]

    def reason(self) -> str:
        return "；".join(f"{h.rule_name}({h.rule_id}) 明细 {','.join(h.feedetl_sn) or '-'}: {h.vola_cont}"
                        for h in self.refused)


PERSON_KINDS = {"gender", "age"}  # need the person's gender and age, which a 3101/3102 request carries


def check_episode(book: RuleBook, ep: Episode, items: Items, with_person: bool = False,
                  only: list[str] | None = None, trig_scen: str = "") -> Verdict:
    """The precheck rules on one encounter; `with_person` adds the rules that need the person
    (gender, age), `only` keeps the rules named."""
    catalogue = book.current()
    rules = catalogue.for_phase("precheck", ep.begntime)
    if with_person:
        rules += [r for r in catalogue.for_phase("post", ep.begntime) if r.kind in PERSON_KINDS and r not in rules]
    if only:
        rules = [r for r in rules if r.id in only]
    hits = evaluate(rules, ep, items, precheck=True)
    return Verdict(hits, [judge_result(h, ep, n) | {"trig_scen": trig_scen} for n, h in enumerate(hits, 1)])


def check_claim(book: RuleBook, c: Claim, hosp_lv: str | None, items: Items) -> Verdict | None:
    """None when the claim is not one the pre-check looks at (no fee lines, not a settlement)."""
    if c.infno not in TRIG_SCEN or not c.fees:
        return None
    return check_episode(book, from_claim(c, hosp_lv), items, trig_scen=TRIG_SCEN[c.infno])
