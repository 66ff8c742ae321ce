"""Local views fed by state-carrying events: applied once per message, never older over newer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlmodel import Session, SQLModel

from services.bus.inbox import already_processed

Row = TypeVar("Row", bound=SQLModel)


def apply_state(s: Session, consumer: str, msg_id: str, table: type[Row], key: dict[str, Any],
                event: Any, fields: Sequence[str]) -> Row | None:
    """Upsert the view row for `key` from `event` (which carries `version`); None when skipped."""
    if already_processed(s, consumer, msg_id):
        return None
    row = s.get(table, tuple(key.values()) if len(key) > 1 else next(iter(key.values())))
    if row is not None and getattr(row, "version", 0) > event.version:
        return None  # an older event arriving late
    values = {f: getattr(event, f) for f in fields}
    if row is None:
        row = table(**key, **values)
    else:
        for f, v in values.items():
            setattr(row, f, v)
    s.add(row)
    return row
