"""The operator's console: server-rendered pages over the same data as the /ops API.

    /console            hop health: the hospitals' latency at this API, records handled, retried and
                        dead-lettered per hop topic, consumer groups and their lag, dead letters
                        waiting per topic, faults
    /console/dlq        the dead-letter table, with a redrive button per topic and reason
    /console/trace      one claim across every hop, as a timeline
    /console/alerts     the monitor's latest alerts (read from the monitor service as the operator)
    /console/clearing   advance funds (预付金) per province pair and their level; a month's statements

An operator signs in once with their bearer token (`yibao token --role operator --name …`); the
console keeps it in an HttpOnly, SameSite=Strict cookie and checks it on every page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from html import escape
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client.parser import text_string_to_metric_families

from services.bus.client import Bus
from services.bus.deadletters import redrive, summary
from services.identity import Caller, IdentityError, bearer, read_token
from services.metrics import exposition
from services.ops import group_lag

COOKIE = "yibao_console"
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f3f3f3}.num{text-align:right}.bad{color:#b00}.ok{color:#070}.bar{background:#4a7;height:.8rem}
.note{background:#ffd;padding:.5rem;border:1px solid #cc8}
"""


class NotSignedIn(Exception):
    pass


def page(title: str, body: str, who: Caller | None = None) -> HTMLResponse:
    nav = ("<nav><a href='/console'>Health</a><a href='/console/dlq'>Dead letters</a>"
           "<a href='/console/trace'>Trace</a><a href='/console/alerts'>Alerts</a><a href='/console/clearing'>Clearing</a>"
           f"<span> signed in as {escape(who.subject)}</span></nav>" if who else "")
    return HTMLResponse(f"<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>{escape(title)} · yibao"
                        f"</title><style>{STYLE}</style></head><body>{nav}<h1>{escape(title)}</h1>{body}</body></html>")


def table(head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f"<table><tr>{th}</tr>" + "".join("<tr>" + "".join(rows_) + "</tr>" for rows_ in rows) + "</table>"


def td(value: Any, cls: str = "") -> str:
    return f"<td class='{cls}'>{escape(str(value))}</td>"


def operator(request: Request) -> Caller:
    """The signed-in operator of a console page (their token in the console's cookie)."""
    try:
        who = read_token(request.cookies.get(COOKIE) or "", request.app.state.console_auth_key)
    except IdentityError:
        raise NotSignedIn from None
    if who.role != "operator":
        raise NotSignedIn
    return who


Operator = Annotated[Caller, Depends(operator)]


def hop_counts() -> str:
    """Per topic (the hop levels are settle.city/province/national): records handled, retried and
    dead-lettered since start, and the mean handling time (from /metrics)."""
    counts: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(exposition().decode()):
        for sample in family.samples:
            topic = sample.labels.get("topic")
            if topic is None:
                continue
            row = counts.setdefault(topic, {})
            if sample.name == "yibao_records_total":
                row[sample.labels["outcome"]] = row.get(sample.labels["outcome"], 0) + sample.value
            elif sample.name in ("yibao_handle_seconds_sum", "yibao_handle_seconds_count"):
                row[sample.name] = row.get(sample.name, 0) + sample.value
    rows = []
    for topic, row in sorted(counts.items()):
        n = row.get("yibao_handle_seconds_count", 0)
        mean = f"{1000 * row.get('yibao_handle_seconds_sum', 0) / n:.1f} ms" if n else "—"
        rows.append([td(topic), td(int(row.get("handled", 0)), "num"), td(int(row.get("retried", 0)), "num"),
                     td(int(row.get("dead_lettered", 0)), "num " + ("bad" if row.get("dead_lettered") else "")),
                     td(mean, "num")])
    return "<h2>Records per topic since start</h2>" + table(
        ["topic", "handled", "retried", "dead-lettered", "mean handling"], rows, "nothing handled yet")


def latency_plot(route: str = "/fsi/callService") -> str:
    """The hospitals' request time at this API since it started, per histogram bucket, as bars
    (from /metrics: every process of the platform under `yibao run`)."""
    cumulative: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition().decode()):
        if family.name != "yibao_http_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("route") == route:
                le = float(sample.labels["le"])
                cumulative[le] = cumulative.get(le, 0.0) + sample.value
    if not cumulative or not cumulative.get(float("inf")):
        return f"<h2>Latency of {escape(route)}</h2><p>no requests yet</p>"
    rows, below, total = [], 0.0, cumulative[float("inf")]
    for le in sorted(cumulative):
        n = cumulative[le] - below
        below = cumulative[le]
        label = "slower" if le == float("inf") else f"≤ {le * 1000:g} ms"
        rows.append([td(label), td(int(n), "num"),
                     f"<td><div class='bar' style='width:{max(1, round(300 * n / total))}px'></div></td>"])
    return (f"<h2 id='latency'>Latency of {escape(route)} ({int(total)} requests)</h2>"
            + table(["time", "requests", ""], rows, "no requests yet"))


