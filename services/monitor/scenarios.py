"""A labelled scenario generator for the rule catalogue: clean traffic (claims no rule should
flag) with every violation type injected at a known rate, as national 2207/2304 requests a
hospital sends. Each plan is one person's (or one group's) claims in order; a label says which rule
must fire on which of them, so precision and recall per rule can be counted from what the
platform answers and the monitor raises.

Labels name a group of msgids when which claim carries the alert depends on processing order
(a trace code resold, a cluster): any of them counts as found."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas.common import new_msgid
from schemas.events import ClaimFacts, FeeSplit, LineFacts, Outcome, Setlinfo, SettlementResult

TREAT = "440100"  # 广州
HOSP3, HOSP2, CLINIC = "H44010400001", "H44010600002", "H44011100003"  # levels 3, 2, 1
CONSULT = ("001102000010000", "25.00")
CLEAN_DRUGS = [("XA01ABD075A002010100483", "12.00"), ("XC09CAL032A001010100512", "3.50"),
               ("XJ01DCT034B001010100220", "20.00"), ("ZA04AAG0101010100123", "15.00")]
CLEAN_EXAMS = [("002101000010000", "70.00"), ("003311000020000", "180.00")]
METFORMIN, HBA1C = ("XA10BAE057A001010100321", "0.45"), ("002502030010000", "60.00")
BED, CATHETER = ("001101000010000", "60.00"), ("001216000010000", "20.00")
SURGERY, ANAESTHESIA = ("003313000010000", "1500.00"), ("003302000010000", "800.00")
CLEAN_DIAGNOSES = ["I10", "J06.900", "K29.700", "J20.900", "M79.100", "R51", "L30.900", "H10.900", "N39.000",
                   "K52.900", "J02.900", "R10.400", "I25.100", "E78.500", "J45.900", "K21.000", "M54.200",
                   "G43.900", "F51.000", "B34.900"]


@dataclass
class Person:
    psn_no: str
    region: str
    hardship: bool = False


@dataclass
class Step:
    body: dict[str, Any]
    label: str | None = None  # the rule that must fire on this claim
    group: str | None = None  # a label shared by several claims: found when any of them carries it
    then_death: date | None = None  # after this claim: the person's death is recorded, on this day


@dataclass
class Plan:
    steps: list[Step]
    rule: str | None = None  # None: clean traffic
    groups: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # group → (rule, msgids)


def _line(sn: int | str, item: tuple[str, str], day: date, cnt: int = 1, prd_days: int | None = None,
          trac: str | None = None, pric: str | None = None) -> dict[str, Any]:
    price = pric or item[1]
    line: dict[str, Any] = {"feedetl_sn": str(sn), "med_list_codg": item[0], "cnt": cnt, "pric": price,
                            "det_item_fee_sumamt": f"{float(price) * cnt:.2f}", "fee_ocur_time": f"{day} 09:00:00"}
    if prd_days is not None:
        line["prd_days"] = prd_days
    if trac:
        line["drugtracinfo"] = [{"drug_trac_codg": trac}]
    return line


def claim(p: Person, hosp: str, day: date, lines: list[dict[str, Any]], diagnoses: list[str],
          inpatient: bool = False, insutype: str = "310") -> dict[str, Any]:
    return {"infno": "2304" if inpatient else "2207", "msgid": new_msgid(hosp), "mdtrtarea_admvs": TREAT,
            "insuplc_admdvs": p.region, "fixmedins_code": hosp,
            "inf_time": f"{datetime.now():%Y-%m-%d %H:%M:%S}",
            "input": {"data": {"psn_no": p.psn_no, "insutype": insutype, "med_type": "21" if inpatient else "11",
                               "acct_used_flag": "0", "begntime": f"{day} 08:00:00"},
                      "feedetail": lines, "diseinfo": [{"diag_code": d} for d in diagnoses]}}


class Generator:
    def __init__(self, seed: int, today: date, catalogue: dict[str, Any]) -> None:
        self.r = random.Random(seed)
        self.today = today
        self.items = catalogue  # code → CatalogueItem, for the restricted items the rules are about
        self._trace = 0

    def day(self, back_from: int = 45, back_to: int = 2) -> date:
        return self.today - timedelta(days=self.r.randint(back_to, back_from))

    def trace(self) -> str:
        self._trace += 1
        return f"8{self.r.randint(10**8, 10**9 - 1)}{self._trace:010d}"

    def clean_outpatient(self, p: Person, day: date, hosp: str | None = None, diabetic: bool = False) -> dict[str, Any]:
        """A visit no rule flags: one consultation, a few drugs for at most 7 days, maybe one exam."""
        lines = [_line(1, CONSULT, day)]
        for sn, drug in enumerate(self.r.sample(CLEAN_DRUGS, self.r.randint(1, 3)), 2):
            lines.append(_line(sn, drug, day, cnt=self.r.randint(1, 3), prd_days=self.r.randint(1, 7),
                               trac=self.trace() if self.r.random() < 0.5 else None))
        if self.r.random() < 0.4:
            lines.append(_line(9, self.r.choice(CLEAN_EXAMS), day))
        diagnoses = [self.r.choice(CLEAN_DIAGNOSES)]
        if diabetic:
            lines.append(_line(10, METFORMIN, day, cnt=14, prd_days=7))
            diagnoses.append("E11.900")
            if self.r.random() < 0.5:
                lines.append(_line(11, HBA1C, day))
        return claim(p, hosp or self.r.choice([HOSP3, HOSP2, CLINIC]), day, lines, diagnoses)

    def stay_lines(self, begin: date, days: int, bare_days: int = 0) -> list[dict[str, Any]]:
        """A bed and some care every day (the last `bare_days` days: the bed only), the operation first."""
        lines = [_line("op", SURGERY, begin), _line("an", ANAESTHESIA, begin)]
        for i in range(days):
            d = begin + timedelta(days=i)
            lines.append(_line(f"b{i}", BED, d))
            if i < days - bare_days:
                lines.append(_line(f"c{i}", CATHETER, d))
        return lines

    def clean_stay(self, p: Person, begin: date, hosp: str = HOSP3, diagnosis: str = "K35.800") -> dict[str, Any]:
        return claim(p, hosp, begin, self.stay_lines(begin, self.r.randint(3, 6)), [diagnosis], inpatient=True)

    def clean_plan(self, p: Person) -> Plan:
        if self.r.random() < 0.25:
            return Plan([Step(self.clean_stay(p, self.day(40, 10), diagnosis=self.r.choice(["K35.800", "S82.200",
                                                                                           "J18.900"])))])
        diabetic = self.r.random() < 0.3
        days = sorted(self.r.sample(range(3, 60), self.r.randint(1, 3)))  # HbA1c at most every 90 days
        if diabetic:
            days = days[:1]
        return Plan([Step(self.clean_outpatient(p, self.today - timedelta(days=d), diabetic=diabetic)) for d in days])

    # --- one violation each --------------------------------------------------------------

    def _one_line(self, rule: str, p: Person, day: date, extra: list[dict[str, Any]], hosp: str = HOSP3,
                  diagnoses: list[str] | None = None, insutype: str = "310") -> Plan:
        """One visit: a consultation and the lines that break `rule`, on `day`."""
        lines = [_line(1, CONSULT, day), *extra]
        return Plan([Step(claim(p, hosp, day, lines, diagnoses or [self.r.choice(CLEAN_DIAGNOSES)], insutype=insutype),
                          label=rule)], rule)

    def _restricted(self, attr: str, value: str) -> tuple[str, str]:
        item = next(i for i in self.items.values() if getattr(i, attr) == value and i.pric_uplmt_amt
                    and not any(getattr(i, a) for a in ("lmt_gend", "lmt_age_min", "lmt_age_max", "lmt_hosp_lv",
                                                        "lmt_scope") if a != attr))
        return item.code, str(item.pric_uplmt_amt)

    def violation(self, rule: str, people: Callable[[], Person]) -> Plan:
        d = self.day()
        p = people()
        one = self._one_line
        if rule == "R-GENDER":
            return one(rule, p, d, [_line(2, ("002703000030000", "150.00"), d)])  # TCT for a man
        if rule == "R-AGE-NB":
            return one(rule, p, d, [_line(2, ("001203000010000", "15.00"), d)])
        if rule == "R-AGE-CHILD":
            return one(rule, p, d, [_line(2, ("XR05CBX001D001010100555", "30.00"), d, prd_days=5)])
        if rule == "R-LEVEL":
            return one(rule, p, d, [_line(2, self._restricted("lmt_hosp_lv", "3"), d)], hosp=HOSP2)
        if rule == "R-SETTING":
            return one(rule, p, d, [_line(2, self._restricted("lmt_scope", "ip"), d)])
        if rule == "R-INDIC":
            return one(rule, p, d, [_line(2, ("XL01XCA186B002010100998", "8800.00"), d)], diagnoses=["J06.900"])
        if rule == "R-INSUTYPE":
            return one(rule, p, d, [_line(2, ("003403000010000", "120.00"), d)])
        if rule == "R-DUP":
            return one(rule, p, d, [_line(2, CONSULT, d)])
        if rule == "R-ADDON":
            return one(rule, p, d, [_line(2, ("001102000030000", "10.00"), d, cnt=2)])
        if rule == "R-OVERSTD":
            return one(rule, p, d, [_line(2, CLEAN_DRUGS[1], d, cnt=10, pric="4.00", prd_days=5)])
        if rule == "R-SPLIT-ITEM":
            return one(rule, p, d, [_line(2, ("002501010020000", "5.00"), d), _line(3, ("002501010030000", "5.00"), d)])
        if rule == "R-MISSING-LINK":
            return one(rule, p, d, [_line(2, ANAESTHESIA, d)])
        if rule == "R-QTY":
            return one(rule, p, d, [_line(2, METFORMIN, d, cnt=60, prd_days=30)], diagnoses=["E11.900"])
        if rule == "R-CONTRA":
            return one(rule, p, d, [_line(2, ("XJ01FAK001A001010100333", "30.00"), d, prd_days=5),
                                 _line(3, ("XC10AAX001A001010100444", "15.00"), d, prd_days=5)])
        if rule == "R-GHOST-BED":
            begin = self.day(40, 10)
            return Plan([Step(claim(p, HOSP3, begin, self.stay_lines(begin, 6, bare_days=3), ["K35.800"],
                                    inpatient=True), label=rule)], rule)
        if rule == "R-LARGE":
            begin = self.day(40, 10)
            lines = [*self.stay_lines(begin, 4), _line("drug", ("XL01XCA186B002010100998", "8800.00"), begin, cnt=4)]
            return Plan([Step(claim(p, HOSP3, begin, lines, ["C34.900"], inpatient=True), label=rule)], rule)
        if rule == "R-FREQ":
            first = self.day(60, 40)
            return Plan([Step(claim(p, HOSP3, first, [_line(1, CONSULT, first), _line(2, HBA1C, first)], ["I10"])),
                         Step(claim(p, HOSP3, first + timedelta(days=30),
                                    [_line(1, CONSULT, first + timedelta(days=30)),
                                     _line(2, HBA1C, first + timedelta(days=30))], ["I10"]), label=rule)], rule)
        if rule == "R-SPLIT-ADM":
            begin = self.day(50, 35)
            return Plan([Step(claim(p, HOSP3, begin, self.stay_lines(begin, 5), ["K35.800"], inpatient=True)),
                         Step(claim(p, HOSP2, begin + timedelta(days=12), self.stay_lines(begin + timedelta(days=12), 4),
                                    ["K35.900"], inpatient=True), label=rule)], rule)
        if rule == "R-OVERLAP":
            begin = self.day(40, 10)
            stay = claim(p, HOSP3, begin, self.stay_lines(begin, 5), ["S82.200"], inpatient=True)
            visit = self.clean_outpatient(p, begin + timedelta(days=2), hosp=CLINIC)
            return Plan([Step(stay), Step(visit)], rule, {"g": (rule, [stay["msgid"], visit["msgid"]])})
        if rule == "R-DEAD":
            c = self.clean_outpatient(p, d)
            return Plan([Step(c, label=rule, then_death=d - timedelta(days=1))], rule)
        if rule == "R-TRACE":
            code, other = self.trace(), people()
            a = claim(p, HOSP3, d, [_line(1, CONSULT, d), _line(2, CLEAN_DRUGS[0], d, prd_days=3, trac=code)], ["J02.900"])
            b = claim(other, HOSP2, d, [_line(1, CONSULT, d), _line(2, CLEAN_DRUGS[0], d, prd_days=3, trac=code)],
                      ["J02.900"])
            return Plan([Step(a), Step(b)], rule, {"g": (rule, [a["msgid"], b["msgid"]])})
        if rule == "R-CLUSTER":
            region = p.region
            group: list[Person] = [p]
            while len(group) < 5:
                q = people()
                if q.region == region and q not in group:
                    group.append(q)
            steps = [Step(claim(q, CLINIC, d, [_line(1, CONSULT, d)], ["M54.500"])) for q in group]
            return Plan(steps, rule, {"g": (rule, [s.body["msgid"] for s in steps])})
        if rule == "R-VISITS":
            days = sorted(self.r.sample(range(2, 30), 7), reverse=True)
            steps = [Step(claim(p, HOSP3, self.today - timedelta(days=k), [_line(1, CONSULT, self.today - timedelta(days=k))],
                                ["I10"])) for k in days]
            steps[-1].label = rule
            return Plan(steps, rule)
        if rule == "R-POVERTY":
            lines = [_line(1, CONSULT, d), _line(2, ("XN02BEA086A001010100777", "18.50"), d, cnt=600)]
            return Plan([Step(claim(p, HOSP3, d, lines, ["G43.900"]), label=rule)], rule)
        raise ValueError(f"no scenario for {rule}")


def settled(msgid: str, psn_no: str, hosp: str, day: date, lines: list[tuple[str, Decimal, Decimal]],
            insuplc: str = "360100", treat: str = TREAT, trac: dict[str, str] | None = None,
            diagnoses: tuple[str, ...] = ("I10",)) -> SettlementResult:
    """A settled outpatient claim as settle.completed carries it, for feeding the monitor directly:
    lines as (item code, count, unit price); `trac` gives a line's (by item code) trace code. The
    fund pays the whole bill (the rules do not read the split's money)."""
    zero = Decimal("0.00")
    facts, split = [], []
    for k, (code, cnt, pric) in enumerate(lines, 1):
        amt = (cnt * pric).quantize(Decimal("0.01"))
        facts.append(LineFacts(feedetl_sn=str(k), cnt=cnt, pric=pric, day=day,
                               trac=[trac[code]] if trac and code in trac else []))
        split.append(FeeSplit(feedetl_sn=str(k), med_list_codg=code, det_item_fee_sumamt=amt, chrgitm_lv="01",
                              selfpay_prop=zero, fulamt_ownpay_amt=zero, overlmt_amt=zero, preselfpay_amt=zero,
                              inscp_scp_amt=amt))
    total = sum((s.det_item_fee_sumamt for s in split), zero)
    info = Setlinfo(setl_id=f"S{msgid[-20:]}", mdtrt_id=f"MD{msgid[-20:]}", psn_no=psn_no, psn_name="sealed", gend="1",
                    brdy="1970-01-01", age=day.year - 1970, insutype="310", psn_type="11", med_type="11",
                    setl_time=f"{day} 10:00:00", medfee_sumamt=total, fulamt_ownpay_amt=zero, overlmt_selfpay=zero,
                    preselfpay_amt=zero, inscp_scp_amt=total, act_pay_dedc=zero, hifp_pay=total, pool_prop_selfpay=zero,
                    fund_pay_sumamt=total, psn_part_amt=zero, acct_pay=zero, psn_cash_pay=zero, balc=zero,
                    medins_setl_id=msgid, clr_optins=insuplc, clr_type="11")
    return SettlementResult(msgid=msgid, infno="2207", fixmedins_code=hosp, mdtrtarea_admvs=treat,
                            insuplc_admdvs=insuplc, psn_no=psn_no, outcome=Outcome(infcode=0, setlinfo=info),
                            split=split, facts=ClaimFacts(med_type="11", begntime=day, endtime=day,
                                                          diagnoses=list(diagnoses), hosp_lv="3", lines=facts))
