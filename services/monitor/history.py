"""The History the stateful rules read, for one fetched batch of settlements: what the batch's
persons did before (their encounters, watched item uses, death and hardship) and the trace codes
it sells, loaded with one query each before the batch is judged; each judged encounter is added
to it at once (a later claim of the same batch sees it) and written with the batch's inbox records
in its transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from services.bus.sql import Statement, as_date
from services.monitor.facts import Episode
from services.monitor.outliers import Usage
from services.monitor.rules import Stay
from services.monitor.store import (
    EpisodeRow,
    HospitalMonth,
    ItemMonth,
    ItemUse,
    PersonFacts,
    TraceSold,
)

EPISODES = EpisodeRow.__table__  # type: ignore[attr-defined]  # Core statements: rows, not objects
USES = ItemUse.__table__  # type: ignore[attr-defined]
TRACES = TraceSold.__table__  # type: ignore[attr-defined]
ITEM_MONTHS = ItemMonth.__table__  # type: ignore[attr-defined]
HOSPITAL_MONTHS = HospitalMonth.__table__  # type: ignore[attr-defined]
# per judged claim of the cluster rule: a statement on the driver's cursor (services.bus.sql)
_PERSONS_AT = Statement("""SELECT DISTINCT psn_no FROM monitor_episodes
                           WHERE fixmedins_code = :fixmedins_code AND begntime = :day AND insuplc_admdvs = :insuplc
                           AND reversed = :no AND (diagnoses = :diagnosis OR diagnoses LIKE :like ESCAPE '/')
                           LIMIT :at_most""")
# a batch's additions to the months' counts (the statistical outliers'), on the driver's cursor:
# the same SQL on SQLite and PostgreSQL
_ADD_ITEMS = Statement("""INSERT INTO monitor_item_months (month, code, fixmedins_code, cnt)
                          VALUES (:month, :code, :fixmedins_code, :cnt)
                          ON CONFLICT (month, code, fixmedins_code)
                          DO UPDATE SET cnt = monitor_item_months.cnt + excluded.cnt""")
_ADD_CLAIMS = Statement("""INSERT INTO monitor_hospital_months (month, fixmedins_code, claims)
                           VALUES (:month, :fixmedins_code, :claims)
                           ON CONFLICT (month, fixmedins_code)
                           DO UPDATE SET claims = monitor_hospital_months.claims + excluded.claims""")
LOOK_BACK = timedelta(days=400)  # the longest window a rule reads (a calendar year, 90-day frequencies …)
CHUNK = 500  # values per IN (…)


class Past(NamedTuple):
    stay: Stay
    insuplc: str
    selfpay: Decimal


def _past_of(row: tuple[Any, ...]) -> Past:
    """A monitor_episodes row of `_past_for` as the driver gives it: on SQLite, dates as ISO text,
    booleans as 0/1 and amounts as numbers (what SQLAlchemy wrote: 2 decimals); on PostgreSQL,
    dates, booleans and Decimals."""
    msgid, _psn, hosp, area, insuplc, inpatient, begn, end, diagnoses, selfpay = row
    return Past(Stay(msgid, hosp, area, bool(inpatient), as_date(begn), as_date(end),
                     tuple(d for d in diagnoses.split(",") if d)),
                insuplc, selfpay if isinstance(selfpay, Decimal) else Decimal(f"{selfpay:.2f}"))


@lru_cache(maxsize=64)
def _past_for(persons: int) -> Statement:
    """The past encounters of `persons` persons (parameters p0…), on the driver's cursor: a batch
    reads thousands of rows, and Core's row processing was half the read. One statement per
    number of persons (a batch's, or CHUNK)."""
    names = ", ".join(f":p{i}" for i in range(persons))
    return Statement(f"""SELECT msgid, psn_no, fixmedins_code, mdtrtarea_admvs, insuplc_admdvs, inpatient,
                                begntime, endtime, diagnoses, selfpay FROM monitor_episodes
                         WHERE psn_no IN ({names}) AND endtime >= :since AND reversed = :no""")


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    items = sorted(set(values))
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


class BatchHistory:
    def __init__(self, watched: set[str]) -> None:
        self.watched = watched
        self.past: dict[str, list[Past]] = defaultdict(list)
        self.uses: dict[tuple[str, str], list[tuple[date, Decimal]]] = defaultdict(list)
        self.persons: dict[str, PersonFacts] = {}
        self.traces: dict[str, str] = {}
        self.clinics: dict[tuple[str, date, str, str], set[str]] = {}  # loaded on demand: persons by first diagnosis
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)  # written by write()
        self.usage = Usage.empty()  # the batch's additions to the months' counts
        self.session: Session | None = None

    # --- loading -------------------------------------------------------------------------

    def load(self, s: Session, episodes: list[Episode]) -> None:
        self.session = s
        if not episodes:
            return
        conn = s.connection()
        psns = {e.psn_no for e in episodes}
        since = min(e.begntime for e in episodes) - LOOK_BACK
        for chunk in _chunks(psns):
            params: dict[str, Any] = {f"p{i}": psn for i, psn in enumerate(chunk)}
            for row in _past_for(len(chunk)).run(conn, params | {"since": since.isoformat(), "no": False}):
                self.past[row[1]].append(_past_of(row))
            if self.watched:
                for u in conn.execute(core_select(USES.c.psn_no, USES.c.code, USES.c.day, USES.c.cnt).where(
                        USES.c.psn_no.in_(chunk), USES.c.day >= since)):
                    self.uses[(u.psn_no, u.code)].append((u.day, u.cnt))
            for p in s.exec(select(PersonFacts).where(col(PersonFacts.psn_no).in_(chunk))):
                self.persons[p.psn_no] = p
        codes = {c for e in episodes for ln in e.lines for c in ln.trac}
        for chunk in _chunks(codes):
            for code, msgid in conn.execute(core_select(TRACES.c.code, TRACES.c.msgid).where(TRACES.c.code.in_(chunk))):
                self.traces[code] = msgid

    # --- the History port ----------------------------------------------------------------

    def stays(self, psn_no: str, since: date, until: date) -> list[Stay]:
        return [p.stay for p in self.past[psn_no] if p.stay.endtime >= since and p.stay.begntime <= until]

    def item_uses(self, psn_no: str, code: str, since: date) -> Decimal:
        return sum((cnt for day, cnt in self.uses[(psn_no, code)] if day >= since), Decimal(0))

    def diagnoses(self, psn_no: str) -> list[str]:
        return [d for p in self.past[psn_no] for d in p.stay.diagnoses]

    def death_date(self, psn_no: str) -> date | None:
        p = self.persons.get(psn_no)
        return p.death_date if p else None

    def hardship_on(self, psn_no: str, day: date) -> bool:
        p = self.persons.get(psn_no)
        if p is None:
            return False
        return any(date.fromisoformat(h["begndate"]) <= day
                   and (not h.get("enddate") or day <= date.fromisoformat(h["enddate"]))
                   for h in orjson.loads(p.hardship))

    def trace_sold(self, code: str) -> str | None:
        return self.traces.get(code)

    def persons_at(self, fixmedins_code: str, day: date, insuplc: str, diagnosis: str, at_most: int) -> set[str]:
        key = (fixmedins_code, day, insuplc, diagnosis)
        if key not in self.clinics:  # a bounded read: a busy clinic's day costs no more than a quiet one's
            assert self.session is not None, "load() first"
            like = diagnosis.replace("/", "//").replace("%", "/%").replace("_", "/_") + ",%"
            rows = _PERSONS_AT.all(self.session.connection(), {
                "fixmedins_code": fixmedins_code, "day": day.isoformat(), "insuplc": insuplc, "no": False,
                "diagnosis": diagnosis, "like": like, "at_most": at_most})
            self.clinics[key] = {r[0] for r in rows}
        return self.clinics[key]

    def visits(self, psn_no: str, since: date) -> int:
        return sum(1 for p in self.past[psn_no] if p.stay.begntime >= since and not p.stay.inpatient)

    def selfpay_in(self, psn_no: str, year: int) -> Decimal:
        return sum((p.selfpay for p in self.past[psn_no] if p.stay.begntime.year == year), Decimal(0))

    # --- what a judged encounter adds ------------------------------------------------------

    def add(self, ep: Episode) -> None:
        self.usage.add(ep)
        self.past[ep.psn_no].append(Past(Stay(ep.msgid, ep.fixmedins_code, ep.mdtrtarea_admvs, ep.inpatient,
                                              ep.begntime, ep.endtime, ep.diagnoses), ep.insuplc_admdvs, ep.selfpay))
        self.rows["episodes"].append({
            "msgid": ep.msgid, "psn_no": ep.psn_no, "fixmedins_code": ep.fixmedins_code,
            "mdtrtarea_admvs": ep.mdtrtarea_admvs, "insuplc_admdvs": ep.insuplc_admdvs, "inpatient": ep.inpatient,
            "begntime": ep.begntime, "endtime": ep.endtime, "diagnoses": ",".join(ep.diagnoses),
            "medfee": ep.medfee, "selfpay": ep.selfpay, "reversed": False})
        if ep.diagnoses and (key := (ep.fixmedins_code, ep.begntime, ep.insuplc_admdvs, ep.diagnoses[0])) in self.clinics:
            self.clinics[key].add(ep.psn_no)
        for ln in ep.lines:
            if ln.code in self.watched:
                self.uses[(ep.psn_no, ln.code)].append((ln.day, ln.cnt))
                self.rows["uses"].append({"msgid": ep.msgid, "feedetl_sn": ln.feedetl_sn, "psn_no": ep.psn_no,
                                          "code": ln.code, "day": ln.day, "cnt": ln.cnt})
            for code in ln.trac:
                if code not in self.traces:
                    self.traces[code] = ep.msgid
                    self.rows["traces"].append({"code": code, "msgid": ep.msgid, "fixmedins_code": ep.fixmedins_code})

    def write(self, s: Session) -> None:
        """The batch's additions, one statement per table."""
        conn = s.connection()
        for name, table in (("episodes", EPISODES), ("uses", USES), ("traces", TRACES)):
            if self.rows[name]:
                conn.execute(table.insert(), self.rows[name])
        self.rows.clear()
        if self.usage.claims:
            exact = conn.dialect.name == "postgresql"  # SQLite stores the count as REAL, as SQLAlchemy binds it
            _ADD_ITEMS.run_many(conn, [{"month": m, "code": c, "fixmedins_code": h, "cnt": q if exact else float(q)}
                                       for (m, h, c), q in self.usage.items.items()])
            _ADD_CLAIMS.run_many(conn, [{"month": m, "fixmedins_code": h, "claims": n}
                                        for (m, h), n in self.usage.claims.items()])
        self.usage = Usage.empty()

    def reverse(self, s: Session, msgid: str) -> None:
        """A reversed settlement no longer counts (stays, visits, self-pay), whether it was judged
        in an earlier batch or earlier in this one."""
        for row in self.rows["episodes"]:
            if row["msgid"] == msgid:
                row["reversed"] = True
        for psn, past in self.past.items():
            self.past[psn] = [p for p in past if p.stay.msgid != msgid]
        s.exec(update(EpisodeRow).where(col(EpisodeRow.msgid) == msgid).values(reversed=True))


def month_usage(conn: Connection, pairs: set[tuple[str, str]] | None, since_month: str = "") -> Usage:
    """The months' counts now: of the (month, item) pairs given, or (None) of every item of the
    months from `since_month` on; with every hospital's claims in those months."""
    u = Usage.empty()
    if pairs is None:
        for r in conn.execute(core_select(ITEM_MONTHS).where(ITEM_MONTHS.c.month >= since_month)):
            u.items[(r.month, r.fixmedins_code, r.code)] = Decimal(r.cnt)
        months = sorted({m for m, _, _ in u.items})
    else:
        months = sorted({m for m, _ in pairs})
        for chunk in _chunks(c for _, c in pairs):
            for r in conn.execute(core_select(ITEM_MONTHS).where(ITEM_MONTHS.c.month.in_(months),
                                                                 ITEM_MONTHS.c.code.in_(chunk))):
                if (r.month, r.code) in pairs:
                    u.items[(r.month, r.fixmedins_code, r.code)] = Decimal(r.cnt)
    for r in conn.execute(core_select(HOSPITAL_MONTHS).where(HOSPITAL_MONTHS.c.month.in_(months))):
        u.claims[(r.month, r.fixmedins_code)] = r.claims
    return u
