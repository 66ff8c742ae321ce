"""`yibao chaos`: claims while processes and a broker die, then the books are checked to the fen.

A three-broker Apache Kafka cluster and the platform on it; hospitals send cross-province
claims; a driver kills -9 a random service or settle worker every few seconds (the supervisor
of `yibao run` restarts it), then one broker, which comes back later; with the platform on
PostgreSQL (YIBAO_DATABASE_URL), PostgreSQL stops for CHAOS_PG_DOWN_S seconds too. After a
quiet period every claim must be closed (settled or refused with a reason), no msgid booked
twice, and the insured city's ledger, the hospitals' results and the clearing totals agree.
CHAOS_SECONDS (default 60), CHAOS_KILL_EVERY_S (5), CHAOS_CONCURRENCY (16). Exit 1 on a breach.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text

from services.bench import SEND_ERRORS, call_service, claim, enrol_population
from services.bus.broker import free_port
from services.bus.db import database_url, make_engine
from services.bus.kafka import KafkaCluster
from services.loadclient import Connection
from services.platform import SERVICES, Platform
from services.settle import clearing
from services.settle.auth import SigningAuth
from services.settle.refdata import Reference


async def send_claims(p: Platform, people: list[tuple[str, str]], seconds: float, concurrency: int,
                      answers: dict[str, dict[str, Any]]) -> None:
    """Cross-province 2207s; each msgid's answer as the hospital saw it (or the error it got)."""
    signer, origin, end = SigningAuth(), p.url("settle"), time.monotonic() + seconds

    async def hospital() -> None:
        c = Connection(origin, timeout_s=60)
        try:
            while time.monotonic() < end:
                psn, region = random.choice(people)
                body = claim(psn, region)
                try:
                    status, ans = await call_service(c, signer, body)
                    answers[body["msgid"]] = {"http": status, **ans}
                except SEND_ERRORS as exc:
                    answers[body["msgid"]] = {"http": None, "error": type(exc).__name__}
                    await asyncio.sleep(0.2)  # the settle API itself is being restarted
        finally:
            await c.close()

    await asyncio.gather(*(hospital() for _ in range(concurrency)))


def kill_randomly(p: Platform, cluster: KafkaCluster, seconds: float, every_s: float, pg_down_s: float,
                  log: list[str]) -> None:
    """The driver: kill -9 a random process every `every_s`; a broker at a third of the time (back at
    two thirds); PostgreSQL down for `pg_down_s` at the middle when the platform runs on it."""
    start, broker_down, pg_done = time.monotonic(), None, pg_down_s <= 0
    victim_node = cluster.nodes[-1]
    while (t := time.monotonic() - start) < seconds:
        name = random.choice(sorted(p.procs))
        proc = p.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            log.append(f"{t:5.1f} s  kill -9 {name} (pid {proc.pid})")
        if broker_down is None and t > seconds / 3:
            cluster.kill(victim_node)
            broker_down = t
            log.append(f"{t:5.1f} s  kill -9 broker node {victim_node.node_id}")
        elif broker_down is not None and broker_down > 0 and t > 2 * seconds / 3:
            cluster.start_node(victim_node)
            broker_down = -1
            log.append(f"{t:5.1f} s  broker node {victim_node.node_id} started again")
        if not pg_done and t > seconds / 2:
            postgres("stop")
            log.append(f"{t:5.1f} s  PostgreSQL stopped for {pg_down_s:.0f} s")
            time.sleep(pg_down_s)
            postgres("start")
            pg_done = True
            log.append(f"{time.monotonic() - start:5.1f} s  PostgreSQL started again")
        time.sleep(every_s)
    if broker_down is not None and broker_down > 0:
        cluster.start_node(victim_node)


async def under_fire(p: Platform, cluster: KafkaCluster, people: list[tuple[str, str]],
                     answers: dict[str, dict[str, Any]], log: list[str], seconds: float, every: float,
                     concurrency: int, pg_down: float) -> None:
    driver = asyncio.get_running_loop().run_in_executor(None, kill_randomly, p, cluster, seconds, every, pg_down, log)
    await asyncio.gather(send_claims(p, people, seconds, concurrency, answers), driver)


def progress(text: str) -> None:
    print(f"[chaos {datetime.now():%H:%M:%S}] {text}", flush=True)


def postgres(action: str) -> None:
    ctl = shutil.which("pg_ctlcluster")
    versions = sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").exists() else []
    if not ctl or not versions:
        raise RuntimeError("PostgreSQL chaos needs pg_ctlcluster (Debian's postgresql package)")
    subprocess.run([ctl, versions[-1].parent.name, "main", action, *(["-m", "immediate"] if action == "stop" else [])],
                   check=True)


