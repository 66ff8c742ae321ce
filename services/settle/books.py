"""The insured city's books as its decisions see them.

`InsuredBooks` is the one port the decisions (insured.py) read and write through: the views of
enroll.events and filing.events, the accumulators (人员累计), the personal accounts, the ledger
(结算台账), requests voided by 2601, and the advance funds (预付金). `SqlBooks` keeps them in the
service's database inside the caller's transaction; the unit tests keep them in dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy import Connection, insert

from services.bus.envelope import now_ms
from services.settle import ledger
from services.settle.benefits import Accumulators
from services.settle.clearing import AdvanceState, load_advance, save_advance
from services.settle.domain import FilingState, PersonState
from services.settle.store import (
    VOIDED,
    accumulators_of_year,
    filings_of,
    load_accumulators,
    load_balance,
    load_enrolments,
    load_holders,
    save_accumulators,
    save_balance,
    voided_by,
)

Row = Mapping[Any, Any]  # a ledger row by column name, as ledger.py writes it


class InsuredBooks(Protocol):
    """What the insured city knows and keeps, read and written in one transaction."""

    def enrolments(self, psn_no: str) -> list[PersonState]: ...
    def filings(self, psn_no: str) -> list[FilingState]: ...
    def holders(self, insuplc: str, cert_digest: str | None, psn_no: str) -> list[PersonState]:
        """The enrolments at `insuplc` of whoever holds this credential digest (or of psn_no without one)."""
        ...

    def accumulators(self, psn_no: str, year: int, insutype: str) -> Accumulators | None: ...
    def accumulators_of_year(self, psn_no: str, year: int) -> dict[str, Accumulators]:
        """insutype → that year's accumulators."""
        ...

    def save_accumulators(self, psn_no: str, year: int, insutype: str, acc: Accumulators, existed: bool) -> None: ...
    def balance(self, psn_no: str) -> int: ...
    def save_balance(self, psn_no: str, balance_fen: int) -> None: ...
    def voided_by(self, msgid: str) -> str | None: ...
    def void(self, msgid: str, by_msgid: str, psn_no: str) -> None: ...
    def booked(self, msgid: str) -> bool: ...
    def settlement(self, setl_id: str) -> Row | None: ...
    def settlement_of(self, msgid: str, psn_no: str) -> Row | None: ...
    def book_settlement(self, row: dict[str, Any]) -> None: ...
    def book_reversal(self, original: Row, reversal: ledger.Reversal, setl_id: str, msgid: str,
                      outcome: bytes) -> None: ...
    def advance(self, insured_prov: str, treat_prov: str) -> AdvanceState | None: ...
    def save_advance(self, state: AdvanceState, existed: bool) -> None: ...


class SqlBooks:
    """InsuredBooks in the settle database, on the caller's connection (and so in its transaction)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def enrolments(self, psn_no: str) -> list[PersonState]:
        return load_enrolments(self.conn, psn_no)

    def filings(self, psn_no: str) -> list[FilingState]:
        return filings_of(self.conn, psn_no)

    def holders(self, insuplc: str, cert_digest: str | None, psn_no: str) -> list[PersonState]:
        return load_holders(self.conn, insuplc, cert_digest, psn_no)

    def accumulators(self, psn_no: str, year: int, insutype: str) -> Accumulators | None:
        return load_accumulators(self.conn, psn_no, year, insutype)

    def accumulators_of_year(self, psn_no: str, year: int) -> dict[str, Accumulators]:
        return accumulators_of_year(self.conn, psn_no, year)

    def save_accumulators(self, psn_no: str, year: int, insutype: str, acc: Accumulators, existed: bool) -> None:
        save_accumulators(self.conn, psn_no, year, insutype, acc, existed)

    def balance(self, psn_no: str) -> int:
        return load_balance(self.conn, psn_no)

    def save_balance(self, psn_no: str, balance_fen: int) -> None:
        save_balance(self.conn, psn_no, balance_fen)

    def voided_by(self, msgid: str) -> str | None:
        return voided_by(self.conn, msgid)

    def void(self, msgid: str, by_msgid: str, psn_no: str) -> None:
        self.conn.execute(insert(VOIDED).values(msgid=msgid, by_msgid=by_msgid, psn_no=psn_no, created_ms=now_ms()))

    def booked(self, msgid: str) -> bool:
        return ledger.booked(self.conn, msgid)

    def settlement(self, setl_id: str) -> Row | None:
        return ledger.settlement(self.conn, setl_id)

    def settlement_of(self, msgid: str, psn_no: str) -> Row | None:
        return ledger.by_msgid(self.conn, msgid, psn_no)

    def book_settlement(self, row: dict[str, Any]) -> None:
        ledger.book_settlement(self.conn, row)

    def book_reversal(self, original: Row, reversal: ledger.Reversal, setl_id: str, msgid: str,
                      outcome: bytes) -> None:
        ledger.book_reversal(self.conn, original, reversal, setl_id, msgid, outcome)

    def advance(self, insured_prov: str, treat_prov: str) -> AdvanceState | None:
        return load_advance(self.conn, insured_prov, treat_prov)

    def save_advance(self, state: AdvanceState, existed: bool) -> None:
        save_advance(self.conn, state, existed)

