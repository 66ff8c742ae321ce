"""Reading a topic as it is now, without a consumer group: every record, or a range by offset or
by record time (Kafka's offsets_for_times). For operators' tools (dead letters, browse, replay)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from services.bus.client import Bus


async def partitions_of(consumer: AIOKafkaConsumer, physical: str) -> list[int]:
    """The partitions of a topic by its broker name (none if it does not exist), from fresh metadata."""
    await consumer._client.force_metadata_update()  # a group-less consumer has no metadata of its own yet
    return sorted(consumer.partitions_for_topic(physical) or ())


async def read_to_end(bus: Bus, topic: str, since_ms: int | None = None, until_ms: int | None = None,
                      from_offset: int | None = None, to_offset: int | None = None
                      ) -> AsyncIterator[ConsumerRecord[Any, Any]]:
    """The records of a logical topic up to its end offsets as they are now, partition by partition:
    all of them, or those from `since_ms` (record time, via offsets_for_times) or `from_offset`,
    and before `until_ms` or `to_offset` (per partition)."""
    consumer: AIOKafkaConsumer = bus.consumer(group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        tps = [bus.tp(topic, p) for p in await partitions_of(consumer, bus.settings.topic(topic))]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            starts = {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in tps}
        if until_ms is not None:
            found = await consumer.offsets_for_times({tp: until_ms for tp in tps})
            ends = {tp: min(ends[tp], found[tp].offset) if found.get(tp) else ends[tp] for tp in tps}
        for tp in tps:
            start = max(starts[tp], from_offset or 0)
            end = min(ends[tp], to_offset) if to_offset is not None else ends[tp]
            if start >= end:
                continue
            consumer.seek(tp, start)
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for rec in batch.get(tp, []):
                    if rec.offset < end:
                        yield rec
    finally:
        await consumer.stop()
