"""The History the stateful rules read, kept in the monitor's database, and what a judged encounter
adds to it. Read and written in the caller's transaction (the batch's, with its inbox records)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import orjson
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from services.monitor.facts import Episode
from services.monitor.rules import Stay
from services.monitor.store import EpisodeRow, ItemUse, PersonFacts, TraceSold


class SqlHistory:
    def __init__(self, s: Session) -> None:
        self.s = s
        self._persons: dict[str, PersonFacts | None] = {}

    def _person(self, psn_no: str) -> PersonFacts | None:
        if psn_no not in self._persons:
            self._persons[psn_no] = self.s.get(PersonFacts, psn_no)
        return self._persons[psn_no]

    def stays(self, psn_no: str, since: date, until: date) -> list[Stay]:
        rows = self.s.exec(select(EpisodeRow).where(
            EpisodeRow.psn_no == psn_no, EpisodeRow.reversed == False,  # noqa: E712
            EpisodeRow.endtime >= since, EpisodeRow.begntime <= until)).all()
        return [Stay(r.msgid, r.fixmedins_code, r.mdtrtarea_admvs, r.inpatient, r.begntime, r.endtime,
                     tuple(d for d in r.diagnoses.split(",") if d)) for r in rows]

    def item_uses(self, psn_no: str, code: str, since: date) -> Decimal:
        total = self.s.exec(select(func.sum(ItemUse.cnt)).where(
            ItemUse.psn_no == psn_no, ItemUse.code == code, ItemUse.day >= since)).one()
        return Decimal(total or 0)

    def diagnoses(self, psn_no: str) -> list[str]:
        rows = self.s.exec(select(EpisodeRow.diagnoses).where(EpisodeRow.psn_no == psn_no)).all()
        return [d for r in rows for d in r.split(",") if d]

    def death_date(self, psn_no: str) -> date | None:
        p = self._person(psn_no)
        return p.death_date if p else None

    def hardship_on(self, psn_no: str, day: date) -> bool:
        p = self._person(psn_no)
        if p is None:
            return False
        return any(date.fromisoformat(h["begndate"]) <= day
                   and (not h.get("enddate") or day <= date.fromisoformat(h["enddate"]))
                   for h in orjson.loads(p.hardship))

    def trace_sold(self, code: str) -> str | None:
        row = self.s.get(TraceSold, code)
        return row.msgid if row else None

    def persons_at(self, fixmedins_code: str, day: date, insuplc: str, diagnosis: str) -> set[str]:
        rows = self.s.exec(select(EpisodeRow.psn_no, EpisodeRow.diagnoses).where(
            EpisodeRow.fixmedins_code == fixmedins_code, EpisodeRow.begntime == day,
            EpisodeRow.insuplc_admdvs == insuplc, EpisodeRow.reversed == False)).all()  # noqa: E712
        return {psn for psn, diags in rows if diags.split(",")[0] == diagnosis}

    def visits(self, psn_no: str, since: date) -> int:
        return int(self.s.exec(select(func.count()).select_from(EpisodeRow).where(
            EpisodeRow.psn_no == psn_no, EpisodeRow.begntime >= since, EpisodeRow.inpatient == False,  # noqa: E712
            EpisodeRow.reversed == False)).one())  # noqa: E712

    def selfpay_in(self, psn_no: str, year: int) -> Decimal:
        total = self.s.exec(select(func.sum(EpisodeRow.selfpay)).where(
            EpisodeRow.psn_no == psn_no, EpisodeRow.begntime >= date(year, 1, 1),
            EpisodeRow.begntime <= date(year, 12, 31), EpisodeRow.reversed == False)).one()  # noqa: E712
        return Decimal(total or 0)


def record(s: Session, ep: Episode, watched: set[str]) -> None:
    """What the next encounters' rules will read of this one."""
    s.add(EpisodeRow(msgid=ep.msgid, psn_no=ep.psn_no, fixmedins_code=ep.fixmedins_code,
                     mdtrtarea_admvs=ep.mdtrtarea_admvs, insuplc_admdvs=ep.insuplc_admdvs, inpatient=ep.inpatient,
                     begntime=ep.begntime, endtime=ep.endtime, diagnoses=",".join(ep.diagnoses), medfee=ep.medfee,
                     selfpay=ep.selfpay))
    for ln in ep.lines:
        if ln.code in watched:
            s.add(ItemUse(msgid=ep.msgid, feedetl_sn=ln.feedetl_sn, psn_no=ep.psn_no, code=ln.code, day=ln.day,
                          cnt=ln.cnt))
        for code in ln.trac:
            if s.get(TraceSold, code) is None:
                s.add(TraceSold(code=code, msgid=ep.msgid, fixmedins_code=ep.fixmedins_code))
                s.flush()  # the same code twice on one claim: the second get finds the first


def reverse(s: Session, msgid: str) -> bool:
    """A reversed settlement no longer counts (stays, visits, self-pay); True when it was known."""
    done = s.exec(update(EpisodeRow).where(col(EpisodeRow.msgid) == msgid).values(reversed=True))
    return bool(done.rowcount)
