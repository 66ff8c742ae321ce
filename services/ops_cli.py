"""`yibao ops`: the operator's commands against the running platform's /ops API (settle service).

    yibao ops topics                       topics, partitions, records
    yibao ops groups [--all]               consumer groups and their lag (only those behind, unless --all)
    yibao ops groups --reset GROUP --to T  move a stopped group's offsets to a time
    yibao ops dlq list [--topic T]         dead letters: counts by topic and reason, or one topic's records
    yibao ops dlq redrive --topic T [--reason R] [--msgid M] [--place P …] [--deadline-s S] [--force]
    yibao ops browse TOPIC [--key K] [--type T] [--msgid M] [--header N=V] [--since S] [--until U] [--limit N]
    yibao ops replay TOPIC [--since S] [--until U] [--from-offset O] [--to-offset O] [--key K] [--into T]
    yibao ops trace MSGID                  one claim across every hop, and where it is now
    yibao ops faults [list|clear]          hop faults in force

Times (--since, --until) are ISO date-times (2026-12-05T08:00, local time) or epoch milliseconds.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

import httpx

DLQ = ".dlq"


def add_parser(sub: Any, operator_headers: Any) -> None:
    ops = sub.add_parser("ops", help="operate the running platform: topics, lag, dead letters, faults",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ops.add_argument("--url", default="http://127.0.0.1:8103", help="settle service (default %(default)s)")
    ops.add_argument("--token", help="an operator's bearer token (default: $YIBAO_TOKEN, else one signed here "
                                     "with YIBAO_AUTH_KEY)")
    osub = ops.add_subparsers(dest="what", required=True)
    osub.add_parser("topics", help="every topic with its partitions and records")
    g = osub.add_parser("groups", help="consumer groups and their lag")
    g.add_argument("--all", action="store_true", help="also the groups that are not behind")
    g.add_argument("--reset", metavar="GROUP", help="move a stopped group's offsets to --to (a time)")
    g.add_argument("--to", help="with --reset: ISO date-time or epoch ms")
    d = osub.add_parser("dlq", help="dead letters: list, or redrive to where they failed")
    d.add_argument("action", choices=["list", "redrive"])
    d.add_argument("--topic", help="the topic the letters came from, or its .dlq (e.g. settle.city)")
    d.add_argument("--reason", help="only letters whose reason contains this text")
    d.add_argument("--msgid", help="only one claim's letters")
    d.add_argument("--place", action="append", help="one record: <dlq topic>/<partition>/<offset> (repeatable)")
    d.add_argument("--deadline-s", type=float, default=60.0, help="redrive: the new deadline (default %(default)s s)")
    d.add_argument("--force", action="store_true", help="redrive also letters redriven the maximum times already")
    d.add_argument("--limit", type=int, default=50, help="list: at most this many records (default %(default)s)")
    b = osub.add_parser("browse", help="messages of a topic, decoded (ID numbers masked)")
    b.add_argument("topic")
    b.add_argument("--key")
    b.add_argument("--type", dest="ce_type", help="ce_type, e.g. yibao.settle.SettlementResult.v1")
    b.add_argument("--msgid", help="a claim's msgid (ce_correlationid)")
    b.add_argument("--header", help="name=value, e.g. replayed-from=settle.completed/0/3")
    b.add_argument("--since")
    b.add_argument("--until")
    b.add_argument("--limit", type=int, default=20, help="the last this many (default %(default)s)")
    r = osub.add_parser("replay", help="copy a range of a topic into itself or another, marked replayed-from")
    r.add_argument("topic")
    r.add_argument("--since")
    r.add_argument("--until")
    r.add_argument("--from-offset", type=int)
    r.add_argument("--to-offset", type=int)
    r.add_argument("--key")
    r.add_argument("--into", dest="target", help="another registry topic (default: the same)")
    t = osub.add_parser("trace", help="one claim across every hop")
    t.add_argument("msgid")
    f = osub.add_parser("faults", help="hop faults in force in every settle process")
    f.add_argument("action", choices=["list", "clear"], nargs="?", default="list")
    ops.set_defaults(func=lambda args: run(args, operator_headers(args.token)))


def run(args: argparse.Namespace, auth: dict[str, str]) -> None:
    with httpx.Client(base_url=args.url.rstrip("/"), headers=auth, timeout=600) as c:
        try:
            {"topics": topics, "groups": groups, "dlq": dlq, "faults": faults, "browse": browse, "replay": replay,
             "trace": trace}[args.what](c, args)
        except httpx.HTTPError as exc:
            raise SystemExit(f"cannot reach the settle service at {args.url} ({exc}); is `yibao run` up?") from None


def answer(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            body = r.json()
            text = body.get("error") or body.get("detail") or body
        except ValueError:
            text = r.text
        raise SystemExit(f"{r.status_code}: {text}")
    return r.json()


def topics(c: httpx.Client, _: argparse.Namespace) -> None:
    rows = answer(c.get("/ops/topics"))
    width = max((len(r["topic"]) for r in rows), default=5)
    print(f"{'topic':<{width}}  partitions  records")
    for r in rows:
        print(f"{r['topic']:<{width}}  {r['partitions']:>10}  {r['records']:>7}")


def groups(c: httpx.Client, args: argparse.Namespace) -> None:
    if args.reset:
        if not args.to:
            raise SystemExit("yibao ops groups --reset GROUP needs --to (ISO date-time or epoch ms)")
        for m in answer(c.post(f"/ops/groups/{args.reset}/reset", params={"to": args.to})):
            print(f"{args.reset}  {m['topic']}/{m['partition']}: {m['from']} → {m['to']}")
        return
    rows = answer(c.get("/ops/groups"))
    shown = [r for r in rows if args.all or r["lag"]]
    if not shown:
        print(f"{len(rows)} consumer groups, none behind")
    for r in shown:
        print(f"{r['group']}: lag {r['lag']}")
        for p in r["partitions"]:
            if args.all or p["lag"]:
                print(f"    {p['topic']}/{p['partition']}: committed {p['committed']}, end {p['end']}, lag {p['lag']}")


def dlq_topic(name: str | None) -> str:
    if not name:
        raise SystemExit("yibao ops dlq redrive: --topic is required (e.g. --topic settle.city)")
    return name if name.endswith(DLQ) else name + DLQ


def dlq(c: httpx.Client, args: argparse.Namespace) -> None:
    if args.action == "list" and not args.topic:
        rows = answer(c.get("/ops/dlq"))
        if not rows:
            print("no dead letters")
        for r in rows:
            print(f"{r['waiting']:>6} waiting of {r['count']:>6}  {r['dlq_topic']}  (from {r['original_topic']}, "
                  f"group {r['consumer']}): {r['reason']}")
        return
    topic = dlq_topic(args.topic)
    if args.action == "list":
        params = {k: v for k, v in (("reason", args.reason), ("msgid", args.msgid), ("limit", args.limit)) if v}
        for r in answer(c.get(f"/ops/dlq/{topic}", params=params)):
            at = datetime.fromtimestamp(r["time_ms"] / 1000).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{r['place']}  {at}  msgid {r['msgid'] or '-'}  attempts {r['attempts']}  redriven "
                  f"{r['redrives']}×  {r['reason']}")
        return
    body = {"reason": args.reason, "msgid": args.msgid, "places": args.place, "deadline_s": args.deadline_s,
            "force": args.force}
    with c.stream("POST", f"/ops/dlq/{topic}/redrive", json=body) as r:
        if r.status_code >= 400:
            r.read()
            answer(r)
        last: dict[str, Any] = {}
        for line in r.iter_lines():
            if line:
                last = json.loads(line)
                print(f"{topic}: matched {last['matched']}, redriven {last['redriven']}, skipped "
                      f"{last['skipped_done']} redriven before, {last['skipped_limit']} at the redrive limit"
                      + ("  (done)" if last.get("done") else ""), flush=True)
    if not last.get("done"):
        raise SystemExit("the redrive stopped before it said it was done; list the letters and run it again "
                         "(letters already redriven are skipped)")


def clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def browse(c: httpx.Client, args: argparse.Namespace) -> None:
    params = {k: v for k, v in (("key", args.key), ("ce_type", args.ce_type), ("msgid", args.msgid),
                                ("header", args.header), ("since", args.since), ("until", args.until), ("limit", args.limit)) if v}
    rows = answer(c.get(f"/ops/topics/{args.topic}/messages", params=params))
    for m in rows:
        print(f"{clock(m['time_ms'])}  {args.topic}/{m['partition']}/{m['offset']}  key {m['key']}  "
              f"{m['headers'].get('ce_type', '-')}  msgid {m['headers'].get('ce_correlationid', '-')}")
        print("    " + json.dumps(m["value"], ensure_ascii=False)[:2000])
    print(f"{len(rows)} message(s)")


def replay(c: httpx.Client, args: argparse.Namespace) -> None:
    body = {"since": args.since, "until": args.until, "from_offset": args.from_offset, "to_offset": args.to_offset,
            "key": args.key, "target": args.target}
    last: dict[str, Any] = {}
    with c.stream("POST", f"/ops/topics/{args.topic}/replay", json=body) as r:
        if r.status_code >= 400:
            r.read()
            answer(r)
        for line in r.iter_lines():
            if line:
                last = json.loads(line)
                print(f"{args.topic} → {args.target or args.topic}: {last['copied']} copied"
                      + ("  (done)" if last.get("done") else ""), flush=True)
    if not last.get("done"):
        raise SystemExit("the replay stopped before it said it was done")


def trace(c: httpx.Client, args: argparse.Namespace) -> None:
    t = answer(c.get(f"/ops/trace/{args.msgid}"))
    print(f"{t['msgid']}  {t['infno']}  {t['fixmedins_code']}  received {clock(t['received_ms'])}  {t['now']}")
    for r in t["records"]:
        print(f"  {clock(r['time_ms'])}  {r['topic']}/{r['partition']}/{r['offset']}  key {r['key']}  "
              + (f"step {r['step']}  " if r.get("step") else "")
              + f"attempt {r['attempt']}" + (f"  {r['reason']}" if r["reason"] else ""))
    for h in t["hop_trace"]:
        print(f"  hop {h['level']:<8} {h['admdvs']}  {h['action']:<7} attempt {h['attempt']}  "
              f"{h['sent_ms'] - h['received_ms']} ms")


def faults(c: httpx.Client, args: argparse.Namespace) -> None:
    rows = answer(c.delete("/ops/faults") if args.action == "clear" else c.get("/ops/faults"))
    print("no faults in force" if not rows else "\n".join(
        f"{f['level']}:{f['region']} down={f['down']} fail_p={f['fail_p']} slow_ms={f['slow_ms']}" for f in rows))
