"""The insured city's ledger (结算台账), and the only writer of its rows: a settlement is booked
once per msgid; a reversal is a linked negative row plus a mark on the original, never an edit of
its amounts; clearing marks the rows of the month that cleared them. What a reversal gives back is
decided by `reversal_of`, a pure function of the original row and the person's state now."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, RowMapping, insert, select, update

from services.bus.envelope import now_ms
from services.bus.sql import Statement
from services.settle import benefits
from services.settle.store import ACC_FIELDS, LEDGER

_BOOKED_COLUMNS = ("setl_id", "msgid", "psn_no", "insuplc_admdvs", "mdtrtarea_admvs", "fixmedins_code", "year",
                   "medfee_fen", "fund_fen", "hifp_fen", "acct_fen", "cash_fen", "insutype", "acc_delta", "outcome",
                   "created_ms")
BOOK = Statement(f"INSERT INTO settle_ledger ({', '.join(_BOOKED_COLUMNS)}) "  # on the hot path: services.bus.sql
                 f"VALUES ({', '.join(':' + c for c in _BOOKED_COLUMNS)})")
_BOOKED = Statement("SELECT setl_id FROM settle_ledger WHERE msgid = :msgid")
AMOUNTS = ("medfee_fen", "fund_fen", "hifp_fen", "acct_fen", "cash_fen")


def booked(conn: Connection, msgid: str) -> bool:
    """Whether a request is in the ledger already (a redelivery is then ignored)."""
    return _BOOKED.one(conn, {"msgid": msgid}) is not None


def book_settlement(conn: Connection, row: dict[str, Any]) -> None:
    """A settlement's row (amounts in fen, acc_delta what it added to the accumulators): exactly the
    columns of `_BOOKED_COLUMNS`."""
    BOOK.run(conn, row)


def settlement(conn: Connection, setl_id: str) -> RowMapping | None:
    return conn.execute(select(LEDGER).where(LEDGER.c.setl_id == setl_id)).mappings().first()


def by_msgid(conn: Connection, msgid: str, psn_no: str) -> RowMapping | None:
    return conn.execute(select(LEDGER).where(LEDGER.c.msgid == msgid, LEDGER.c.psn_no == psn_no)).mappings().first()


@dataclass(frozen=True)
class Reversal:
    """What reversing a settlement does: the accumulators and the account balance after it, and
    the negative row (everything but its ids, the request and the answer)."""

    accumulators: benefits.Accumulators | None  # None: the person has no accumulators that year
    balance_fen: int
    row: dict[str, Any]


def reversal_of(original: Mapping[str, Any], acc: benefits.Accumulators | None, balance_fen: int) -> Reversal:
    """Give back exactly what the settlement took: its recorded accumulator delta, and what the
    personal account paid; the row's amounts negated, linked to the original."""
    delta = orjson.loads(original["acc_delta"])
    restored = None if acc is None else benefits.Accumulators(
        **{f: getattr(acc, f) - int(delta.get(f, 0)) for f in ACC_FIELDS})
    row = {k: original[k] for k in ("psn_no", "insuplc_admdvs", "mdtrtarea_admvs", "fixmedins_code", "year",
                                    "insutype")}
    row |= {f: -original[f] for f in AMOUNTS}
    row |= {"acc_delta": orjson.dumps({f: -int(v) for f, v in delta.items()}), "refd_setl_id": original["setl_id"]}
    return Reversal(restored, balance_fen + (original["acct_fen"] or 0), row)


def book_reversal(conn: Connection, original: Mapping[str, Any], r: Reversal, setl_id: str, msgid: str,
                  outcome: bytes) -> None:
    """The negative row, and the original marked as reversed by it."""
    conn.execute(insert(LEDGER).values(setl_id=setl_id, msgid=msgid, outcome=outcome, created_ms=now_ms(), **r.row))
    conn.execute(update(LEDGER).where(LEDGER.c.setl_id == original["setl_id"]).values(reversed_by=setl_id))


def uncleared(conn: Connection, before_ms: int) -> Sequence[Any]:
    """Rows booked before `before_ms` that no clearing month holds yet."""
    return conn.execute(select(LEDGER.c.setl_id, LEDGER.c.insuplc_admdvs, LEDGER.c.mdtrtarea_admvs,
                               LEDGER.c.refd_setl_id, LEDGER.c.medfee_fen, LEDGER.c.fund_fen, LEDGER.c.acct_fen,
                               LEDGER.c.cash_fen, LEDGER.c.created_ms)
                        .where(LEDGER.c.clr_period.is_(None), LEDGER.c.created_ms < before_ms)).all()


def mark_cleared(conn: Connection, setl_ids: list[str], period: str) -> None:
    for i in range(0, len(setl_ids), 500):
        conn.execute(update(LEDGER).where(LEDGER.c.setl_id.in_(setl_ids[i:i + 500])).values(clr_period=period))
