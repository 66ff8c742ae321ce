"""The checks the rule catalogue names (kind → function). Each reads one encounter, the treatment
region's catalogue (知识库: an item's restrictions, price cap, class) and the rule's parameters;
the stateful ones (分解住院, 同时多机构就医, 追溯码 …) also read the person's and the hospital's
history through the History port. A check answers its hits; it never writes."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple, Protocol

from services.monitor.facts import ZERO, Episode, Hit, Line
from services.settle.domain import CatalogueItem

if TYPE_CHECKING:
    from services.monitor.catalogue import RuleSpec

Items = Mapping[str, CatalogueItem]
GEND = {"1": "男", "2": "女"}


class Stay(NamedTuple):
    """Another settled encounter of the same person, as history keeps it (a tuple: a batch builds
    one per past encounter of its persons, thousands, and a frozen dataclass costs 3× as much)."""

    msgid: str
    fixmedins_code: str
    mdtrtarea_admvs: str
    inpatient: bool
    begntime: date
    endtime: date
    diagnoses: tuple[str, ...]


class History(Protocol):
    """What the stateful rules read of what came before this encounter (never the encounter itself)."""

    def stays(self, psn_no: str, since: date, until: date) -> list[Stay]: ...
    def item_uses(self, psn_no: str, code: str, since: date) -> Decimal: ...
    def diagnoses(self, psn_no: str) -> list[str]: ...
    def death_date(self, psn_no: str) -> date | None: ...
    def hardship_on(self, psn_no: str, day: date) -> bool: ...
    def trace_sold(self, code: str) -> str | None: ...
    def persons_at(self, fixmedins_code: str, day: date, insuplc: str, diagnosis: str, at_most: int) -> set[str]:
        """Persons of `insuplc` seen at this clinic on this day with `diagnosis` first; `at_most` of
        them are enough (a rule asks whether the group reached a size, not who all are in it)."""
        ...

    def visits(self, psn_no: str, since: date) -> int: ...
    def selfpay_in(self, psn_no: str, year: int) -> Decimal: ...


Check = Callable[["RuleSpec", Episode, Items, "History | None"], list[Hit]]


def _hit(r: RuleSpec, text: str, lines: list[Line], amount: Decimal | None = None, key: str = "") -> Hit:
    return Hit(r.id, r.name, r.severity, r.type, text,
               sum((ln.amount for ln in lines), ZERO) if amount is None else amount,
               tuple(ln.feedetl_sn for ln in lines), key)


def _name(items: Items, code: str) -> str:
    item = items.get(code)
    return f"{item.name}({code})" if item else code


@lru_cache(maxsize=256)
def _pattern(p: str) -> re.Pattern[str]:
    return re.compile(p)


# --- one encounter ---------------------------------------------------------------------------


def gender(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    if not ep.gend:
        return []
    bad = [ln for ln in ep.lines if (i := items.get(ln.code)) and i.lmt_gend and i.lmt_gend != ep.gend]
    if not bad:
        return []
    names = "、".join(f"{_name(items, ln.code)}(限{GEND.get(items[ln.code].lmt_gend or '', '?')}性)" for ln in bad)
    return [_hit(r, f"{GEND.get(ep.gend, ep.gend)}性参保人结算了限定性别的项目: {names}", bad)]


def age(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    if ep.age is None:
        return []
    watched, limit = set(r.params["items"]), int(r.params["max_age"])
    bad = [ln for ln in ep.lines if ln.code in watched and ep.age > limit]
    if not bad:
        return []
    return [_hit(r, f"{ep.age} 岁参保人结算了限 {limit} 岁及以下使用的项目: "
                    f"{'、'.join(_name(items, ln.code) for ln in bad)}", bad)]


def hospital_level(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    if not ep.hosp_lv:
        return []
    bad = [ln for ln in ep.lines if (i := items.get(ln.code)) and i.lmt_hosp_lv and ep.hosp_lv < i.lmt_hosp_lv]
    if not bad:
        return []
    return [_hit(r, f"{ep.hosp_lv} 级医疗机构使用了限 {items[bad[0].code].lmt_hosp_lv} 级及以上机构的项目: "
                    f"{'、'.join(_name(items, ln.code) for ln in bad)}", bad)]


def setting(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    wrong = "op" if ep.inpatient else "ip"
    bad = [ln for ln in ep.lines if (i := items.get(ln.code)) and i.lmt_scope == wrong]
    if not bad:
        return []
    where = "住院" if ep.inpatient else "门诊"
    only = "门诊" if wrong == "op" else "住院"
    return [_hit(r, f"{where}结算了限{only}使用的项目: {'、'.join(_name(items, ln.code) for ln in bad)}", bad)]


def indication(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    rules: dict[str, str] = r.params["items"]
    bad = [ln for ln in ep.lines if ln.code in rules
           and not any(_pattern(rules[ln.code]).match(d) for d in ep.diagnoses)]
    if not bad:
        return []
    said = "、".join(ep.diagnoses) or "无诊断"
    return [_hit(r, f"{'、'.join(_name(items, ln.code) for ln in bad)} 限定适应症 "
                    f"{'/'.join(sorted({rules[ln.code] for ln in bad}))}，本次诊断 {said} 不符", bad)]


def insutype(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    allowed: dict[str, list[str]] = r.params["items"]
    bad = [ln for ln in ep.lines if ln.code in allowed and ep.insutype not in allowed[ln.code]]
    if not bad:
        return []
    return [_hit(r, f"险种 {ep.insutype} 结算了限 {'/'.join(allowed[bad[0].code])} 险种的项目: "
                    f"{'、'.join(_name(items, ln.code) for ln in bad)}", bad)]


def duplicate_same_day(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    types = set(r.params["chrgitm_types"])
    seen: dict[tuple[str, date], Line] = {}
    bad: list[Line] = []
    for ln in ep.lines:
        item = items.get(ln.code)
        if item is None or item.med_chrgitm_type not in types:
            continue
        if (ln.code, ln.day) in seen:
            bad.append(ln)
        else:
            seen[(ln.code, ln.day)] = ln
    if not bad:
        return []
    return [_hit(r, "同一天重复收取: " + "、".join(
        f"{_name(items, ln.code)} {ln.day}(首次为明细 {seen[(ln.code, ln.day)].feedetl_sn})" for ln in bad), bad)]


def max_per_day(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    limits: dict[str, int] = r.params["items"]
    per_day: dict[tuple[str, date], list[Line]] = defaultdict(list)
    for ln in ep.lines:
        if ln.code in limits:
            per_day[(ln.code, ln.day)].append(ln)
    hits = []
    for (code, day), lines in per_day.items():
        total = sum((ln.cnt for ln in lines), Decimal(0))
        if total > limits[code]:
            hits.append(_hit(r, f"{_name(items, code)} {day} 收取 {total} 次，每日限 {limits[code]} 次", lines))
    return hits


def price_cap(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    tol = Decimal(str(r.params.get("tolerance", "0")))
    bad = [(ln, i.pric_uplmt_amt) for ln in ep.lines
           if (i := items.get(ln.code)) and i.pric_uplmt_amt is not None and ln.pric > i.pric_uplmt_amt + tol]
    if not bad:
        return []
    over = sum((((ln.pric - cap) * ln.cnt).quantize(Decimal("0.01")) for ln, cap in bad), ZERO)
    return [_hit(r, "单价超过支付标准: " + "、".join(f"{_name(items, ln.code)} {ln.pric} > {cap}" for ln, cap in bad),
                 [ln for ln, _ in bad], amount=over)]


def unbundling(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    packages: dict[str, list[str]] = r.params["packages"]
    least = int(r.params.get("min_components", 2))
    hits = []
    for package, parts in packages.items():
        by_day: dict[date, list[Line]] = defaultdict(list)
        for ln in ep.lines:
            if ln.code in parts:
                by_day[ln.day].append(ln)
        for day, lines in by_day.items():
            if len({ln.code for ln in lines}) >= least:
                hits.append(_hit(r, f"{day} 将 {_name(items, package)} 拆分为 "
                                    f"{'、'.join(_name(items, ln.code) for ln in lines)} 分别收费", lines))
    return hits


def requires(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    needs: dict[str, list[str]] = r.params["items"]
    codes = {ln.code for ln in ep.lines}
    bad = [ln for ln in ep.lines if ln.code in needs and not codes & set(needs[ln.code])]
    if not bad:
        return []
    return [_hit(r, "、".join(f"{_name(items, ln.code)} 没有关联的主项目 "
                             f"{'/'.join(_name(items, c) for c in needs[ln.code])}" for ln in bad), bad)]


def days_supply(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    drugs = set(r.params["drug_types"])
    limits: dict[str, int] = r.params["max_days"]
    limit = Decimal(limits.get(ep.med_type, limits["default"]))
    bad = [ln for ln in ep.lines if ln.prd_days is not None and ln.prd_days > limit
           and (i := items.get(ln.code)) is not None and i.med_chrgitm_type in drugs]
    if not bad:
        return []
    return [_hit(r, f"医疗类别 {ep.med_type} 单次开药限 {limit} 天: " + "、".join(
        f"{_name(items, ln.code)} {ln.prd_days} 天" for ln in bad), bad)]


def contraindicated(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    hits = []
    for a, b in r.params["pairs"]:
        la = [ln for ln in ep.lines if ln.code == a]
        lb = [ln for ln in ep.lines if ln.code == b]
        if la and lb:
            hits.append(_hit(r, f"{_name(items, a)} 与 {_name(items, b)} 配伍禁忌，同一次就诊同时使用", la + lb))
    return hits


def bed_only_days(r: RuleSpec, ep: Episode, items: Items, _h: History | None) -> list[Hit]:
    if not ep.inpatient:
        return []
    beds = set(r.params["bed_types"])
    by_day: dict[date, list[Line]] = defaultdict(list)
    for ln in ep.lines:
        by_day[ln.day].append(ln)
    idle = sorted(day for day, lines in by_day.items()
                  if all((i := items.get(ln.code)) is not None and i.med_chrgitm_type in beds for ln in lines))
    if len(idle) < int(r.params["min_days"]):
        return []
    lines = [ln for day in idle for ln in by_day[day]]
    return [_hit(r, f"住院 {len(idle)} 天只有床位费、没有任何诊疗: {', '.join(str(d) for d in idle)}", lines)]


def large_amount(r: RuleSpec, ep: Episode, _i: Items, _h: History | None) -> list[Hit]:
    least = Decimal(str(r.params["min_medfee"]))
    if ep.medfee < least or (r.params.get("cross_province_only") and not ep.cross_province) or (
            r.params.get("inpatient_only") and not ep.inpatient):
        return []
    return [_hit(r, f"跨省{'住院' if ep.inpatient else '就医'}医疗费用 {ep.medfee} 元，达到 {least} 元，"
                    "提交参保地和就医地联合审核(协查)", [], amount=ep.medfee)]


# --- against history -------------------------------------------------------------------------


def frequency(r: RuleSpec, ep: Episode, items: Items, h: History | None) -> list[Hit]:
    code, most, days = r.params["item"], Decimal(r.params["max"]), int(r.params["window_days"])
    mine = [ln for ln in ep.lines if ln.code == code]
    if h is None or not mine:
        return []
    unless = r.params.get("unless_diagnosis")
    if unless and any(_pattern(unless).match(d) for d in (*ep.diagnoses, *h.diagnoses(ep.psn_no))):
        return []
    before = h.item_uses(ep.psn_no, code, ep.begntime - timedelta(days=days))
    total = before + sum((ln.cnt for ln in mine), Decimal(0))
    if total <= most:
        return []
    return [_hit(r, f"{_name(items, code)} {days} 天内 {total} 次，限 {most} 次，且无相应诊断", mine)]


def readmission(r: RuleSpec, ep: Episode, _i: Items, h: History | None) -> list[Hit]:
    if h is None or not ep.inpatient:
        return []
    exclude = r.params.get("exclude_diagnosis")
    if exclude and any(_pattern(exclude).match(d) for d in ep.diagnoses):
        return []
    n, within = int(r.params["related_prefix"]), int(r.params["within_days"])
    mine = {d[:n] for d in ep.diagnoses}
    for s in h.stays(ep.psn_no, ep.begntime - timedelta(days=within), ep.begntime):
        if not s.inpatient or s.msgid == ep.msgid or s.endtime > ep.begntime:
            continue
        gap = (ep.begntime - s.endtime).days
        related = mine & {d[:n] for d in s.diagnoses}
        if 0 <= gap <= within and related:
            return [_hit(r, f"出院 {gap} 天后再次入院，诊断相关 ({'、'.join(sorted(related))})：上次住院 "
                            f"{s.begntime}–{s.endtime} 于 {s.fixmedins_code} (结算 {s.msgid})", list(ep.lines),
                         amount=ep.medfee)]
    return []


def overlapping_stays(r: RuleSpec, ep: Episode, _i: Items, h: History | None) -> list[Hit]:
    if h is None:
        return []
    for s in h.stays(ep.psn_no, ep.begntime, ep.endtime):
        if s.msgid == ep.msgid or s.fixmedins_code == ep.fixmedins_code or not (s.inpatient or ep.inpatient):
            continue
        if s.begntime <= ep.endtime and ep.begntime <= s.endtime:
            where = "两省" if s.mdtrtarea_admvs[:2] != ep.mdtrtarea_admvs[:2] else "两家机构"
            return [_hit(r, f"{ep.begntime}–{ep.endtime} 在 {ep.fixmedins_code} 就医，同期 {s.begntime}–{s.endtime} "
                            f"在 {s.fixmedins_code} {'住院' if s.inpatient else '就诊'} ({where}，结算 {s.msgid})",
                         list(ep.lines), amount=ep.medfee)]
    return []


def after_death(r: RuleSpec, ep: Episode, _i: Items, h: History | None) -> list[Hit]:
    died = h.death_date(ep.psn_no) if h is not None else None
    if died is None or ep.begntime <= died:
        return []
    return [_hit(r, f"参保人 {died} 已死亡，{ep.begntime} 仍在 {ep.fixmedins_code} 结算", list(ep.lines),
                 amount=ep.medfee)]


def trace_resold(r: RuleSpec, ep: Episode, _i: Items, h: History | None) -> list[Hit]:
    if h is None:
        return []
    bad: list[Line] = []
    said: list[str] = []
    here: set[str] = set()
    for ln in ep.lines:
        for code in ln.trac:
            first = h.trace_sold(code)
            if first is not None and first != ep.msgid:
                said.append(f"{code}(已于结算 {first} 销售)")
            elif code in here:
                said.append(f"{code}(本次重复)")
            else:
                here.add(code)
                continue
            if not bad or bad[-1] is not ln:
                bad.append(ln)
    if not bad:
        return []
    return [_hit(r, "同一追溯码的药品被再次销售结算: " + "、".join(said), bad)]


def cluster(r: RuleSpec, ep: Episode, _i: Items, h: History | None) -> list[Hit]:
    """Many insured of one distant region, with one diagnosis, at one small clinic on one day (结伴就医)."""
    levels = r.params.get("hosp_levels")
    if h is None or not ep.diagnoses or (levels and ep.hosp_lv not in levels) or (
            r.params.get("cross_province_only") and not ep.cross_province):
        return []
    least = int(r.params["min_persons"])
    persons = h.persons_at(ep.fixmedins_code, ep.begntime, ep.insuplc_admdvs, ep.diagnoses[0], at_most=least)
    if ep.psn_no in persons or len(persons) + 1 != least:
        return []  # raised once, by the claim that makes the group big enough
    return [_hit(r, f"{ep.begntime} 参保地 {ep.insuplc_admdvs} 的 {least} 名参保人以同一诊断 {ep.diagnoses[0]} "
                    f"在 {ep.fixmedins_code} 就医", [], amount=ZERO,
                 key=f"{ep.fixmedins_code}-{ep.begntime:%Y%m%d}-{ep.insuplc_admdvs}-{ep.diagnoses[0]}")]


def visit_frequency(r: RuleSpec, ep: Episode, _i: Items, h: History | None) -> list[Hit]:
    if h is None or ep.inpatient:
        return []
    most, days = int(r.params["max_visits"]), int(r.params["window_days"])
    n = h.visits(ep.psn_no, ep.begntime - timedelta(days=days - 1)) + 1
    if n != most + 1:
        return []  # once, when the count first passes the limit
    return [_hit(r, f"{days} 天内门诊结算 {n} 次，超过 {most} 次", list(ep.lines), amount=ep.medfee)]


def hardship_selfpay(r: RuleSpec, ep: Episode, _i: Items, h: History | None) -> list[Hit]:
    if h is None or not h.hardship_on(ep.psn_no, ep.begntime):
        return []
    least = Decimal(str(r.params["min_selfpay"]))
    before = h.selfpay_in(ep.psn_no, ep.begntime.year)
    if before >= least or before + ep.selfpay < least:
        return []
    return [_hit(r, f"困难群众 {ep.begntime.year} 年个人负担累计 {before + ep.selfpay} 元，达到 {least} 元的"
                    "因病返贫预警线", [], amount=before + ep.selfpay, key=f"{ep.psn_no}-{ep.begntime.year}")]


KINDS: dict[str, Check] = {
    "gender": gender, "age": age, "hospital_level": hospital_level, "setting": setting,
    "indication": indication, "insutype": insutype, "duplicate_same_day": duplicate_same_day,
    "max_per_day": max_per_day, "price_cap": price_cap, "unbundling": unbundling, "requires": requires,
    "days_supply": days_supply, "contraindicated": contraindicated, "bed_only_days": bed_only_days,
    "large_amount": large_amount, "frequency": frequency, "readmission": readmission,
    "overlapping_stays": overlapping_stays, "after_death": after_death, "trace_resold": trace_resold,
    "cluster": cluster, "visit_frequency": visit_frequency, "hardship_selfpay": hardship_selfpay,
}
AGGREGATE_KINDS = {"peer_outlier"}  # services/monitor/outliers.py
STATEFUL = {"frequency", "readmission", "overlapping_stays", "after_death", "trace_resold", "cluster",
            "visit_frequency", "hardship_selfpay"}
PARAMS: dict[str, tuple[str, ...]] = {
    "age": ("items", "max_age"), "indication": ("items",), "insutype": ("items",),
    "duplicate_same_day": ("chrgitm_types",), "max_per_day": ("items",), "unbundling": ("packages",),
    "requires": ("items",), "days_supply": ("drug_types", "max_days"), "contraindicated": ("pairs",),
    "bed_only_days": ("bed_types", "min_days"), "large_amount": ("min_medfee",),
    "frequency": ("item", "max", "window_days"), "readmission": ("within_days", "related_prefix"),
    "cluster": ("min_persons",), "visit_frequency": ("max_visits", "window_days"),
    "hardship_selfpay": ("min_selfpay",), "peer_outlier": ("min_hospitals", "robust_z", "min_ratio"),
}


def check_params(r: RuleSpec) -> None:
    """ValueError naming the parameter a rule lacks or the pattern that does not compile."""
    if missing := [p for p in PARAMS.get(r.kind, ()) if p not in r.params]:
        raise ValueError(f"{r.id} ({r.kind}): parameters missing: {', '.join(missing)}")
    if r.kind in STATEFUL and "precheck" in r.phases:
        raise ValueError(f"{r.id} ({r.kind}) reads history: it runs after settlement (post), not in precheck")
    if r.kind == "days_supply" and "default" not in r.params["max_days"]:
        raise ValueError(f"{r.id}: max_days needs a default")
    patterns = list(r.params["items"].values()) if r.kind == "indication" else []
    patterns += [r.params[p] for p in ("unless_diagnosis", "exclude_diagnosis") if r.params.get(p)]
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"{r.id}: pattern {p!r} does not compile: {exc}") from None


def evaluate(rules: list[RuleSpec], ep: Episode, items: Items, history: History | None = None,
             precheck: bool = False) -> list[Hit]:
    """Every hit of `rules` on one encounter; in precheck a hit of a rule whose action is refuse
    refuses the claim."""
    hits: list[Hit] = []
    for r in rules:
        for h in KINDS[r.kind](r, ep, items, history):
            refuse = precheck and r.action == "refuse"
            hits.append(Hit(h.rule_id, h.rule_name, h.severity, h.vola_bhvr_type, h.vola_cont, h.vola_amt,
                            h.feedetl_sn, h.key or ep.msgid, refuse))
    return hits