def check_books(p: Platform, answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every claim closed, none booked twice, ledger = results = clearing."""
    env = dict(os.environ, **p.env)  # as the platform's processes see it
    engine = make_engine(database_url("settle", p.var_dir,
                                      env.get("YIBAO_SETTLE_DATABASE_URL") or env.get("YIBAO_DATABASE_URL")))
    with engine.connect() as c:
        status: dict[str, str] = dict(c.execute(text("SELECT msgid, status FROM settle_claim")).all())
        booked = Counter(m for (m,) in c.execute(text("SELECT msgid FROM settle_ledger")).all())
        results = {m: orjson.loads(r) for m, r in c.execute(
            text("SELECT msgid, result FROM settle_claim WHERE status = 'settled'")).all()}
        ledger_fund = sum(int(f) for (f,) in c.execute(text("SELECT fund_fen FROM settle_ledger")).all())
    sent = set(answers)
    received = sent & set(status)  # an answer lost with a killed API may leave no record: never accepted
    pending = sorted(m for m in received if status[m] == "pending")
    twice = sorted(m for m, n in booked.items() if n > 1)
    settled = {m for m in received if status[m] == "settled"}
    unbooked = sorted(m for m in settled if booked[m] != 1)
    booked_not_settled = sorted(m for m in booked if status.get(m) != "settled")
    told_settled = {m for m, a in answers.items() if a.get("infcode") == 0}
    told_but_not = sorted(told_settled - settled)
    result_fund = sum(int(Decimal(r["outcome"]["setlinfo"]["fund_pay_sumamt"]) * 100) for r in results.values())
    month = f"{datetime.now(UTC):%Y-%m}"
    _, month_end = clearing.month_bounds_ms(month)
    statements = clearing.run(engine, month, Reference.load().advance, now=month_end)
    cleared_fund = sum(int(Decimal(s["fund_pay_sumamt"]) * 100) for s in statements)
    books: dict[str, Any] = {
        "claims_sent": len(sent), "accepted": len(received), "settled": len(settled),
        "refused": sum(1 for m in received if status[m] == "failed"),
        "answers": dict(Counter(str(a.get("infcode", a.get("error"))) for a in answers.values())),
        "pending": pending[:10], "booked_twice": twice[:10], "settled_not_booked": unbooked[:10],
        "booked_not_settled": booked_not_settled[:10], "told_settled_not_settled": told_but_not[:10],
        "fund_fen": {"ledger": ledger_fund, "results": result_fund, "clearing": cleared_fund},
        "ok": not (pending or twice or unbooked or booked_not_settled or told_but_not)
        and ledger_fund == result_fund == cleared_fund,
    }
    engine.dispose()
    return books


def fresh_schema(url: str) -> tuple[str, str]:
    """A schema of its own in the PostgreSQL database at `url`: (its name, the URL that uses it)."""
    name = f"chaos_{random.randrange(16**8):08x}"
    admin = make_engine(url)
    with admin.begin() as c:
        c.execute(text(f"CREATE SCHEMA {name}"))
    admin.dispose()
    return name, f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"


def drop_schema(url: str, name: str) -> None:
    admin = make_engine(url)
    with admin.begin() as c:
        c.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
    admin.dispose()


def main() -> None:
    seconds = float(os.environ.get("CHAOS_SECONDS", "60"))
    every = float(os.environ.get("CHAOS_KILL_EVERY_S", "5"))
    concurrency = int(os.environ.get("CHAOS_CONCURRENCY", "16"))
    pg_url = os.environ.get("YIBAO_DATABASE_URL", "")
    pg_down = float(os.environ.get("CHAOS_PG_DOWN_S", "10")) if pg_url.startswith("postgresql") else 0.0
    out = Path(os.environ.get("YIBAO_VAR_DIR", "var"))
    with tempfile.TemporaryDirectory(prefix="yibao-chaos-") as tmp:
        env = {"YIBAO_BROKER": "kafka", "YIBAO_LOG_LEVEL": "ERROR"}
        schema = None
        if pg_url.startswith("postgresql"):
            schema, env["YIBAO_DATABASE_URL"] = fresh_schema(pg_url)
            progress(f"PostgreSQL: every service in schema {schema}")
        progress("starting three Apache Kafka brokers")
        cluster = KafkaCluster.on_free_ports(Path(tmp) / "kafka", nodes=3)
        env["YIBAO_KAFKA_BOOTSTRAP"] = cluster.start()
        p = Platform(ports={s: free_port() for s in SERVICES}, var_dir=Path(tmp) / "var", env=env)
        try:
            p.start(timeout=180)
            people = asyncio.run(enrol_population(p, 60))
            progress(f"{seconds:.0f} s of claims from {concurrency} hospitals while processes die"
                     + (f", a broker dies, PostgreSQL stops for {pg_down:.0f} s" if pg_down else ", a broker dies"))
            answers: dict[str, dict[str, Any]] = {}
            log: list[str] = []
            asyncio.run(under_fire(p, cluster, people, answers, log, seconds, every, concurrency, pg_down))
            for line in log:
                progress(line)
            progress("quiet: waiting for every accepted claim to close (up to 120 s)")
            deadline = time.monotonic() + 120
            while True:
                books = check_books(p, answers)
                if not (books["pending"] or books["booked_not_settled"]) or time.monotonic() > deadline:
                    break
                time.sleep(3)
            books["restarts"] = dict(p.restarts)
            books["kills"] = log
        finally:
            p.stop()
            cluster.stop()
            if schema:
                drop_schema(pg_url, schema)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(books, ensure_ascii=False, indent=2))
    print(json.dumps({k: v for k, v in books.items() if k != "kills"}, ensure_ascii=False, indent=2))
    progress(f"{'PASS' if books['ok'] else 'FAIL'}: written {out / 'chaos.json'}")
    raise SystemExit(0 if books["ok"] else 1)
