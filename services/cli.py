"""`yibao`: run the platform, one worker, the demo, the benchmark, or export the schemas."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys


def cmd_run(args: argparse.Namespace) -> None:
    from services.platform import DEFAULT_PORTS, Platform, setup_logging

    setup_logging(os.environ.get("YIBAO_LOG_LEVEL", "INFO"))
    print("yibao: starting the platform (Ctrl-C stops everything)")
    from services.settings import CommonSettings

    p = Platform(broker_port=broker_port(), var_dir=CommonSettings().var_dir,
                 ports={k: int(os.environ.get(f"YIBAO_{k.upper()}_PORT", v)) for k, v in DEFAULT_PORTS.items()})
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        p.start()
    except RuntimeError as exc:
        sys.exit(f"yibao: {exc}")
    from services.settle.refdata import Reference
    ref = Reference.load()
    print(f"  refdata   {len(ref.hospitals)} hospitals (schemas/refdata), {len(ref.catalogue)} catalogue items, "
          f"{len(ref.policies)} policies (services/settle/refdata)")
    for name in DEFAULT_PORTS:
        print(f"  {name:<9} {p.url(name)}   (docs {p.url(name)}/docs)")
    print("yibao: ready. Try `make demo` in another terminal.")
    try:
        while not stop:
            signal.pause()
    finally:
        print("\nyibao: stopping services and broker…")
        p.stop()
        print("yibao: stopped.")


def broker_port() -> int:
    return int(os.environ.get("YIBAO_BROKER_PORT") or os.environ.get("YIBAO_EMBEDDED_PORT") or 9092)


def cmd_kafka(args: argparse.Namespace) -> None:
    """Apache Kafka on loopback, apart from `yibao run`: fetch the jars, start, stop, status."""
    from pathlib import Path

    from services.bus.kafka import (
        Jars,
        KafkaCluster,
        KafkaUnavailableError,
        kafka_version,
        main_status,
    )

    data = Path(os.environ.get("YIBAO_VAR_DIR", "var")) / "kafka" / ("data" if args.brokers == 1 else f"data-{args.brokers}")
    cluster = KafkaCluster.local(data, args.port, args.brokers, attached=False)
    try:
        if args.action == "fetch":
            Jars().fetch()
        elif args.action == "start":
            print(f"kafka: starting Apache Kafka {kafka_version()}, {args.brokers} node(s), data in {data}")
            bootstrap = cluster.start()
            print(f"kafka: ready at {bootstrap}. Point the platform at it with "
                  f"YIBAO_KAFKA_BOOTSTRAP={bootstrap} yibao run; stop it with `yibao kafka stop"
                  + (f" --brokers {args.brokers}`" if args.brokers != 1 else "`"))
        elif args.action == "stop":
            cluster.stop()
            print("kafka: stopped")
        else:
            sys.exit(main_status(cluster))
    except KafkaUnavailableError as exc:
        sys.exit(f"kafka: {exc}")


def cmd_worker(args: argparse.Namespace) -> None:
    from services.platform import run_service
    from services.settle.settings import SettleSettings

    if args.service != "settle":
        run_service(args.service)
        return
    run_service("settle", settings=SettleSettings(levels=args.level), with_api=False)


def cmd_demo(args: argparse.Namespace) -> None:
    from services.demo import main

    main(args.host)


def cmd_chaos(args: argparse.Namespace) -> None:
    from services.chaos import main as chaos

    chaos()


def cmd_bench(args: argparse.Namespace) -> None:
    if args.what == "enroll":
        from services.bench_enroll import main as enroll_bench

        enroll_bench()
        return
    if args.what == "monitor":
        from services.bench_monitor import main as monitor_bench

        monitor_bench()
        return
    from services.bench import main

    main()


def cmd_schemas(args: argparse.Namespace) -> None:
    from schemas.export import export

    for path in export():
        print(path)


def cmd_monitor(args: argparse.Namespace) -> None:
    import os

    from services.monitor.nightly import run

    run(args.bootstrap or os.environ.get("YIBAO_KAFKA_BOOTSTRAP", "127.0.0.1:9092"), args.month, args.url,
        operator_headers(args.token))


def cmd_clearing(args: argparse.Namespace) -> None:
    """Close a month at the running settle service and write its statements as JSON and CSV."""
    import json
    from pathlib import Path

    import httpx

    url = f"{args.url.rstrip('/')}/clearing/{args.month}"
    auth = operator_headers(args.token)
    try:
        r = (httpx.post(url + "/run", timeout=600, headers=auth) if args.action == "run"
             else httpx.get(url, timeout=60, headers=auth))
    except httpx.HTTPError as exc:
        raise SystemExit(f"cannot reach the settle service at {args.url} ({exc}); is `yibao run` up?") from None
    if r.status_code != 200:
        raise SystemExit(f"{r.status_code}: {r.json().get('error', r.text)}")
    rows = r.json()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"clearing-{args.month}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    csv_text = httpx.get(url, params={"format": "csv"}, timeout=60, headers=auth).text
    (out / f"clearing-{args.month}.csv").write_text(csv_text, encoding="utf-8")
    print(f"{args.month}: {len(rows)} province pairs → {out}/clearing-{args.month}.json, .csv")
    for row in rows:
        print(f"  {row['insured_prov']} → {row['treat_prov']}  {row['settlements']:>6} settlements "
              f"{row['reversals']:>4} reversals ({row['carried']} carried)  fund {row['fund_pay_sumamt']:>14}")


def operator_headers(token: str | None) -> dict[str, str]:
    """The given token (--token, YIBAO_TOKEN), else an operator token signed here with YIBAO_AUTH_KEY."""
    import getpass

    from services.identity import bearer, issue_token

    return bearer(token or os.environ.get("YIBAO_TOKEN") or issue_token("operator", "*", getpass.getuser(), ttl_s=600))


def cmd_token(args: argparse.Namespace) -> None:
    from services.identity import issue_token

    try:
        print(issue_token(args.role, args.scope, args.name, ttl_s=int(args.hours * 3600)))
    except ValueError as exc:
        raise SystemExit(f"yibao token: {exc}") from None


def month(text: str) -> str:
    """argparse type: YYYY-MM."""
    import re

    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"{text!r}: give a month as YYYY-MM, e.g. 2026-10")
    return text


def levels(text: str) -> str:
    """argparse type: comma-separated hop levels."""
    wanted = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in wanted if x not in ("city", "province", "national")]
    if not wanted or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more of city, province, national, comma separated")
    return ",".join(wanted)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="yibao", description="Cross-province medical-insurance direct settlement over Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the broker and every service; print the URLs; Ctrl-C stops all").set_defaults(func=cmd_run)
    w = sub.add_parser("worker", help="run one service's stream workers alone (settle: one hop level)",
                       description="Run a service's workers without its API. For settle, --level picks "
                                   "the hop level(s) this process serves. To stop and restart a level "
                                   "on its own, start the platform without it "
                                   "(YIBAO_SETTLE_EXTERNAL=city yibao run) and run "
                                   "`yibao worker settle --level city` beside it.")
    w.add_argument("service", choices=["enroll", "filing", "settle", "monitor"])
    w.add_argument("--level", type=levels, default="city,province,national",
                   help="settle hop level(s), comma separated (default: all)")
    w.set_defaults(func=cmd_worker)
    k = sub.add_parser("kafka", help="Apache Kafka on loopback (jars from Maven Central): fetch, start, stop, status",
                       description="fetch: resolve the pinned Kafka release's jars with Maven into var/kafka/lib. "
                                   "start: format (first time) and start KRaft node(s) in the background, data "
                                   "under var/kafka/, ready when a metadata request lists every node. "
                                   "stop: a controlled shutdown. status: each node and what the cluster lists. "
                                   "`yibao run` starts its own node; use this for a broker that outlives it.")
    k.add_argument("action", choices=["fetch", "start", "stop", "status"])
    k.add_argument("--brokers", type=int, choices=[1, 3], default=1,
                   help="nodes: 1, or 3 (replication factor 3, min.insync.replicas 2)")
    k.add_argument("--port", type=int, default=broker_port(),
                   help="first client port (default %(default)s); nodes use the next ones, controllers after them")
    k.set_defaults(func=cmd_kafka)
    d = sub.add_parser("demo", help="narrated scenario against a running `yibao run`")
    d.add_argument("--host", default="127.0.0.1")
    d.set_defaults(func=cmd_demo)
    b = sub.add_parser("bench", help="self-contained benchmarks; JSON to var/bench*.json",
                       description="settle: settlements/s and latency per hop, in a closed loop of "
                                   "BENCH_CONCURRENCY (64) hospitals (the capacity) and with claims arriving at "
                                   "random at BENCH_RATE (300) per second, at most BENCH_MAX_IN_FLIGHT (256) at once "
                                   "(the latency at that rate; 0 skips it), then the mixed load (70 % 2207, 25 % "
                                   "2304, 5 % 2208) in the closed loop and arriving at random at BENCH_MIXED_LOAD "
                                   "(0.75) of the closed loop's rate, or at BENCH_MIXED_RATE per second (0 and 0 "
                                   "skip it); BENCH_SECONDS (20) each, BENCH_PERSONS (2000). After each load's "
                                   "phases, the highest rate arriving at random that keeps its p99 within "
                                   "BENCH_TARGET_P99_MS (250) for 2207 and BENCH_MIXED_TARGET_P99_MS (500) for the "
                                   "mixed load, by bisection in BENCH_SEARCH_STEPS (4; 0 skips it) phases of "
                                   "BENCH_SEARCH_SECONDS (20). "
                                   "enroll: a generated population through enroll.inbound "
                                   "(BENCH_ENROLL_PERSONS, default 100000; the issue's scale is 1000000). "
                                   "monitor: precision and recall per rule on labelled scenarios through the "
                                   "platform (BENCH_MONITOR_CLEAN 400, BENCH_MONITOR_PER_RULE 6), the after-"
                                   "settlement rules' claims/s on one core, the pre-check's latency. "
                                   "BENCH_LOG_LEVEL: the services' log level (settle WARNING, enroll ERROR). "
                                   "settle and monitor remove their run's broker and databases (gigabytes) "
                                   "after the report unless BENCH_KEEP_STATE=1.")
    b.add_argument("what", nargs="?", choices=["settle", "enroll", "monitor"], default="settle")
    b.set_defaults(func=cmd_bench)
    ch = sub.add_parser("chaos", help="claims while processes, a broker (and PostgreSQL) die; the books checked",
                        description="Three Kafka brokers and the platform; hospitals send claims while a driver "
                                    "kills -9 a random service or worker every CHAOS_KILL_EVERY_S (5) seconds, then "
                                    "a broker, and (on PostgreSQL, YIBAO_DATABASE_URL) stops PostgreSQL for "
                                    "CHAOS_PG_DOWN_S (10). Then: every claim closed, none booked twice, ledger = "
                                    "results = clearing. CHAOS_SECONDS (60). var/chaos.json; exit 1 on a breach.")
    ch.set_defaults(func=cmd_chaos)
    cl = sub.add_parser("clearing", help="monthly clearing between provinces (清算) at the running settle service",
                        description="run: close a month and write its statements per province pair (net of "
                                    "reversals) as JSON and CSV; show: the statements of a closed month.")
    cl.add_argument("action", choices=["run", "show"])
    cl.add_argument("--month", type=month, required=True, help="YYYY-MM")
    cl.add_argument("--url", default="http://127.0.0.1:8103", help="settle service (default %(default)s)")
    cl.add_argument("--out", default="var/clearing", help="directory for the JSON and CSV (default %(default)s)")
    cl.add_argument("--token", help="an operator's bearer token (default: $YIBAO_TOKEN, else one signed here "
                                    "with YIBAO_AUTH_KEY)")
    cl.set_defaults(func=cmd_clearing)
    mo = sub.add_parser("monitor", help="智能监控 jobs: the nightly statistical-outlier count from Kafka",
                        description="outliers: read settle.completed back from Kafka, count each hospital's use of "
                                    "each item per settled claim in a month, list the hospitals far above their "
                                    "peers (the catalogue's peer_outlier rule) and whether the monitor alerted.")
    mo.add_argument("job", choices=["outliers"])
    mo.add_argument("--month", type=month, help="YYYY-MM (default: every month on the topic)")
    mo.add_argument("--bootstrap", help="Kafka bootstrap (default: $YIBAO_KAFKA_BOOTSTRAP, else 127.0.0.1:9092)")
    mo.add_argument("--url", default="http://127.0.0.1:8104", help="monitor service (default %(default)s)")
    mo.add_argument("--token", help="an operator's bearer token (default: $YIBAO_TOKEN, else one signed here)")
    mo.set_defaults(func=cmd_monitor)
    from services import ops_cli

    ops_cli.add_parser(sub, operator_headers)
    t = sub.add_parser("token", help="issue a caller's bearer token (province, supervisor, operator, insured)",
                       description="Signs a token with YIBAO_AUTH_KEY (the key every service checks). Send it as "
                                   "`Authorization: Bearer <token>`. Hospitals do not use tokens: they sign each "
                                   "call with the x-tif-* headers. Example: yibao token --role province "
                                   "--scope 360000 --name jx-platform")
    t.add_argument("--role", required=True, choices=["province", "supervisor", "operator", "insured"])
    t.add_argument("--scope", default="*", help="province/supervisor: a 6-digit admdvs (000000 = the country); "
                                                "insured: their psn_no; operator: ignored")
    t.add_argument("--name", required=True, help="who holds it (logged with what they do)")
    t.add_argument("--hours", type=float, default=8.0, help="validity (default %(default)s)")
    t.set_defaults(func=cmd_token)
    s = sub.add_parser("schemas", help="contracts")
    s.add_argument("action", choices=["export"])
    s.set_defaults(func=cmd_schemas)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
