"""Dead letters for operators: what sits in the `.dlq` topics, and redriving it.

A dead letter keeps the original key and value; its `dlq-*` headers say where it came from
(`dlq-original-topic/partition/offset`), which consumer group gave up (`dlq-consumer`), after how
many attempts and why. A redrive puts it on `<original topic>.retry`, due now, for that consumer
group only (the other groups of the topic handled it already), with a fresh attempt budget and,
when it had one, a fresh deadline. Every redrive is recorded on `ops.audit` (who, what, when); a
record already redriven is not redriven again, and one redriven `MAX_REDRIVES` times is left for a
person to look at, so a message that keeps failing never loops. When a redriven message fails
again it returns to the DLQ carrying `yibao-dlq-history`: every earlier reason and attempt count.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from schemas.events import OperatorAction
from schemas.topics import DLQ_SUFFIX, RETRY_SUFFIX
from services.bus.client import Bus
from services.bus.envelope import (
    ATTEMPT,
    CONSUMER,
    CORRELATION,
    DEADLINE,
    DUE,
    Headers,
    header_dict,
    now_ms,
)
from services.bus.reading import read_to_end

AUDIT_TOPIC = "ops.audit"
HISTORY = "yibao-dlq-history"  # JSON list of the earlier dead-letterings of this message
REDRIVES = "yibao-redrives"  # how many times it was redriven
MAX_REDRIVES = 3
_DROPPED = ("yibao-give-up", "yibao-give-up-tries", "yibao-last-error")  # handled afresh, not given up again


@dataclass(frozen=True)
class DeadLetterRecord:
    """One record of a `.dlq` topic, as an operator sees it (no value: it may hold personal data)."""

    dlq_topic: str
    partition: int
    offset: int
    key: str | None
    original_topic: str
    consumer: str
    reason: str
    error_class: str
    attempts: int
    msgid: str | None
    ce_type: str | None
    time_ms: int
    redrives: int

    @property
    def place(self) -> str:
        return f"{self.dlq_topic}/{self.partition}/{self.offset}"


def dead_letter_of(dlq_topic: str, rec: ConsumerRecord[Any, Any]) -> DeadLetterRecord:
    h = header_dict(rec.headers)
    return DeadLetterRecord(
        dlq_topic=dlq_topic, partition=rec.partition, offset=rec.offset,
        key=rec.key.decode("utf-8", "replace") if rec.key else None,
        original_topic=h.get("dlq-original-topic", dlq_topic.removesuffix(DLQ_SUFFIX)),
        consumer=h.get("dlq-consumer", ""), reason=h.get("dlq-error-message", ""),
        error_class=h.get("dlq-error-class", ""), attempts=int(h.get("dlq-attempts", "1") or 1),
        msgid=h.get(CORRELATION), ce_type=h.get("ce_type"), time_ms=rec.timestamp,
        redrives=int(h.get(REDRIVES, "0") or 0))


async def dlq_topics(bus: Bus) -> list[str]:
    return sorted(t for t in await bus.list_topics() if t.endswith(DLQ_SUFFIX))


async def list_dead_letters(bus: Bus, dlq_topic: str, reason: str | None = None,
                            msgid: str | None = None) -> list[DeadLetterRecord]:
    """The dead letters of one `.dlq` topic, those whose reason contains `reason` (if given)."""
    out = []
    async for rec in read_to_end(bus, dlq_topic):
        d = dead_letter_of(dlq_topic, rec)
        if (reason is None or reason in d.reason) and (msgid is None or d.msgid == msgid):
            out.append(d)
    return out


async def summary(bus: Bus) -> list[dict[str, Any]]:
    """Counts per DLQ topic, original topic, consumer and reason (the reason's first 120
    characters): every letter, and those not yet redriven (`waiting`)."""
    done = await redriven_places(bus)
    rows = []
    for t in await dlq_topics(bus):
        counts: Counter[tuple[str, str, str]] = Counter()
        waiting: Counter[tuple[str, str, str]] = Counter()
        for d in await list_dead_letters(bus, t):
            k = (d.original_topic, d.consumer, d.reason[:120])
            counts[k] += 1
            waiting[k] += d.place not in done
        rows += [{"dlq_topic": t, "original_topic": o, "consumer": c, "reason": r, "count": n,
                  "waiting": waiting[(o, c, r)]} for (o, c, r), n in sorted(counts.items(), key=lambda x: -x[1])]
    return rows


async def redriven_places(bus: Bus) -> set[str]:
    """Every dead letter an operator redrove, from the audit topic."""
    done: set[str] = set()
    async for rec in read_to_end(bus, AUDIT_TOPIC):
        try:
            action = OperatorAction.model_validate_json(rec.value)
        except ValueError:
            continue
        if action.action == "dlq.redrive":
            done.update(action.touched)
    return done


def redriven_headers(rec: ConsumerRecord[Any, Any], d: DeadLetterRecord, deadline_s: float) -> Headers:
    """The record's headers for its redrive: no dlq-* (kept as history), a fresh attempt budget,
    due now, for the group that gave up, and a fresh deadline if it had one."""
    h = header_dict(rec.headers)
    history = orjson.loads(h.get(HISTORY, "[]"))
    history.append({"reason": d.reason[:300], "attempts": d.attempts, "consumer": d.consumer, "at": d.time_ms,
                    "from": d.place})
    kept = [(k, v) for k, v in (rec.headers or ()) if not k.startswith("dlq-")
            and k not in (*_DROPPED, ATTEMPT, DUE, CONSUMER, DEADLINE, HISTORY, REDRIVES)]
    fresh = [(ATTEMPT, b"1"), (DUE, str(now_ms()).encode()), (CONSUMER, d.consumer.encode()),
             (HISTORY, orjson.dumps(history)), (REDRIVES, str(d.redrives + 1).encode())]
    if DEADLINE in h:
        fresh.append((DEADLINE, str(now_ms() + int(deadline_s * 1000)).encode()))
    return kept + fresh


@dataclass
class RedriveProgress:
    matched: int = 0
    redriven: int = 0
    skipped_done: int = 0  # redriven before
    skipped_limit: int = 0  # redriven MAX_REDRIVES times already: a person should look at it

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def redrive(bus: Bus, dlq_topic: str, who: str, *, reason: str | None = None, msgid: str | None = None,
                  places: set[str] | None = None, deadline_s: float = 60.0, force: bool = False,
                  every: int = 50) -> AsyncIterator[RedriveProgress]:
    """Redrive the dead letters of `dlq_topic` that match (reason substring, msgid, exact places;
    none given: all), yielding progress every `every` records and at the end."""
    done = await redriven_places(bus)
    p = RedriveProgress()
    touched: list[str] = []
    started = time.time()

    async def record() -> None:  # what was sent so far, on the audit topic, before saying it is done
        await bus.flush()
        if touched:
            await bus.send(AUDIT_TOPIC, who, OperatorAction(
                action="dlq.redrive", by=who, at_ms=now_ms(), touched=list(touched),
                detail={"dlq_topic": dlq_topic, "reason": reason, "msgid": msgid, "deadline_s": deadline_s,
                        "force": force, "seconds": round(time.time() - started, 3)}), source="/yibao/ops")
            await bus.flush()
            touched.clear()

    async for rec in read_to_end(bus, dlq_topic):
        d = dead_letter_of(dlq_topic, rec)
        if (reason is not None and reason not in d.reason) or (msgid is not None and d.msgid != msgid) or (
                places is not None and d.place not in places):
            continue
        p.matched += 1
        if d.place in done:
            p.skipped_done += 1
            continue
        if d.redrives >= MAX_REDRIVES and not force:
            p.skipped_limit += 1
            continue
        await bus.send_raw(d.original_topic + RETRY_SUFFIX, rec.key, rec.value if rec.value is not None else b"",
                           redriven_headers(rec, d, deadline_s))
        touched.append(d.place)
        p.redriven += 1
        if p.redriven % every == 0:
            await record()
            yield p
    await record()
    yield p