async def form(request: Request) -> dict[str, str]:
    """The fields of an application/x-www-form-urlencoded body (the console's forms)."""
    return {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}


def add_console(app: FastAPI, bus: Bus, auth_key: str, faults: Callable[[], list[Any]],
                claim_trace: Callable[[str], Awaitable[dict[str, Any] | None]],
                advance_funds: Callable[[], Awaitable[list[dict[str, Any]]]],
                statements: Callable[[str], Awaitable[list[dict[str, Any]]]], monitor_url: Callable[[], str]) -> None:
    app.state.console_auth_key = auth_key

    @app.exception_handler(NotSignedIn)
    async def sign_in_first(request: Request, _: NotSignedIn) -> Response:
        return RedirectResponse(f"/console/login?next={quote(request.url.path)}", status_code=303)

    @app.get("/console/login", include_in_schema=False)
    async def login_form(next: str = "/console", error: str = "") -> HTMLResponse:
        note = f"<p class='note bad'>{escape(error)}</p>" if error else ""
        return page("Sign in", f"{note}<form method='post' action='/console/login'>"
                    f"<input type='hidden' name='next' value='{escape(next)}'>"
                    "<label>Operator token <input name='token' id='token' size='60' autocomplete='off'></label> "
                    "<button type='submit'>Sign in</button></form>"
                    "<p>Issue one with <code>yibao token --role operator --name YOUR-NAME</code>.</p>")

    @app.post("/console/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        fields = await form(request)
        token, next = fields.get("token", ""), fields.get("next", "/console")
        try:
            who = read_token(token.strip(), auth_key)
        except IdentityError as exc:
            return RedirectResponse(f"/console/login?error={quote(str(exc))}", status_code=303)
        if who.role != "operator":
            return RedirectResponse(f"/console/login?error={quote(f'{who} is not an operator')}", status_code=303)
        target = next if next.startswith("/console") else "/console"
        r = RedirectResponse(target, status_code=303)
        r.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", max_age=8 * 3600)
        return r

    @app.get("/console", include_in_schema=False)
    async def health(who: Operator) -> HTMLResponse:
        groups, letters = await asyncio.gather(group_lag(bus), summary(bus))
        depth: dict[str, int] = {}
        for row in letters:
            depth[row["original_topic"]] = depth.get(row["original_topic"], 0) + int(row["waiting"])
        lag_rows = [[td(g["group"]), td(g["lag"], "num " + ("bad" if g["lag"] else "ok")),
                     td(", ".join(f"{p['topic']}/{p['partition']}: {p['lag']}" for p in g["partitions"] if p["lag"])
                        or "—")] for g in groups]
        dlq_rows = [[td(t), td(n, "num " + ("bad" if n else "ok"))] for t, n in sorted(depth.items())]
        fault_rows = [[td(f.level), td(f.region), td("down" if f.down else ""), td(f.fail_p), td(f.slow_ms)]
                      for f in faults()]
        return page("Hop health", latency_plot() + hop_counts() + "<h2>Consumer groups</h2>"
                    + table(["group", "lag", "behind"], lag_rows, "no consumer groups")
                    + "<h2>Dead letters</h2>" + table(["from topic", "waiting"], dlq_rows, "no dead letters")
                    + "<h2>Faults in force</h2>"
                    + table(["level", "region", "down", "fail_p", "slow_ms"], fault_rows, "no faults in force"), who)

    @app.get("/console/dlq", include_in_schema=False)
    async def dead_letters(who: Operator, done: str = "") -> HTMLResponse:
        rows = []
        for r in await summary(bus):
            form = ("<form method='post' action='/console/dlq/redrive'>"
                    f"<input type='hidden' name='topic' value='{escape(r['dlq_topic'])}'>"
                    f"<input type='hidden' name='reason' value='{escape(r['reason'])}'>"
                    "<button type='submit' class='redrive'>Redrive</button></form>")
            rows.append([td(r["dlq_topic"]), td(r["original_topic"]), td(r["consumer"]), td(r["reason"]),
                         td(r["count"], "num"), td(r["waiting"], "num"), f"<td>{form if r['waiting'] else ''}</td>"])
        note = f"<p class='note' id='result'>{escape(done)}</p>" if done else ""
        return page("Dead letters", note + table(["DLQ topic", "from", "group", "reason", "letters", "waiting", ""], rows,
                                                 "no dead letters"), who)

    @app.post("/console/dlq/redrive", include_in_schema=False)
    async def redrive_form(who: Operator, request: Request) -> Response:
        fields = await form(request)
        topic, reason = fields.get("topic", ""), fields.get("reason")
        if not topic.endswith(".dlq"):
            return RedirectResponse(f"/console/dlq?done={quote('choose a dead-letter topic to redrive')}", 303)
        last = None
        async for p in redrive(bus, topic, who.subject, reason=reason):
            last = p
        said = (f"{topic}: {last.redriven} redriven, {last.skipped_done} redriven before, {last.skipped_limit} "
                "at the redrive limit" if last else f"{topic}: nothing matched")
        return RedirectResponse(f"/console/dlq?done={quote(said)}", status_code=303)

    @app.get("/console/trace", include_in_schema=False)
    async def trace(who: Operator, msgid: str = "") -> HTMLResponse:
        form = (f"<form method='get'><label>msgid <input name='msgid' value='{escape(msgid)}' size='34'></label> "
                "<button type='submit'>Trace</button></form>")
        if not msgid:
            return page("Trace a claim", form, who)
        t = await claim_trace(msgid)
        if t is None:
            return page("Trace a claim", form + f"<p class='bad'>no claim with msgid {escape(msgid)}</p>", who)
        start = t["received_ms"]
        span = max([r["time_ms"] - start for r in t["records"]] + [1])
        rows = [[td(f"+{r['time_ms'] - start} ms", "num"), td(r["topic"]), td(r["key"]), td(r["attempt"], "num"),
                 td(r["reason"] or ""), f"<td><div class='bar' style='width:{max(2, 300 * (r['time_ms'] - start) // span)}px'>"
                 "</div></td>"] for r in t["records"]]
        hops = [[td(h["level"]), td(h["admdvs"]), td(h["action"]), td(h["attempt"], "num"),
                 td(f"{h['sent_ms'] - h['received_ms']} ms", "num")] for h in t["hop_trace"]]
        return page(f"Trace {msgid}", form + f"<p id='now'>{escape(t['infno'])} from {escape(t['fixmedins_code'])}: "
                    f"<b>{escape(t['now'])}</b></p><h2>Records on the hop topics</h2>"
                    + table(["when", "topic", "key", "attempt", "reason", ""], rows, "none")
                    + "<h2>Hops of the answer</h2>" + table(["level", "region", "action", "attempt", "took"], hops,
                                                           "no answer yet"), who)

    @app.get("/console/clearing", include_in_schema=False)
    async def clearing(who: Operator, month: str = "") -> HTMLResponse:
        rows = [[td(f"{r['insured_prov']} → {r['treat_prov']}"), td(r["amount"], "num"), td(r["used"], "num"),
                 td(f"{float(r['used_ratio']):.1%}", "num"), td(r["level"], "ok" if r["level"] == "normal" else "bad")]
                for r in await advance_funds()]
        form = (f"<form method='get'><label>month <input name='month' value='{escape(month)}' placeholder='YYYY-MM'>"
                "</label> <button type='submit'>Statements</button></form>")
        body = ""
        if month:
            try:
                found = await statements(month)
            except ValueError as exc:  # not cleared yet, or not a month
                body = f"<p class='note' id='statements'>{escape(str(exc))}</p>"
            else:
                body = table(["insured → treatment province", "settlements", "reversals", "medical fees", "fund",
                              "account", "cash", ""],
                             [[td(f"{r['insured_prov']} → {r['treat_prov']}"), td(r["settlements"], "num"),
                               td(r["reversals"], "num"), td(r["medfee_sumamt"], "num"), td(r["fund_pay_sumamt"], "num"),
                               td(r["acct_pay"], "num"), td(r["psn_cash_pay"], "num"), td(r["payable"])]
                              for r in found], f"no statements for {month}")
        return page("Advance funds (预付金) and clearing", table(
            ["insured → treatment province", "amount", "used since clearing", "used", "level"], rows,
            "no advance funds") + "<h2>Monthly statements</h2>" + form + body, who)

    @app.get("/console/alerts", include_in_schema=False)
    async def alerts(who: Operator, request: Request) -> HTMLResponse:
        url = monitor_url().rstrip("/") + "/alerts"
        try:
            async with httpx.AsyncClient(timeout=10) as c:
                r = await c.get(url, params={"limit": 100}, headers=bearer(request.cookies.get(COOKIE) or ""))
            r.raise_for_status()
            found = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            return page("Alerts", f"<p class='note bad'>the monitor service at {escape(url)} did not answer: "
                                  f"{escape(str(exc))}</p>", who)
        rows = [[td(a["rule_id"]), td(a["sev_deg"]), td(a["fixmedins_code"]), td(a["msgid"]), td(a["vola_amt"], "num"),
                 td(a["vola_cont"])] for a in found]
        return page("Alerts (智能监控)", table(["rule", "severity", "hospital", "msgid", "amount", "what"], rows,
                                             "no alerts"), who)
