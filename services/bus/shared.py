"""The writes of one fetched batch in shared transactions, for a BatchHandler.

One commit for the writes of a few ms instead of one each: `write_shared` runs `write(unit,
item)` (a Core transaction: services.bus.db.Unit) for the items in order inside one transaction
until it has held the event loop for `hold_s`, commits, lets the loop run (the outbox relay sends
what committed), and goes on with the rest. A transaction that fails is rolled back whole and
each of its items is written again in a transaction of its own, so one bad item costs the others
nothing; an item that fails alone gets its error in the answer. `write` must not change its item
(it may be written twice), and returns the log line to write once its transaction has committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import Engine

from services.bus.db import Unit, unit
from services.bus.worker import YIELD_AFTER_S

T = TypeVar("T")
LogLine = tuple[str, tuple[object, ...]]  # a log format and its arguments


async def write_shared(engine: Engine, items: Sequence[T], write: Callable[[Unit, T], LogLine],
                       log: logging.Logger, hold_s: float = YIELD_AFTER_S) -> list[BaseException | None]:
    """Per item, None (written and committed) or what writing it alone raised."""
    errors: list[BaseException | None] = [None] * len(items)
    loop = asyncio.get_running_loop()
    start = 0
    while start < len(items):
        taken, committed = _together(engine, items, start, write, log, loop.time() + hold_s)
        if not committed:
            for i in range(start, start + taken):
                errors[i] = _alone(engine, items[i], write, log)
        start += taken
        if start < len(items):
            await asyncio.sleep(0)
    return errors


def _together(engine: Engine, items: Sequence[T], start: int, write: Callable[[Unit, T], LogLine],
              log: logging.Logger, until: float) -> tuple[int, bool]:
    """One transaction from items[start]: how many it took, and whether it committed."""
    loop, taken, lines = asyncio.get_running_loop(), 0, []
    try:
        with unit(engine) as s:
            for item in items[start:]:
                taken += 1
                lines.append(write(s, item))
                if loop.time() > until:
                    break
    except Exception:
        log.warning("a shared transaction of %d writes failed; each is done again on its own", taken, exc_info=True)
        return taken, False
    for fmt, args in lines:
        log.info(fmt, *args)
    return taken, True


def _alone(engine: Engine, item: T, write: Callable[[Unit, T], LogLine], log: logging.Logger) -> BaseException | None:
    try:
        with unit(engine) as s:
            fmt, args = write(s, item)
    except Exception as exc:
        return exc
    log.info(fmt, *args)
    return None
