"""Replaying a range of a topic, by offset or by record time, into the same topic or another one.

Each copy keeps the key, value and headers (its `ce_id` too, so every consumer that drops a
repeat by it drops the copy) and gains `replayed-from: <topic>/<partition>/<offset>`. A replay is
recorded on `ops.audit` with who did it and the ranges it copied.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from schemas.events import OperatorAction
from schemas.topics import DLQ_SUFFIX, RETRY_SUFFIX, TOPICS
from services.bus.client import Bus
from services.bus.deadletters import AUDIT_TOPIC
from services.bus.envelope import now_ms
from services.bus.reading import read_to_end

REPLAYED_FROM = "replayed-from"


@dataclass
class ReplayProgress:
    copied: int = 0
    ranges: dict[int, list[int]] = field(default_factory=dict)  # partition → [first, last] offset copied

    def as_dict(self) -> dict[str, object]:
        return {"copied": self.copied, "ranges": {str(k): v for k, v in self.ranges.items()}}


def known_topic(name: str) -> bool:
    return name.removesuffix(RETRY_SUFFIX).removesuffix(DLQ_SUFFIX) in TOPICS


async def replay(bus: Bus, topic: str, who: str, *, target: str | None = None, since_ms: int | None = None,
                 until_ms: int | None = None, from_offset: int | None = None, to_offset: int | None = None,
                 key: str | None = None, every: int = 500) -> AsyncIterator[ReplayProgress]:
    """Copy the range (and key, if given) of `topic` to `target` (default: itself), yielding
    progress every `every` records and once at the end."""
    target = target or topic
    p = ReplayProgress()
    started = time.time()
    async for rec in read_to_end(bus, topic, since_ms, until_ms, from_offset, to_offset):
        if key is not None and (rec.key or b"").decode("utf-8", "replace") != key:
            continue
        headers = [(k, v) for k, v in (rec.headers or ()) if k != REPLAYED_FROM]
        headers.append((REPLAYED_FROM, f"{topic}/{rec.partition}/{rec.offset}".encode()))
        await bus.send_raw(target, rec.key, rec.value if rec.value is not None else b"", headers)
        first_last = p.ranges.setdefault(rec.partition, [rec.offset, rec.offset])
        first_last[1] = rec.offset
        p.copied += 1
        if p.copied % every == 0:
            yield p
    await bus.flush()
    if p.copied:
        await bus.send(AUDIT_TOPIC, who, OperatorAction(
            action="topic.replay", by=who, at_ms=now_ms(),
            touched=[f"{topic}/{part}/{a}-{b}" for part, (a, b) in sorted(p.ranges.items())],
            detail={"target": target, "since_ms": since_ms, "until_ms": until_ms, "from_offset": from_offset,
                    "to_offset": to_offset, "key": key, "copied": p.copied,
                    "seconds": round(time.time() - started, 3)}), source="/yibao/ops")
        await bus.flush()
    yield p


class GroupBusyError(Exception):
    """The consumer group has members: its offsets can be moved only while it is stopped."""


async def reset_group(bus: Bus, group: str, to_ms: int, who: str) -> list[dict[str, object]]:
    """Move a stopped consumer group's committed offsets to the first record at or after `to_ms`
    on each partition it has committed (the end where there is none); recorded on ops.audit."""
    physical = bus.settings.topic(group)
    admin = bus.admin()
    await admin.start()
    try:
        for response in await admin.describe_consumer_groups([physical]):
            for g in response.groups:  # (error_code, group_id, state, protocol_type, protocol, members, …)
                if g[2] not in ("Empty", "Dead") or g[5]:
                    raise GroupBusyError(f"group {group} is {g[2]} with {len(g[5])} member(s): stop its consumers "
                                         "(the service or worker that runs it), then reset it")
        committed = await admin.list_consumer_group_offsets(physical)
    finally:
        await admin.close()
    if not committed:
        raise GroupBusyError(f"group {group} has no committed offsets here: nothing to reset")
    tps = sorted(committed)
    consumer = bus.consumer(group_id=group)
    await consumer.start()
    try:
        consumer.assign(tps)
        found = await consumer.offsets_for_times({tp: to_ms for tp in tps})
        ends = await consumer.end_offsets(tps)
        new = {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in tps}
        await consumer.commit(new)
    finally:
        await consumer.stop()
    moved = [{"topic": bus.settings.logical(tp.topic), "partition": tp.partition, "from": committed[tp].offset,
              "to": new[tp]} for tp in tps]
    await bus.send(AUDIT_TOPIC, who, OperatorAction(
        action="group.reset", by=who, at_ms=now_ms(),
        touched=[f"{m['topic']}/{m['partition']}/{m['from']}->{m['to']}" for m in moved],
        detail={"group": group, "to_ms": to_ms}), source="/yibao/ops")
    await bus.flush()
    return moved
