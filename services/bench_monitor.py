"""`yibao bench monitor`: the rule catalogue measured.

1. Precision and recall per rule through the real services: a fresh broker and the four services,
   a population enrolled and filed, then the labelled scenarios of services/monitor/scenarios.py
   (clean traffic with every violation type injected at a known rate) sent as hospitals send them.
   A rule has found a labelled claim when the claim's answer names it (the pre-check refused or
   flagged it) or the monitor raised it on the claim; any other claim it names is a false positive.
2. The after-settlement rules' throughput on one core: settled claims through the monitor's batch
   handler (history reads and writes, inbox, alerts) on SQLite, in-process, no broker.
3. The pre-check's latency per claim, in-process, as the treatment city's hop calls it.

Writes var/bench-monitor.json and prints a table.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import random
import time
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from services.bench import drop_run_state, progress
from services.bus.broker import free_port
from services.enroll.domain import with_check_char
from services.identity import headers_for, province_of
from services.monitor.catalogue import RuleBook, load
from services.monitor.scenarios import Generator, Person, Plan
from services.platform import SERVICES, Platform
from services.settle.auth import SigningAuth
from services.settle.refdata import load_catalogue

INSURED = ["360100", "360400", "330100", "330200", "110000", "310000"]  # all outside 广东


# --- the population ---------------------------------------------------------------------------


async def enrol(p: Platform, n: int, hardship: int, since: date) -> list[Person]:
    sem = asyncio.Semaphore(16)

    async def one(c: httpx.AsyncClient, i: int) -> Person:
        region = INSURED[i % len(INSURED)]
        certno = with_check_char(f"{region}{1950 + i % 45}0101{(i * 2 + 1) % 1000:03d}")  # odd: a man
        poor = i < hardship
        province = headers_for("province", province_of(region), "bench-monitor")
        async with sem:
            r = await c.post(p.url("enroll") + "/persons", headers=province,
                             json={"certno": certno, "psn_name": f"监控{i}", "admdvs": region})
            psn = r.json()["psn_no"]
            r = await c.post(p.url("enroll") + "/enrolments", headers=province, json={
                "psn_no": psn, "insuplc_admdvs": region, "insutype": "310", "begndate": str(since),
                "paid_through": f"{date.today().year}-12-31", "voucher_active": True,
                "hardship": [{"hardship_type": "DIBAO", "begndate": str(since)}] if poor else []})
            assert r.status_code == 201, r.text
            for _ in range(200):
                r = await c.post(p.url("filing") + "/filings", headers=province, json={
                    "psn_no": psn, "fil_type": "OTHER_TEMP", "target_admdvs": "440000", "begndate": str(since)})
                if r.status_code == 201:
                    break
                await asyncio.sleep(0.05)
        return Person(psn, region, poor)

    async with httpx.AsyncClient(timeout=30) as c:
        people = list(await asyncio.gather(*(one(c, i) for i in range(n))))
        operator = headers_for("operator", subject="bench-monitor")
        for person in people[-len(INSURED):]:
            for _ in range(400):
                r = await c.get(f"{p.url('settle')}/persons/{person.psn_no}/status", headers=operator)
                if r.status_code == 200 and r.json()["filings"]:
                    break
                await asyncio.sleep(0.05)
    return people


class Pool:
    """Each person in one plan only, so plans do not add up to what no plan meant."""

    def __init__(self, people: list[Person]) -> None:
        self.free = [q for q in people if not q.hardship]
        self.poor = [q for q in people if q.hardship]

    def take(self, hardship: bool = False, region: str | None = None) -> Person:
        pool = self.poor if hardship else self.free
        for i, q in enumerate(pool):
            if region is None or q.region == region:
                return pool.pop(i)
        raise SystemExit("bench monitor: the population is too small for the scenarios (BENCH_MONITOR_PERSONS)")


def plans(gen: Generator, pool: Pool, rules: list[str], per_rule: int, clean: int) -> list[Plan]:
    out: list[Plan] = []
    for rule in rules:
        for _ in range(per_rule):
            if rule == "R-POVERTY":
                out.append(gen.violation(rule, lambda: pool.take(hardship=True)))
            elif rule == "R-CLUSTER":
                first = pool.take()
                mates = iter([first] + [pool.take(region=first.region) for _ in range(4)])
                out.append(gen.violation(rule, partial(next, mates)))
            else:
                out.append(gen.violation(rule, pool.take))
    poor_clean = min(len(pool.poor), clean // 10)  # hardship persons with ordinary bills: R-POVERTY stays quiet
    out += [gen.clean_plan(pool.take(hardship=True)) for _ in range(poor_clean)]
    out += [gen.clean_plan(pool.take()) for _ in range(clean - poor_clean)]
    gen.r.shuffle(out)
    return out


# --- sending and scoring ------------------------------------------------------------------------


def named_in_answer(ans: dict[str, Any]) -> set[str]:
    """The rules an answer names: a pre-check refusal (its message) or flags (output.precheck)."""
    out = ans.get("output") or {}
    rows = out.get("precheck", []) if isinstance(out, dict) else []
    found = {str(r["rule_id"]) for r in rows}
    if isinstance(out, dict) and out.get("err_code") == "PRECHECK_REFUSED":
        found |= {w.split(")")[0] for w in str(ans.get("err_msg", "")).split("(R-")[1:]}
        found = {f if f.startswith("R-") else f"R-{f}" for f in found}
    return found


async def send(p: Platform, all_plans: list[Plan], concurrency: int) -> tuple[dict[str, dict[str, Any]], list[float]]:
    answers: dict[str, dict[str, Any]] = {}
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def run(c: httpx.AsyncClient, plan: Plan) -> None:
        nonlocal done
        async with sem:
            for step in plan.steps:
                t0 = time.perf_counter()
                r = await c.post(p.url("settle") + "/fsi/callService", json=step.body)
                latencies.append((time.perf_counter() - t0) * 1000)
                answers[step.body["msgid"]] = r.json() if r.status_code == 200 else {"infcode": -1, "http": r.status_code,
                                                                                  "err_msg": r.text}
                if step.then_death:
                    psn = step.body["input"]["data"]["psn_no"]
                    region = step.body["insuplc_admdvs"]
                    r = await c.post(p.url("enroll") + "/enrolments", headers=headers_for(
                        "province", province_of(region), "bench-monitor"), json={
                        "psn_no": psn, "insuplc_admdvs": region, "insutype": "310", "death_date": str(step.then_death),
                        "paid_through": f"{date.today().year}-12-31", "voucher_active": True})
            done += 1
            if done % 50 == 0:
                progress(f"{done} of {len(all_plans)} scenarios sent")

    async with httpx.AsyncClient(timeout=60, auth=SigningAuth(),
                                 limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(run(c, pl) for pl in all_plans))
    return answers, latencies


async def monitor_alerts(p: Platform, rules: list[str]) -> list[dict[str, Any]]:
    """Every alert, once the monitor has caught up (its lag 0 and the count still for 5 s)."""
    sup = headers_for("supervisor", "000000", "bench-monitor")
    last, still_since = -1, time.monotonic()
    async with httpx.AsyncClient(timeout=30, headers=sup) as c:
        while True:
            health = (await c.get(p.url("monitor") + "/healthz")).json()
            lag = sum(int(x.get("lag") or 0) for x in health.get("consumers", []))
            alerts: list[dict[str, Any]] = []
            for rule in rules:
                alerts += (await c.get(p.url("monitor") + "/alerts", params={"rule_id": rule, "limit": 1000})).json()
            if len(alerts) != last or lag:
                last, still_since = len(alerts), time.monotonic()
            elif time.monotonic() - still_since > 5:
                return alerts
            await asyncio.sleep(1)


def score(all_plans: list[Plan], answers: dict[str, dict[str, Any]], alerts: list[dict[str, Any]],
          rules: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, set[str]] = defaultdict(set)  # rule → msgids it named
    for msgid, ans in answers.items():
        for rule in named_in_answer(ans):
            found[rule].add(msgid)
    for a in alerts:
        found[a["rule_id"]].add(a["msgid"])
    labels: dict[str, list[set[str]]] = defaultdict(list)
    for pl in all_plans:
        for st in pl.steps:
            if st.label:
                labels[st.label].append({st.body["msgid"]})
        for rule, msgids in pl.groups.values():
            labels[rule].append(set(msgids))
    table = {}
    for rule in rules:
        mine = labels[rule]
        tp = sum(1 for group in mine if group & found[rule])
        labelled = set().union(*mine) if mine else set()
        fp = len(found[rule] - labelled)
        table[rule] = {"injected": len(mine), "found": tp, "false_positives": fp,
                       "recall": round(tp / len(mine), 3) if mine else None,
                       "precision": round(tp / (tp + fp), 3) if tp + fp else None}
    return table


# --- in-process measurements ----------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q / 100 * len(s)))], 3) if s else 0.0


def synthetic_results(n: int, seed: int) -> list[Any]:
    """Settled outpatient claims of n/3 persons over 60 days (2–5 clean lines, one in ten over a
    price cap, drugs with trace codes), as settle.completed carries them."""
    from services.monitor.scenarios import CLEAN_DRUGS, CLEAN_EXAMS, CONSULT, settled

    r = random.Random(seed)
    items = [CONSULT, *CLEAN_DRUGS, *CLEAN_EXAMS]
    out = []
    for i in range(n):
        day = date.today() - timedelta(days=r.randrange(60))
        over = r.random() < 0.1
        lines = [(code, Decimal(2), Decimal("4.00") if over and code == CLEAN_DRUGS[1][0] else Decimal(price))
                 for code, price in r.sample(items, r.randint(2, 5))]
        out.append(settled(f"H44010400001{i:018d}", f"360100{r.randrange(max(1, n // 3)):012d}", "H44010400001",
                           day, lines, trac={code: f"8{i:09d}{k:010d}" for k, (code, _, _) in enumerate(lines)
                                             if code.startswith("X")}))
    return out


def engine_throughput(n: int, tmp: Path, batch: int = 500) -> dict[str, Any]:
    """Settled claims through the after-settlement rules on one core: each record validated as the
    worker reads it, then the monitor's batch handler (inbox, history reads and writes, alerts and
    their outbox rows) on a SQLite file. Not in it: fetching from Kafka and committing offsets."""
    from services.bus.db import create_tables, make_engine
    from services.bus.envelope import Incoming
    from services.monitor.facts import SettledView
    from services.monitor.handlers import MonitorContext, check_batch
    from services.monitor.store import TABLES

    engine = make_engine(f"sqlite:///{tmp / 'monitor-throughput.db'}")
    create_tables(engine, TABLES)
    ctx = MonitorContext(engine, RuleBook(), load_catalogue())
    values = [res.model_dump_json().encode() for res in synthetic_results(n, 7)]

    async def judge() -> None:
        for k in range(0, n, batch):  # each record read as the worker reads it (validated), then the batch judged
            msgs = [Incoming(topic="settle.completed", key=None, event=SettledView.model_validate_json(v),
                             headers={}, raw_headers=[], value=v, partition=0, offset=k + i)
                    for i, v in enumerate(values[k:k + batch])]
            errors = await check_batch(ctx, msgs)
            assert not any(errors), [e for e in errors if e][:3]

    logging.getLogger("yibao.monitor").setLevel(logging.ERROR)  # a line per alert is not what is measured
    gc.freeze()  # the harness's prepared records are not the engine's garbage to scan
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(judge())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gc.unfreeze()
    from sqlmodel import Session, func, select

    from services.monitor.store import Alert
    with Session(engine) as s:
        raised = s.exec(select(func.count()).select_from(Alert)).one()
    engine.dispose()
    return {"claims": n, "batch": batch, "alerts": int(raised), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "claims_per_s": round(n / wall), "claims_per_cpu_s": round(n / max(cpu, 1e-9))}


def precheck_latency(gen: Generator, samples: int) -> dict[str, Any]:
    """The pre-check per claim as the treatment city's hop runs it: outpatient bills of 2–5 lines
    and inpatient bills of 30–200."""
    from schemas.events import Claim

    book, items = RuleBook(), load_catalogue()
    from services.monitor.precheck import check_claim

    codes = [c for c in items if c not in load().items_named()]
    out: dict[str, Any] = {}
    for label, (lo, hi) in {"outpatient_2_5_lines": (2, 5), "inpatient_30_200_lines": (30, 200)}.items():
        times = []
        for i in range(samples):
            n = gen.r.randint(lo, hi)
            fees = [{"feedetl_sn": str(k), "med_list_codg": code, "cnt": 1, "pric": "10.00", "det_item_fee_sumamt": "10.00",
                     "fee_ocur_time": f"{date.today()} 09:00:00"} for k, code in enumerate(gen.r.sample(codes, n))]
            c = Claim.model_validate({
                "msgid": f"H44010400001{i:018d}", "infno": "2207", "fixmedins_code": "H44010400001",
                "mdtrtarea_admvs": "440100", "insuplc_admdvs": "360100", "psn_no": f"P{i}", "insutype": "310",
                "med_type": "21" if hi > 5 else "11", "begntime": str(date.today()), "fees": fees,
                "deadline_ms": 0, "diagnoses": [{"diag_code": "I10"}]})
            t0 = time.perf_counter()
            check_claim(book, c, "3", items)
            times.append((time.perf_counter() - t0) * 1000)
        out[label] = {"claims": samples, "p50_ms": quantile(times, 50), "p99_ms": quantile(times, 99),
                      "max_ms": round(max(times), 3)}
    return out


def main() -> None:
    per_rule = int(os.environ.get("BENCH_MONITOR_PER_RULE", "6"))
    clean = int(os.environ.get("BENCH_MONITOR_CLEAN", "400"))
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "16"))
    var = Path(os.environ.get("YIBAO_VAR_DIR", "var"))
    run_dir = var / f"bench-monitor-{datetime.now():%Y%m%d%H%M%S}"
    catalogue = load()
    # the per-claim rules; R-OUTLIER (a month's counts against ≥ 5 peer hospitals) is shown by
    # tests/e2e/test_monitor_outliers.py, streaming and nightly, not by these scenarios
    rules = [r.id for r in catalogue.rules if "aggregate" not in r.phases]
    persons = clean + per_rule * (len(rules) + 6) + 12
    hardship = clean // 10 + per_rule + 2
    gen = Generator(seed=int(os.environ.get("BENCH_SEED", "20261205")), today=date.today(), catalogue=load_catalogue())
    result: dict[str, Any] = {}
    progress(f"starting a fresh broker and {len(SERVICES)} services on free ports (state in {run_dir})")
    p = Platform(ports={s: free_port() for s in SERVICES}, broker_port=0, var_dir=run_dir,
                 env={"YIBAO_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "ERROR")})
    p.start(timeout=120)
    try:
        progress(f"enrolling and filing {persons} persons ({hardship} of them 困难群众) since 120 days ago")
        people = asyncio.run(enrol(p, persons, hardship, date.today() - timedelta(days=120)))
        scenarios = plans(gen, Pool(people), rules, per_rule, clean)
        n_claims = sum(len(pl.steps) for pl in scenarios)
        progress(f"sending {len(scenarios)} scenarios ({n_claims} claims): {clean} clean, {per_rule} of each of "
                 f"{len(rules)} rules injected")
        t0 = time.monotonic()
        answers, latencies = asyncio.run(send(p, scenarios, concurrency))
        sent_s = time.monotonic() - t0
        progress("waiting for the monitor to judge every settlement")
        alerts = asyncio.run(monitor_alerts(p, rules))
        refused = {m: a.get("err_msg", "") for m, a in answers.items()
                   if a.get("infcode") != 0 and "PRECHECK_REFUSED" not in json.dumps(a, ensure_ascii=False)}
        result["detection"] = score(scenarios, answers, alerts, rules)
        result["traffic"] = {"scenarios": len(scenarios), "claims": n_claims, "clean_scenarios": clean,
                             "per_rule": per_rule, "alerts": len(alerts), "seconds": round(sent_s, 1),
                             "answer_p50_ms": quantile(latencies, 50), "answer_p99_ms": quantile(latencies, 99),
                             "refused_otherwise": len(refused),
                             "refusals_otherwise_sample": sorted(set(refused.values()))[:5]}
    finally:
        p.stop()
    progress("the after-settlement rules on one core (in-process, SQLite)")
    result["engine"] = engine_throughput(int(os.environ.get("BENCH_MONITOR_ENGINE_CLAIMS", "20000")), run_dir)
    progress("the pre-check per claim (in-process)")
    result["precheck"] = precheck_latency(gen, int(os.environ.get("BENCH_MONITOR_PRECHECK_CLAIMS", "3000")))
    result["config"] = {"rules_version": catalogue.version, "when": datetime.now().isoformat(timespec="seconds"),
                        "broker": p.broker_name, "cpus": os.cpu_count()}
    var.mkdir(parents=True, exist_ok=True)
    (var / "bench-monitor.json").write_text(json.dumps(result, ensure_ascii=False, indent=2))
    print_report(result)
    print(f"\nwritten: {var / 'bench-monitor.json'}")
    drop_run_state(run_dir)


def print_report(r: dict[str, Any]) -> None:
    t = r["traffic"]
    print(f"\n{t['claims']} claims in {t['scenarios']} scenarios through the platform in {t['seconds']} s "
          f"(answers p50 {t['answer_p50_ms']} ms, p99 {t['answer_p99_ms']} ms); {t['alerts']} alerts; "
          f"{t['refused_otherwise']} claims refused for other reasons")
    print(f"\n{'rule':<16}{'injected':>9}{'found':>7}{'false+':>8}{'recall':>8}{'precision':>10}")
    for rule, row in r["detection"].items():
        print(f"{rule:<16}{row['injected']:>9}{row['found']:>7}{row['false_positives']:>8}"
              f"{row['recall'] if row['recall'] is not None else '-':>8}"
              f"{row['precision'] if row['precision'] is not None else '-':>10}")
    e = r["engine"]
    print(f"\nafter-settlement rules, one core: {e['claims_per_s']} claims/s wall, {e['claims_per_cpu_s']} per CPU "
          f"second ({e['claims']} claims, batches of {e['batch']}, {e['alerts']} alerts)")
    for label, row in r["precheck"].items():
        print(f"pre-check {label}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, max {row['max_ms']} ms")
