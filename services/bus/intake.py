"""Applying a fetched batch of inbound records in one transaction (provinces' bulk intake).

Each record is applied once (the inbox by ce_id); a record the handler refuses (one of
`refusals`, raised before it wrote anything) becomes a PermanentError with the refusal's code,
so the worker dead-letters it and tells the sender, and the rest of the batch commits.
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


def apply_batch(engine: Engine, consumer: str, msgs: list[Incoming], apply: Apply,
                refusals: tuple[type[Exception], ...], prepare: Callable[[Session, list[Incoming]], None] | None = None,
                autoflush: bool = True) -> list[BaseException | None]:
    """`prepare` may load what the whole batch needs; `autoflush=False` when it did (fewer statements)."""
    out: list[BaseException | None] = []
    with transaction(engine) as s, (nullcontext() if autoflush else s.no_autoflush):
        ids = [m.ce_id for m in msgs]
        seen = set(s.exec(select(InboxRecord.msg_id).where(InboxRecord.consumer == consumer,
                                                           col(InboxRecord.msg_id).in_(ids))).all())
        if prepare is not None:
            prepare(s, msgs)
        for m in msgs:
            if m.ce_id in seen:
                out.append(None)  # a replay: already applied
                continue
            seen.add(m.ce_id)
            try:
                apply(s, m)
            except refusals as exc:
                out.append(PermanentError(str(exc), str(getattr(exc, "code", "REFUSED"))))
                continue
            s.add(InboxRecord(consumer=consumer, msg_id=m.ce_id, processed_ms=now_ms()))
            out.append(None)
    return out
