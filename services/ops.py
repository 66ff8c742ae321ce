"""The operator's view of the platform's topics over REST: topics and consumer-group lag, browsing
messages, replaying a range, dead letters by topic and reason and redriving them (operators only;
every replay and redrive is logged with who did it and recorded on `ops.audit`). Mounted on the
settle service, which hosts `/ops`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from schemas.topics import DLQ_SUFFIX
from services.bus.client import Bus
from services.bus.deadletters import dlq_topics, list_dead_letters, redrive, summary
from services.bus.envelope import CORRELATION, header_dict
from services.bus.reading import partitions_of, read_to_end
from services.bus.replay import GroupBusyError, known_topic, replay, reset_group
from services.identity import Caller, allow
from services.settle.hopreader import POS

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
    every = [tp for group in tps.values() for tp in group]
    ends = await bus.end_offsets(every) if every else {}
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
    wanted = sorted(set(logical.values()))
    ends = await bus.end_offsets(wanted) if wanted else {}
    out = []
    for g in groups:
        parts = [{"topic": logical[tp].topic, "partition": tp.partition, "committed": meta.offset,
                  "end": ends[logical[tp]], "lag": max(ends[logical[tp]] - meta.offset, 0)}
                 for tp, meta in sorted(committed[g].items())]
        out.append({"group": bus.settings.logical(g), "lag": sum(p["lag"] for p in parts), "partitions": parts})
    return out


SECRET_FIELDS = {"certno", "mdtrt_cert_no", "card_no", "card_sn"}  # ID and card numbers: never shown
NAME_FIELDS = {"psn_name", "coner_name"}


def masked(value: Any) -> Any:
    """A decoded value with ID and card numbers masked and names cut to their first character."""
    if isinstance(value, dict):
        return {k: (("*" * 8 + str(v)[-2:]) if k in SECRET_FIELDS and v else
                    (str(v)[:1] + "*" * (len(str(v)) - 1)) if k in NAME_FIELDS and v else masked(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def when(text: str | None, name: str) -> int | None:
    """Epoch ms from epoch ms or an ISO date-time (local time when it has no offset)."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise HTTPException(422, f"{name} {text!r}: give epoch milliseconds or an ISO date-time such as "
                                 "2026-12-05T08:00") from None


def browsed(rec: ConsumerRecord[Any, Any]) -> dict[str, Any]:
    h = header_dict(rec.headers)
    try:
        value: Any = masked(orjson.loads(rec.value)) if rec.value else None
    except orjson.JSONDecodeError:
        value = {"not_json": len(rec.value or b"")}
    return {"partition": rec.partition, "offset": rec.offset, "time_ms": rec.timestamp,
            "key": rec.key.decode("utf-8", "replace") if rec.key else None,
            "headers": h, "value": value}


class ReplayRequest(BaseModel):
    """A range of a topic by record time (since/until: epoch ms or ISO date-time) or by offset."""

    since: str | None = None
    until: str | None = None
    from_offset: int | None = Field(None, ge=0)
    to_offset: int | None = Field(None, ge=0)
    key: str | None = None
    target: str | None = Field(None, description="another registry topic (default: the same)")


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

    async def known_topic_of(topic: str) -> None:
        names = await bus.list_topics()
        if topic not in names:
            raise HTTPException(404, f"{topic} is not a topic here; they are: {', '.join(sorted(names))}")

    @app.get("/ops/topics/{topic}/messages", tags=["ops"])
    async def browse(topic: str, _: Annotated[Caller, allow("operator")], key: str | None = None,
                     ce_type: str | None = None, msgid: str | None = None, since: str | None = None,
                     until: str | None = None, header: str | None = None,
                     limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        """Messages of a topic, filtered by key, ce_type, msgid (ce_correlationid), any header
        (`header=name=value`) and record time (epoch ms or ISO date-time); values decoded, ID and card
        numbers masked, names cut."""
        await known_topic_of(topic)
        name, eq, wanted = (header or "").partition("=")
        if header is not None and (not name or not eq):
            raise HTTPException(422, f"header {header!r}: give name=value, e.g. replayed-from=settle.completed/0/3")
        out: list[dict[str, Any]] = []
        async for rec in read_to_end(bus, topic, when(since, "since"), when(until, "until")):
            h = header_dict(rec.headers)
            if ((key is not None and (rec.key or b"").decode("utf-8", "replace") != key)
                    or (ce_type is not None and h.get("ce_type") != ce_type)
                    or (msgid is not None and h.get(CORRELATION) != msgid)
                    or (header is not None and h.get(name) != wanted)):
                continue
            out.append(browsed(rec))
        return out[-limit:]

    @app.post("/ops/topics/{topic}/replay", tags=["ops"], response_model=None)
    async def replay_range(topic: str, req: ReplayRequest, who: Annotated[Caller, allow("operator")]
                           ) -> StreamingResponse:
        """Copy a range of a topic into itself or another topic with a `replayed-from` header
        (consumers drop the copies by ce_id). JSON lines of progress, the last with `done: true`."""
        await known_topic_of(topic)
        if req.target is not None and not known_topic(req.target):
            raise HTTPException(422, f"target {req.target}: name a registry topic (schemas/topics.py)")
        since, until = when(req.since, "since"), when(req.until, "until")
        log.warning("%s replays %s (%s) into %s", who, topic, req.model_dump(exclude_none=True), req.target or topic)

        async def lines() -> AsyncIterator[bytes]:
            last: dict[str, Any] = {}
            async for p in replay(bus, topic, who.subject, target=req.target, since_ms=since, until_ms=until,
                                  from_offset=req.from_offset, to_offset=req.to_offset, key=req.key):
                last = p.as_dict()
                yield orjson.dumps(last) + b"\n"
            log.warning("%s replayed %s: %d records", who, topic, last.get("copied", 0))
            yield orjson.dumps(last | {"done": True}) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/ops/groups/{group}/reset", tags=["ops"])
    async def reset(group: str, to: str, who: Annotated[Caller, allow("operator")]) -> list[dict[str, Any]]:
        """Move a stopped consumer group's offsets to a time (`to`: epoch ms or ISO date-time): its
        consumers read again from the first record at or after it when they start. 409 while the
        group has members."""
        to_ms = when(to, "to")
        assert to_ms is not None
        log.warning("%s resets group %s to %s", who, group, to)
        try:
            return await reset_group(bus, group, to_ms, who.subject)
        except GroupBusyError as exc:
            raise HTTPException(409, str(exc)) from None

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


HOP_TOPICS = ("settle.city", "settle.province", "settle.national")


async def hop_records(bus: Bus, msgid: str, since_ms: int) -> list[dict[str, Any]]:
    """Every record of one claim on the hop topics and their retry and dead-letter topics, by time."""
    found = []
    for base in HOP_TOPICS:
        for topic in (base, base + ".retry", base + DLQ_SUFFIX):
            async for rec in read_to_end(bus, topic, since_ms=since_ms):
                h = header_dict(rec.headers)
                if h.get(CORRELATION) == msgid:
                    found.append({"topic": topic, "partition": rec.partition, "offset": rec.offset,
                                  "time_ms": rec.timestamp, "key": rec.key.decode("utf-8", "replace") if rec.key
                                  else None, "attempt": int(h.get("ce_attempt", "1") or 1),
                                  "step": h.get(POS),  # the route's step it asks for
                                  "reason": h.get("dlq-error-message") or h.get("yibao-last-error")})
    return sorted(found, key=lambda r: (r["time_ms"], r["offset"]))
