"""Applying a fetched batch of inbound records in one transaction (provinces' bulk intake).

Each record is applied once (the inbox by ce_id); a record the handler refuses (one of
`refusals`, raised before it wrote anything) becomes a PermanentError with the refusal's code,
so the worker dead-letters it and tells the sender, and the rest of the batch commits. A refusal
whose code is in `retry_codes` (a view that may still catch up) is retried first, and keeps its
code when it is dead-lettered after the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from services.bus.db import transaction
from services.bus.envelope import Incoming, now_ms
from services.bus.inbox import InboxRecord
from services.bus.worker import PermanentError

Apply = Callable[[Session, Incoming], None]
INBOX = InboxRecord.__table__  # type: ignore[attr-defined]


class NotYetError(Exception):
    """A refusal this consumer's view may still catch up with: retried, dead-lettered with `code`."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def apply_batch(engine: Engine, consumer: str, msgs: list[Incoming], apply: Apply,
                refusals: tuple[type[Exception], ...], prepare: Callable[[Session, list[Incoming]], None] | None = None,
                autoflush: bool = True, inbox_key: Callable[[Incoming], str] = lambda m: m.ce_id,
                retry_codes: frozenset[str] = frozenset(),
                finish: Callable[[Session], None] | None = None) -> list[BaseException | None]:
    """`prepare` may load what the whole batch needs; `autoflush=False` when it did (fewer statements).
    `inbox_key`: what makes two messages the same (the CloudEvents id unless the event has a better one).
    `finish` writes what the batch gathered, in its transaction, after the last message."""
    out: list[BaseException | None] = []
    applied: list[dict[str, object]] = []
    with transaction(engine) as s, (nullcontext() if autoflush else s.no_autoflush):
        ids = [inbox_key(m) for m in msgs]
        seen = set(s.exec(select(InboxRecord.msg_id).where(InboxRecord.consumer == consumer,
                                                           col(InboxRecord.msg_id).in_(ids))).all())
        if prepare is not None:
            prepare(s, msgs)
        for m, key in zip(msgs, ids, strict=True):
            if key in seen:
                out.append(None)  # a replay: already applied
                continue
            seen.add(key)
            try:
                apply(s, m)
            except refusals as exc:
                code = str(getattr(exc, "code", "REFUSED"))
                out.append(NotYetError(str(exc), code) if code in retry_codes else PermanentError(str(exc), code))
                continue
            applied.append({"consumer": consumer, "msg_id": key, "processed_ms": now_ms()})
            out.append(None)
        if finish is not None:
            finish(s)
        if applied:  # one statement for the batch's inbox records
            s.connection().execute(INBOX.insert(), applied)
    return out
