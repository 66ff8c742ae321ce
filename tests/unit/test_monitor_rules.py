"""The rule catalogue and every rule kind, on encounters built by hand, with an in-file History."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from services.monitor.catalogue import RuleBook, load
from services.monitor.facts import Episode, Line
from services.monitor.outliers import Usage, find
from services.monitor.rules import Stay, evaluate
from services.settle.refdata import load_catalogue

ITEMS = load_catalogue()
CAT = load()
DAY = date(2026, 11, 10)
HBA1C, METFORMIN, ATEZO = "002502030010000", "XA10BAE057A001010100321", "XL01XCA186B002010100998"
BED, CLARI, SIMVA = "001101000010000", "XJ01FAK001A001010100333", "XC10AAX001A001010100444"
CONSULT, PSA, TCT = "001102000010000", "002503090110000", "002703000030000"


def line(sn: str, code: str, pric: str = "10.00", cnt: str = "1", day: date = DAY, prd_days: str | None = None,
         trac: tuple[str, ...] = ()) -> Line:
    return Line(sn, code, Decimal(cnt), Decimal(pric), (Decimal(pric) * Decimal(cnt)).quantize(Decimal("0.01")),
                day, Decimal(prd_days) if prd_days else None, trac)


def episode(*lines: Line, **kw: object) -> Episode:
    base: dict[str, object] = dict(
        msgid="M1", psn_no="P1", fixmedins_code="H44010400001", mdtrtarea_admvs="440100", insuplc_admdvs="360100",
        insutype="310", med_type="11", begntime=DAY, endtime=DAY, lines=tuple(lines), hosp_lv="3", gend="1", age=40,
        medfee=sum((ln.amount for ln in lines), Decimal("0.00")))
    base.update(kw)
    return Episode(**base)  # type: ignore[arg-type]


@dataclass
class FakeHistory:
    past: list[Stay] = field(default_factory=list)
    uses: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    diags: list[str] = field(default_factory=list)
    died: date | None = None
    hardship: bool = False
    sold: dict[str, str] = field(default_factory=dict)
    at_clinic: set[str] = field(default_factory=set)
    n_visits: int = 0
    paid: Decimal = Decimal("0")

    def stays(self, psn_no: str, since: date, until: date) -> list[Stay]:
        return [s for s in self.past if s.endtime >= since and s.begntime <= until]

    def item_uses(self, psn_no: str, code: str, since: date) -> Decimal:
        return self.uses.get((psn_no, code), Decimal(0))

    def diagnoses(self, psn_no: str) -> list[str]:
        return self.diags

    def death_date(self, psn_no: str) -> date | None:
        return self.died

    def hardship_on(self, psn_no: str, day: date) -> bool:
        return self.hardship

    def trace_sold(self, code: str) -> str | None:
        return self.sold.get(code)

    def persons_at(self, fixmedins_code: str, day: date, insuplc: str, diagnosis: str, at_most: int) -> set[str]:
        return self.at_clinic

    def visits(self, psn_no: str, since: date) -> int:
        return self.n_visits

    def selfpay_in(self, psn_no: str, year: int) -> Decimal:
        return self.paid


def hits(ep: Episode, rule_id: str, history: FakeHistory | None = None, precheck: bool = False) -> list[str]:
    rules = [r for r in CAT.rules if r.id == rule_id]
    assert rules, rule_id
    return [",".join(h.feedetl_sn) or h.key for h in evaluate(rules, ep, ITEMS, history or FakeHistory(), precheck)]


def test_the_catalogue_has_twenty_rules_in_three_families_and_every_kind_is_used() -> None:
    assert len(CAT.rules) >= 20
    assert {r.family for r in CAT.rules} == {"政策", "管理", "医疗"}
    assert {r.severity for r in CAT.rules} == {"明确违规", "高度可疑", "可疑"}
    from services.monitor.rules import AGGREGATE_KINDS, KINDS
    assert {r.kind for r in CAT.rules} == set(KINDS) | AGGREGATE_KINDS


def test_a_catalogue_that_does_not_validate_is_refused_with_the_reason(tmp_path: Path) -> None:
    data = json.loads(Path("services/monitor/refdata/rules.json").read_text(encoding="utf-8"))
    bad = dict(data, rules=[*data["rules"], dict(data["rules"][0])])
    (tmp_path / "r.json").write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match="used twice: R-GENDER"):
        load(tmp_path / "r.json")
    stateful_in_precheck = dict(data, rules=[r | {"phases": ["precheck"]} if r["id"] == "R-SPLIT-ADM" else r
                                             for r in data["rules"]])
    (tmp_path / "r.json").write_text(json.dumps(stateful_in_precheck, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match="R-SPLIT-ADM .* reads history"):
        load(tmp_path / "r.json")


def test_the_book_reloads_a_changed_file_and_keeps_its_rules_when_the_new_file_is_broken(tmp_path: Path) -> None:
    import os

    path = tmp_path / "rules.json"
    data = json.loads(Path("services/monitor/refdata/rules.json").read_text(encoding="utf-8"))
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    book = RuleBook(path, check_every_s=0)
    assert book.current().version == data["version"]
    path.write_text(json.dumps(data | {"version": "v2"}, ensure_ascii=False), encoding="utf-8")
    os.utime(path, ns=(1, 10**18))
    assert book.current().version == "v2"
    path.write_text("{ not json", encoding="utf-8")
    os.utime(path, ns=(1, 2 * 10**18))
    assert book.current().version == "v2"


def test_gender_and_age_need_the_person_and_name_the_lines() -> None:
    assert hits(episode(line("1", PSA), line("2", TCT), gend="1"), "R-GENDER") == ["2"]
    assert hits(episode(line("1", TCT), gend=None), "R-GENDER") == []
    nb = line("1", "001203000010000")
    assert hits(episode(nb, age=0), "R-AGE-NB") == []
    assert hits(episode(nb, age=3), "R-AGE-NB") == ["1"]
    assert hits(episode(line("1", "XR05CBX001D001010100555"), age=15), "R-AGE-CHILD") == ["1"]
    assert hits(episode(line("1", "XR05CBX001D001010100555"), age=14), "R-AGE-CHILD") == []


def test_hospital_level_and_setting_come_from_the_treatment_catalogue() -> None:
    lv3 = next(c for c, i in ITEMS.items() if i.lmt_hosp_lv == "3")
    ip = next(c for c, i in ITEMS.items() if i.lmt_scope == "ip")
    assert hits(episode(line("1", lv3), hosp_lv="2"), "R-LEVEL") == ["1"]
    assert hits(episode(line("1", lv3), hosp_lv="3"), "R-LEVEL") == []
    assert hits(episode(line("1", ip), med_type="11"), "R-SETTING") == ["1"]
    assert hits(episode(line("1", ip), med_type="21"), "R-SETTING") == []


def test_indication_insutype_contraindication_refuse_in_precheck() -> None:
    rules = [r for r in CAT.rules if r.id in ("R-INDIC", "R-CONTRA", "R-INSUTYPE")]
    ep = episode(line("1", ATEZO, "8000.00"), line("2", CLARI), line("3", SIMVA), line("4", "003403000010000"),
                 diagnoses=("C18.900",))
    found = evaluate(rules, ep, ITEMS, precheck=True)
    assert sorted((h.rule_id, h.feedetl_sn) for h in found) == [
        ("R-CONTRA", ("2", "3")), ("R-INDIC", ("1",)), ("R-INSUTYPE", ("4",))]
    assert all(h.refuse for h in found)
    assert hits(episode(line("1", ATEZO), diagnoses=("C34.900",)), "R-INDIC") == []
    assert hits(episode(line("1", METFORMIN)), "R-INDIC") == ["1"]  # no diagnosis at all: nothing justifies it
    assert not any(h.refuse for h in evaluate(rules, ep, ITEMS, precheck=False))


def test_duplicates_add_ons_price_cap_unbundling_missing_link_days_supply() -> None:
    assert hits(episode(line("1", CONSULT), line("2", CONSULT), line("3", CONSULT, day=DAY + timedelta(1))),
                "R-DUP") == ["2"]
    assert hits(episode(line("1", "001102000030000", cnt="2")), "R-ADDON") == ["1"]
    capped = line("1", "XC09CAL032A001010100512", pric="4.00", cnt="10")
    found = evaluate([r for r in CAT.rules if r.id == "R-OVERSTD"], episode(capped), ITEMS)
    assert [(h.feedetl_sn, h.vola_amt) for h in found] == [(("1",), Decimal("2.00"))]  # (4.00 − 3.80) × 10
    assert hits(episode(line("1", "002501010020000"), line("2", "002501010030000")), "R-SPLIT-ITEM") == ["1,2"]
    assert hits(episode(line("1", "002501010020000")), "R-SPLIT-ITEM") == []
    assert hits(episode(line("1", "003302000010000")), "R-MISSING-LINK") == ["1"]
    assert hits(episode(line("1", "003302000010000"), line("2", "003313000010000")), "R-MISSING-LINK") == []
    assert hits(episode(line("1", METFORMIN, prd_days="30")), "R-QTY") == ["1"]
    assert hits(episode(line("1", METFORMIN, prd_days="30"), med_type="14"), "R-QTY") == []


def test_bed_only_days_and_large_amounts() -> None:
    days = [line(str(i), BED, "60.00", day=DAY + timedelta(i)) for i in range(4)]
    treated = [line("t", CONSULT, day=DAY)]
    assert hits(episode(*days, *treated, med_type="21"), "R-GHOST-BED") == ["1,2,3"]
    assert hits(episode(*days[:3], *treated, med_type="21"), "R-GHOST-BED") == []
    big = line("1", "003313000010000", "1500.00", cnt="25")
    assert hits(episode(big, med_type="21"), "R-LARGE") == ["M1"]
    assert hits(episode(big, med_type="21", insuplc_admdvs="440300"), "R-LARGE") == []  # same province


def test_frequency_counts_the_window_and_spares_the_diabetic() -> None:
    ep = episode(line("1", HBA1C))
    assert hits(ep, "R-FREQ", FakeHistory()) == []
    assert hits(ep, "R-FREQ", FakeHistory(uses={("P1", HBA1C): Decimal(1)})) == ["1"]
    assert hits(ep, "R-FREQ", FakeHistory(uses={("P1", HBA1C): Decimal(1)}, diags=["E11.900"])) == []


def stay(msgid: str, begn: date, end: date, diag: str = "K35.800", hosp: str = "H44010600002",
         inpatient: bool = True, admdvs: str = "440100") -> Stay:
    return Stay(msgid, hosp, admdvs, inpatient, begn, end, (diag,))


def test_readmission_within_15_days_with_a_related_diagnosis_but_not_chemotherapy() -> None:
    ep = episode(line("1", BED), med_type="21", diagnoses=("K35.900",))
    before = FakeHistory(past=[stay("M0", DAY - timedelta(20), DAY - timedelta(10))])
    assert hits(ep, "R-SPLIT-ADM", before) == ["1"]
    assert hits(ep, "R-SPLIT-ADM", FakeHistory(past=[stay("M0", DAY - timedelta(30), DAY - timedelta(16))])) == []
    assert hits(replace(ep, diagnoses=("I10",)), "R-SPLIT-ADM", before) == []  # unrelated
    assert hits(replace(ep, diagnoses=("K35.900", "Z51.100")), "R-SPLIT-ADM", before) == []  # a chemo cycle


def test_overlapping_stays_in_two_provinces() -> None:
    ep = episode(line("1", CONSULT))
    elsewhere = FakeHistory(past=[stay("M0", DAY - timedelta(2), DAY + timedelta(3), hosp="H36010200001",
                                       admdvs="360100")])
    assert hits(ep, "R-OVERLAP", elsewhere) == ["1"]
    outpatient_too = FakeHistory(past=[stay("M0", DAY, DAY, hosp="H36010200001", inpatient=False)])
    assert hits(ep, "R-OVERLAP", outpatient_too) == []  # two clinic visits on a day are allowed


def test_death_trace_codes_cluster_visits_and_hardship() -> None:
    ep = episode(line("1", METFORMIN, trac=("81234567890123456789",)))
    assert hits(ep, "R-DEAD", FakeHistory(died=DAY - timedelta(1))) == ["1"]
    assert hits(ep, "R-DEAD", FakeHistory(died=DAY)) == []
    assert hits(ep, "R-TRACE", FakeHistory(sold={"81234567890123456789": "M0"})) == ["1"]
    assert hits(ep, "R-TRACE", FakeHistory()) == []
    twice = episode(line("1", METFORMIN, trac=("8" * 20,)), line("2", METFORMIN, trac=("8" * 20,)))
    assert hits(twice, "R-TRACE", FakeHistory()) == ["2"]
    four = FakeHistory(at_clinic={"P2", "P3", "P4", "P5"})
    clinic = replace(ep, hosp_lv="1", diagnoses=("J06.900",))
    assert hits(clinic, "R-CLUSTER", four) == ["H44010400001-20261110-360100-J06.900"]
    assert hits(clinic, "R-CLUSTER", FakeHistory(at_clinic={"P2", "P3", "P4", "P5", "P6"})) == []  # raised before
    assert hits(replace(clinic, hosp_lv="3"), "R-CLUSTER", four) == []  # a big hospital sees many every day
    assert hits(ep, "R-VISITS", FakeHistory(n_visits=6)) == ["1"]
    assert hits(ep, "R-VISITS", FakeHistory(n_visits=5)) == []
    poor = episode(line("1", BED), selfpay=Decimal("600.00"))
    assert hits(poor, "R-POVERTY", FakeHistory(hardship=True, paid=Decimal("9500.00"))) == ["P1-2026"]
    assert hits(poor, "R-POVERTY", FakeHistory(hardship=False, paid=Decimal("9500.00"))) == []
    assert hits(poor, "R-POVERTY", FakeHistory(hardship=True, paid=Decimal("10000.00"))) == []  # crossed before


def test_a_clean_encounter_hits_nothing() -> None:
    ep = episode(line("1", CONSULT, "25.00"), line("2", METFORMIN, "0.45", cnt="30", prd_days="7"),
                 diagnoses=("E11.900",))
    assert evaluate([r for r in CAT.rules if "aggregate" not in r.phases], ep, ITEMS, FakeHistory()) == []


def usage(rates: dict[str, float], claims: int = 20, code: str = "XA01ABD075A002010100483") -> Usage:
    u = Usage.empty()
    for hosp, per_claim in rates.items():
        u.claims[("2026-11", hosp)] = claims
        u.items[("2026-11", hosp, code)] = Decimal(str(per_claim * claims))
    return u


def test_a_hospital_far_above_its_peers_is_an_outlier_and_ordinary_spread_is_not() -> None:
    rule = next(r for r in CAT.rules if r.id == "R-OUTLIER")
    peers = {f"H4401040000{i}": 1.0 + i / 10 for i in range(1, 7)}
    found = find(usage(peers | {"H44010400009": 200.0}), rule)
    assert [(o.fixmedins_code, round(o.rate), round(o.median, 2)) for o in found] == [("H44010400009", 200, 1.4)]
    assert find(usage(peers | {"H44010400009": 3.0}), rule) == []  # above, but not far above
    assert find(usage({"H44010400001": 1.0, "H44010400009": 200.0}), rule) == []  # too few peers to judge
    same = {f"H4401040000{i}": 2.0 for i in range(1, 7)}
    assert [o.fixmedins_code for o in find(usage(same | {"H44010400009": 200.0}), rule)] == ["H44010400009"]  # MAD 0


def test_the_scenario_generator_has_a_labelled_plan_for_every_per_claim_rule() -> None:
    from services.bench_monitor import Pool, plans
    from services.monitor.scenarios import Generator, Person

    people = [Person(f"P{i:05d}", ["360100", "330100"][i % 2], hardship=i < 20) for i in range(400)]
    rules = [r.id for r in CAT.rules if "aggregate" not in r.phases]
    made = plans(Generator(1, date(2026, 12, 5), ITEMS), Pool(people), rules, per_rule=2, clean=50)
    labelled = {st.label for pl in made for st in pl.steps if st.label} | {
        rule for pl in made for rule, _ in pl.groups.values()}
    assert labelled == set(rules)
    assert sum(pl.rule is None for pl in made) == 50
