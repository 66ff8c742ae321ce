"""The operator's view of the platform's topics over REST: topics and consumer-group lag, dead
letters by topic and reason, and redriving them (operators only; every redrive is logged with who
did it and recorded on `ops.audit`). Mounted on the settle service, which hosts `/ops`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

import orjson
from aiokafka import TopicPartition
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from schemas.topics import DLQ_SUFFIX
from services.bus.client import Bus
from services.bus.deadletters import dlq_topics, list_dead_letters, partitions_of, redrive, summary
from services.identity import Caller, allow

log = logging.getLogger("yibao.ops")


class RedriveRequest(BaseModel):
    """Which dead letters to redrive: all of the topic, or those matching every filter given."""

    reason: str | None = Field(None, description="a part of the reason (dlq-error-message)")
    msgid: str | None = Field(None, description="one claim's msgid")
    places: list[str] | None = Field(None, description="exact records: <dlq topic>/<partition>/<offset>")
    deadline_s: float = Field(60.0, gt=0, le=3600, description="the redriven message's new deadline, from now")
    force: bool = Field(False, description="also records already redriven the maximum number of times")


async def topic_overview(bus: Bus) -> list[dict[str, Any]]:
    """Every topic of the platform with its partitions and end offsets."""
    names = sorted(await bus.list_topics())
    consumer = bus.consumer(group_id=None)
    await consumer.start()
    try:
        tps = {n: [TopicPartition(n, p) for p in await partitions_of(consumer, bus.settings.topic(n))] for n in names}
    finally:
        await consumer.stop()
    ends = await bus.end_offsets([tp for group in tps.values() for tp in group])
    return [{"topic": n, "partitions": len(tps[n]), "end_offsets": [ends[tp] for tp in tps[n]],
             "records": sum(ends[tp] for tp in tps[n])} for n in names]


async def group_lag(bus: Bus) -> list[dict[str, Any]]:
    """Every consumer group of the platform with its committed offsets and lag per partition."""
    admin = bus.admin()
    await admin.start()
    try:
        prefix = bus.settings.topic_prefix
        groups = sorted(g for g, *_ in await admin.list_consumer_groups() if g.startswith(prefix))
        committed = {g: await admin.list_consumer_group_offsets(g) for g in groups}
    finally:
        await admin.close()
    logical = {tp: TopicPartition(bus.settings.logical(tp.topic), tp.partition)
               for offsets in committed.values() for tp in offsets}
    ends = await bus.end_offsets(sorted(set(logical.values())))
    out = []
    for g in groups:
        parts = [{"topic": logical[tp].topic, "partition": tp.partition, "committed": meta.offset,
                  "end": ends[logical[tp]], "lag": max(ends[logical[tp]] - meta.offset, 0)}
                 for tp, meta in sorted(committed[g].items())]
        out.append({"group": bus.settings.logical(g), "lag": sum(p["lag"] for p in parts), "partitions": parts})
    return out


def add_ops_routes(app: FastAPI, bus: Bus) -> None:
    async def known_dlq(topic: str) -> None:
        names = await dlq_topics(bus)
        if topic not in names:
            raise HTTPException(404, f"{topic} is not a dead-letter topic here; they are: {', '.join(names)}")

    @app.get("/ops/topics", tags=["ops"])
    async def topics(_: Annotated[Caller, allow("operator")]) -> list[dict[str, Any]]:
        """Every topic with its partitions and end offsets."""
        return await topic_overview(bus)

    @app.get("/ops/groups", tags=["ops"])
    async def groups(_: Annotated[Caller, allow("operator")]) -> list[dict[str, Any]]:
        """Every consumer group with its lag per partition (which hop is behind)."""
        return await group_lag(bus)

    @app.get("/ops/dlq", tags=["ops"])
    async def dlq_summary(_: Annotated[Caller, allow("operator")]) -> list[dict[str, Any]]:
        """Dead letters counted by DLQ topic, original topic, consumer group and reason."""
        return await summary(bus)

    @app.get("/ops/dlq/{topic}", tags=["ops"])
    async def dlq_list(topic: str, _: Annotated[Caller, allow("operator")], reason: str | None = None,
                       msgid: str | None = None, limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        """The dead letters of one DLQ topic (headers only: values may hold personal data)."""
        await known_dlq(topic)
        rows = await list_dead_letters(bus, topic, reason, msgid)
        return [asdict(d) | {"place": d.place} for d in rows[-limit:]]

    @app.post("/ops/dlq/{topic}/redrive", tags=["ops"], response_model=None)
    async def dlq_redrive(topic: str, req: RedriveRequest,
                          who: Annotated[Caller, allow("operator")]) -> StreamingResponse:
        """Redrive matching dead letters to their topic's retry topic for the group that gave up.
        Answers with one JSON line of progress per 50 records and a last line with `done: true`."""
        if not topic.endswith(DLQ_SUFFIX):
            raise HTTPException(422, f"{topic}: name a dead-letter topic (…{DLQ_SUFFIX}), e.g. settle.city.dlq")
        await known_dlq(topic)
        log.warning("%s redrives %s (reason=%r msgid=%r places=%s force=%s)", who, topic, req.reason, req.msgid,
                    len(req.places) if req.places is not None else "any", req.force)

        async def lines() -> AsyncIterator[bytes]:
            last = None
            async for p in redrive(bus, topic, who.subject, reason=req.reason, msgid=req.msgid,
                                   places=set(req.places) if req.places is not None else None,
                                   deadline_s=req.deadline_s, force=req.force):
                last = p
                yield orjson.dumps(p.as_dict()) + b"\n"
            log.warning("%s redrove %s: %s", who, topic, last.as_dict() if last else {})
            yield orjson.dumps((last.as_dict() if last else {}) | {"done": True}) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")
