"""What the rules read and what they find: an encounter (Episode) with its lines, a rule hit (Hit),
and the 3102-shaped result a hospital reads. Built from a claim before it settles (事中) or from a
settled claim (事后); fields the phase does not know (the person's gender and age before the insured
city answers) are None and the rules that need them do not run there."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from schemas.events import Claim, SettlementResult

ZERO = Decimal("0.00")


@dataclass(frozen=True)
class Line:
    feedetl_sn: str
    code: str
    cnt: Decimal
    pric: Decimal
    amount: Decimal
    day: date
    prd_days: Decimal | None = None
    trac: tuple[str, ...] = ()


@dataclass(frozen=True)
class Episode:
    msgid: str
    psn_no: str
    fixmedins_code: str
    mdtrtarea_admvs: str
    insuplc_admdvs: str
    insutype: str
    med_type: str
    begntime: date
    endtime: date
    lines: tuple[Line, ...]
    diagnoses: tuple[str, ...] = ()
    hosp_lv: str | None = None
    mdtrt_id: str | None = None
    setl_id: str | None = None
    gend: str | None = None
    age: int | None = None
    medfee: Decimal = ZERO
    selfpay: Decimal = ZERO  # what the person paid themselves (psn_part_amt)

    @property
    def inpatient(self) -> bool:
        return self.med_type.startswith("2")

    @property
    def cross_province(self) -> bool:
        return self.mdtrtarea_admvs[:2] != self.insuplc_admdvs[:2]


@dataclass(frozen=True)
class Hit:
    rule_id: str
    rule_name: str
    severity: str
    vola_bhvr_type: str
    vola_cont: str
    vola_amt: Decimal
    feedetl_sn: tuple[str, ...] = ()
    key: str = ""  # what makes the alert one: the claim's msgid unless the rule says (a cluster, a year)
    refuse: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def line_day(fee_ocur_time: str | None, default: date) -> date:
    return date.fromisoformat(fee_ocur_time[:10]) if fee_ocur_time else default


def from_claim(c: Claim, hosp_lv: str | None) -> Episode:
    """事中: the claim as the treatment city holds it before the insured city settles it."""
    lines = tuple(Line(f.feedetl_sn, f.med_list_codg, f.cnt, f.pric, f.det_item_fee_sumamt,
                       line_day(f.fee_ocur_time, c.begntime), f.prd_days, tuple(f.trace_codes)) for f in c.fees)
    end = max((ln.day for ln in lines), default=c.begntime)
    return Episode(msgid=c.msgid, psn_no=c.psn_no, fixmedins_code=c.fixmedins_code,
                   mdtrtarea_admvs=c.mdtrtarea_admvs, insuplc_admdvs=c.insuplc_admdvs, insutype=c.insutype,
                   med_type=c.med_type, begntime=c.begntime, endtime=max(end, c.begntime), lines=lines,
                   diagnoses=_diagnoses(c.dise_codg, (d.diag_code for d in c.diagnoses)), hosp_lv=hosp_lv,
                   mdtrt_id=c.mdtrt_id, medfee=sum((f.det_item_fee_sumamt for f in c.fees), ZERO))


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SetlinfoView(_View):
    setl_id: str
    mdtrt_id: str
    insutype: str
    gend: str
    brdy: str = ""
    age: int = 0
    medfee_sumamt: Decimal
    psn_part_amt: Decimal


class OutcomeView(_View):
    infcode: int
    setlinfo: SetlinfoView | None = None
    psn_gend: str | None = None
    data: dict[str, object] | None = None


class SplitView(_View):
    feedetl_sn: str
    med_list_codg: str
    det_item_fee_sumamt: Decimal


class LineView(_View):
    feedetl_sn: str
    cnt: Decimal
    pric: Decimal
    day: date
    prd_days: Decimal | None = None
    trac: list[str] = []


class FactsView(_View):
    med_type: str
    begntime: date
    endtime: date
    dise_codg: str | None = None
    diagnoses: list[str] = []
    hosp_lv: str | None = None
    lines: list[LineView] = []


class SettledView(_View):
    """How the monitor reads settle.completed: the same ce_type and bytes, only what the rules use
    validated (the answer's national fields, hop trace and fund rows pass unread)."""

    msgid: str
    infno: str
    fixmedins_code: str
    mdtrtarea_admvs: str
    insuplc_admdvs: str
    psn_no: str
    outcome: OutcomeView
    split: list[SplitView] = []
    facts: FactsView | None = None


def from_result(r: SettledView | SettlementResult) -> Episode | None:
    """事后: a settlement as settle.completed carries it; None for anything else (a refusal, a
    reversal, a pre-settlement, an answer without the encounter's facts)."""
    info, facts = r.outcome.setlinfo, r.facts
    if r.outcome.infcode != 0 or info is None or facts is None:
        return None
    amounts = {s.feedetl_sn: (s.med_list_codg, s.det_item_fee_sumamt) for s in r.split}
    lines = tuple(Line(f.feedetl_sn, amounts[f.feedetl_sn][0], f.cnt, f.pric, amounts[f.feedetl_sn][1], f.day,
                       f.prd_days, tuple(f.trac)) for f in facts.lines if f.feedetl_sn in amounts)
    return Episode(msgid=r.msgid, psn_no=r.psn_no, fixmedins_code=r.fixmedins_code,
                   mdtrtarea_admvs=r.mdtrtarea_admvs, insuplc_admdvs=r.insuplc_admdvs, insutype=info.insutype,
                   med_type=facts.med_type, begntime=facts.begntime, endtime=facts.endtime, lines=lines,
                   diagnoses=_diagnoses(facts.dise_codg, facts.diagnoses), hosp_lv=facts.hosp_lv,
                   mdtrt_id=info.mdtrt_id, setl_id=info.setl_id, gend=info.gend or r.outcome.psn_gend,
                   age=info.age if info.brdy else None, medfee=info.medfee_sumamt, selfpay=info.psn_part_amt)


def _diagnoses(dise_codg: str | None, codes: Iterable[str]) -> tuple[str, ...]:
    out = [c for c in codes if c]
    if dise_codg and dise_codg not in out:
        out.append(dise_codg)
    return tuple(out)


def judge_result(h: Hit, ep: Episode, n: int) -> dict[str, object]:
    """One hit as a 3101/3102 result row (jr_id, rule_id, rule_name, vola_cont, sev_deg …) with a
    judge_result_detail_dtos row per line (vola_item_type 1 = the violating line)."""
    jr = f"{ep.msgid}-{n}"
    return {"jr_id": jr, "rule_id": h.rule_id, "rule_name": h.rule_name, "vola_cont": h.vola_cont,
            "patn_id": ep.psn_no, "mdtrt_id": ep.mdtrt_id or "", "vola_amt": str(h.vola_amt),
            "sev_deg": h.severity, "vola_bhvr_type": h.vola_bhvr_type, "action": "refuse" if h.refuse else "flag",
            "judge_result_detail_dtos": [{"jrd_id": f"{jr}-{i}", "patn_id": ep.psn_no, "mdtrt_id": ep.mdtrt_id or "",
                                          "feedetl_sn": sn, "vola_item_type": "1"}
                                         for i, sn in enumerate(h.feedetl_sn, 1)]}
