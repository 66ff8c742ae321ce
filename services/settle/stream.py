"""A hospital's own results as Server-Sent Events, read from the settle.hospital topic.

Results are keyed by fixmedins_code, so all of one hospital's results sit in one partition. Each
stream has its own consumer with a manual assignment of that partition (no consumer group, no
join wait) and skips other hospitals' records. Every event carries `id: <partition>:<offset>`;
a client that reconnects with `Last-Event-ID` resumes right after it, so nothing is missed while
the records are retained. Without it, the stream starts with the results arriving from now on.
Every copy of a result carries the same ce_id (`schemas.common.result_ce_id`): a copy re-published
after a crash is not sent again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator

import orjson
from aiokafka.partitioner import DefaultPartitioner

from services.bus.client import Bus
from services.credentials import reveal_names

log = logging.getLogger("yibao.settle.stream")
TOPIC = "settle.hospital"
KEEPALIVE_MS = 15_000
SEEN_IDS = 10_000  # results remembered per stream to drop repeats


async def partition_of(bus: Bus, fixmedins_code: str) -> int:
    """The partition the producer's default partitioner puts this hospital's results in, over the
    partitions the topic has on this broker (the registry's count, or the deployment's)."""
    assert bus.producer, "Bus.start() first"
    parts = sorted(await bus.producer.partitions_for(bus.settings.topic(TOPIC)))
    return int(DefaultPartitioner()(fixmedins_code.encode(), parts, parts))


def resume_offset(last_event_id: str | None, partition: int) -> int | None:
    """The offset after `<partition>:<offset>`, or None to start at the end."""
    if not last_event_id:
        return None
    p, _, o = last_event_id.partition(":")
    if not (p.isdigit() and o.isdigit()) or int(p) != partition:
        raise ValueError(f"Last-Event-ID {last_event_id!r}: expected '{partition}:<offset>' as sent by this stream")
    return int(o) + 1


def opened(value: bytes, names_key: str | None) -> bytes:
    try:
        result = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    if isinstance(result, dict) and isinstance(result.get("outcome"), dict):
        result["outcome"] = reveal_names(result["outcome"], names_key)
    return orjson.dumps(result)


async def results(bus: Bus, fixmedins_code: str, last_event_id: str | None,
                  names_key: str | None = None) -> AsyncIterator[bytes]:
    """The hospital's results from settle.hospital, names opened (they travel sealed)."""
    partition = await partition_of(bus, fixmedins_code)
    start = resume_offset(last_event_id, partition)
    tp = bus.tp(TOPIC, partition)
    consumer = bus.consumer(group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        if start is None:
            await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, start)
        yield f": results of {fixmedins_code}; reconnect with Last-Event-ID to resume\n\n".encode()
        key = fixmedins_code.encode()
        sent: OrderedDict[bytes, None] = OrderedDict()  # ce_ids of the results this stream sent
        while True:
            batch = await consumer.getmany(tp, timeout_ms=KEEPALIVE_MS)
            records = batch.get(tp, [])
            if not records:
                yield b": keepalive\n\n"
            for rec in records:
                if rec.key != key or rec.value is None:
                    continue
                ce_id = dict(rec.headers or ()).get("ce_id", b"")
                if ce_id in sent:
                    continue  # a copy of a result already sent (re-published after a crash)
                sent[ce_id] = None
                if len(sent) > SEEN_IDS:
                    sent.popitem(last=False)
                yield b"id: %d:%d\nevent: result\ndata: %s\n\n" % (partition, rec.offset, opened(rec.value, names_key))
    finally:
        await consumer.stop()
        log.info("results stream of %s closed", fixmedins_code)
