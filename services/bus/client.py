"""The Kafka client of a process: one producer, configured consumers, topic admin, epoch watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import DefaultPartitioner, murmur2
from pydantic import BaseModel

from schemas.topics import all_topic_names, topic_configs
from services.bus.envelope import Headers, encode, make_headers
from services.bus.settings import BusSettings

# a broker asked is down (TimeoutError: the admin waited for a node that never became ready)
UNREACHABLE = (NodeNotReadyError, KafkaConnectionError, RequestTimedOutError, TimeoutError)
ADMIN_TIMEOUT_MS = 10_000  # an admin request's wait for its node (aiokafka's default: 40 s)
log = logging.getLogger("yibao.bus")

# The broker's epoch: the token at offset 0 of this topic. A broker that lost its data (the embedded
# one after a restart) or a cluster put in its place has no such topic, or another token in it.
EPOCH_TOPIC = "yibao.epoch"


class KeyPartitioner:
    """Kafka's default partitioning (murmur2 of the key, positive, modulo the partitions: the Java
    client's choice), with each key's hash kept: the keys are a few thousand regions, hospitals and
    persons, and aiokafka hashes in pure Python on every send."""

    def __init__(self, keep: int = 100_000) -> None:
        self.keep = keep
        self.hashes: dict[bytes, int] = {}
        self.keyless = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self.keyless(key, all_partitions, available))
        h = self.hashes.get(key)
        if h is None:
            if len(self.hashes) >= self.keep:
                self.hashes.clear()
            h = self.hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]


class Bus:
    """Everything a service process does with Kafka goes through here."""

    def __init__(self, settings: BusSettings, bootstrap: str, client_id: str) -> None:
        self.settings, self.bootstrap, self.client_id = settings, bootstrap, client_id
        self.producer: AIOKafkaProducer | None = None
        self._epoch_listeners: list[Callable[[], Awaitable[None]]] = []
        self._epoch_task: asyncio.Task[None] | None = None
        self._epoch_reader: AIOKafkaConsumer | None = None
        self.epoch_token: str | None = None
        self.epochs_seen = 0
        self._stopping = False

    async def start(self) -> None:
        # acks=all everywhere; idempotence (no duplicate or reordered batch when a send is retried)
        # on Kafka only: aiokafka's InitProducerId fails on the embedded broker (broker-notes item 4).
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, client_id=self.client_id, acks="all",
            enable_idempotence=not self.settings.embedded, linger_ms=self.settings.linger_ms,
            max_batch_size=self.settings.max_batch_size, partitioner=KeyPartitioner(),
        )
        await self.producer.start()
        await self.pin_producer_topics()

    async def pin_producer_topics(self) -> None:
        """Keep every registry topic in the producer's metadata.

        aiokafka asks for metadata only of the topics in its own interest set, and a topic it
        learnt from the first full answer is never put in that set. The first send to a new
        topic (a reply topic) then narrows the metadata to that one topic, and sends to the
        others wait for a leader until the request times out (40 s, seen on the embedded broker
        as NotLeaderForPartitionError). Naming all of them keeps every refresh complete.
        """
        assert self.producer is not None
        names = [n for n, _ in all_topic_names()] + [EPOCH_TOPIC]
        await self.producer.client.set_topics([self.settings.topic(n) for n in names])

    async def stop(self) -> None:
        self._stopping = True
        if self._epoch_task:
            # bounded: a cancellation swallowed inside a client call must not hold up the stop
            self._epoch_task.cancel()
            _, pending = await asyncio.wait({self._epoch_task}, timeout=10)
            if pending:
                log.warning("%s: the epoch watch did not stop within 10 s; leaving it", self.client_id)
        await self._close_epoch_reader()
        if self.producer:
            await self.producer.stop()
            self.producer = None

    # --- producing --------------------------------------------------------------------

    async def send_raw(self, topic: str, key: str | bytes | None, value: bytes,
                       headers: Headers) -> asyncio.Future[Any]:
        """Queue a record; await the returned future for the broker's acknowledgement."""
        assert self.producer, "Bus.start() first"
        return await self.producer.send(
            self.settings.topic(topic), value=value, key=key.encode() if isinstance(key, str) else key,
            headers=headers,
        )

    async def send(self, topic: str, key: str | None, event: BaseModel, source: str,
                   **header_args: Any) -> asyncio.Future[Any]:
        return await self.send_raw(topic, key, encode(event), make_headers(event, source, **header_args))

    async def flush(self) -> None:
        if self.producer:
            await self.producer.flush()

    # --- consuming --------------------------------------------------------------------

    def consumer(self, *topics: str, group_id: str | None, slow: bool = False,
                 **overrides: Any) -> AIOKafkaConsumer:
        """A consumer tuned for the broker; `slow` for topics where latency does not matter.

        Topics and the group are logical names; the records it returns carry the names on the
        broker (`BusSettings.logical` maps them back)."""
        s = self.settings
        cfg: dict[str, Any] = dict(
            bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-{group_id or 'solo'}",
            group_id=s.topic(group_id) if group_id else None, enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=s.slow_fetch_max_wait_ms if slow else s.fetch_max_wait_ms,
            fetch_min_bytes=s.fetch_min_bytes, max_poll_records=s.max_poll_records,
            session_timeout_ms=s.session_timeout_ms, heartbeat_interval_ms=s.heartbeat_interval_ms,
            request_timeout_ms=max(40_000, s.session_timeout_ms * 2),
        )
        cfg.update(overrides)
        return AIOKafkaConsumer(*(s.topic(t) for t in topics), **cfg)

    def tp(self, topic: str, partition: int) -> TopicPartition:
        """A partition of a logical topic, as the broker names it."""
        return TopicPartition(self.settings.topic(topic), partition)

    # --- topics -----------------------------------------------------------------------

    def admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin",
                                   request_timeout_ms=ADMIN_TIMEOUT_MS)

    async def ensure_topics(self, extra: Iterable[tuple[str, int]] = (), patience_s: float = 60.0) -> list[str]:
        """Create every registry topic (and .retry/.dlq) that does not exist, with the registry's
        configs (retention, cleanup policy); return the logical names of the new ones. A broker
        that has died but is still listed (the cluster fences it within seconds) may be the one
        asked: asked again, with fresh metadata, for `patience_s`."""
        end, more = asyncio.get_running_loop().time() + patience_s, dict(extra)
        while True:
            try:
                return await self._ensure_topics(more)
            except UNREACHABLE as exc:
                if asyncio.get_running_loop().time() > end:
                    raise
                log.warning("creating topics: %s; asking again", exc)
                await asyncio.sleep(0.5)

    async def _ensure_topics(self, extra: dict[str, int]) -> list[str]:
        s = self.settings
        wanted = dict(all_topic_names(s.partitions)) | {EPOCH_TOPIC: 1} | extra
        admin = self.admin()
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [n for n in wanted if s.topic(n) not in existing]
            if missing:
                # unset: 3 copies where the cluster has 3 brokers or more, else one per broker
                rf = s.replication_factor or min(3, len((await admin.describe_cluster())["brokers"]))
                with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                    await admin.create_topics([NewTopic(s.topic(n), wanted[n], rf, topic_configs=topic_configs(n))
                                               for n in missing])
                await wait_for_leaders(admin, [s.topic(n) for n in missing])
            return missing
        finally:
            await admin.close()

    async def wait_group_coordinator(self, timeout: float = 30.0) -> None:
        """Until the cluster names a group coordinator: Kafka creates its offsets topic on the first
        request for one, and consumers started before then log errors while they wait."""
        admin = self.admin()
        await admin.start()
        try:
            end = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    await admin.find_coordinator(self.client_id)
                    return
                except Exception:
                    if asyncio.get_running_loop().time() > end:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await admin.close()

    async def create_topic(self, name: str, partitions: int = 1) -> None:
        await self.ensure_topics([(name, partitions)])

    async def delete_topic(self, name: str) -> None:
        await self.delete_topics([name])

    async def delete_topics(self, names: Iterable[str]) -> None:
        physical = [self.settings.topic(n) for n in names]
        if not physical:
            return
        admin = self.admin()
        await admin.start()
        try:
            await admin.delete_topics(physical)
        finally:
            await admin.close()

    async def list_topics(self) -> set[str]:
        """The logical names of this platform's topics (those under its prefix)."""
        admin = self.admin()
        await admin.start()
        try:
            prefix = self.settings.topic_prefix
            return {self.settings.logical(t) for t in await admin.list_topics() if t.startswith(prefix)}
        finally:
            await admin.close()

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermarks of partitions of logical topics, keyed as asked.

        On the embedded broker ListOffsets(LATEST) answers base offset + 1 of the last record batch
        (broker-notes item 1), so it is only a lower bound there: the true high watermark comes from
        a Fetch response at that offset - 1 with a non-zero max wait.
        """
        probe = self.consumer(group_id=None, fetch_max_wait_ms=100)
        await probe.start()
        try:
            physical = {tp: self.tp(tp.topic, tp.partition) for tp in tps}
            probe.assign(list(physical.values()))
            listed: dict[TopicPartition, int] = await probe.end_offsets(list(physical.values()))
            out: dict[TopicPartition, int] = {}
            for tp, ptp in physical.items():
                out[tp] = listed[ptp]
                if self.settings.embedded:
                    probe.seek(ptp, max(listed[ptp] - 1, 0))
                    await probe.getmany(ptp, timeout_ms=500, max_records=1)
                    hw = probe.highwater(ptp)
                    out[tp] = hw if hw is not None else listed[ptp]
            return out
        finally:
            await probe.stop()

    # --- broker epochs (broker-notes item 8) -----------------------------------------------

    def on_new_epoch(self, listener: Callable[[], Awaitable[None]]) -> None:
        self._epoch_listeners.append(listener)

    def watch_epoch(self) -> None:
        self._epoch_task = asyncio.create_task(self._watch_epoch(), name="epoch-watch")

    async def _watch_epoch(self) -> None:
        """Every process watches on its own: whichever notices first re-creates the topics and
        writes a new token; every other one sees the token change and recovers too."""
        while not self._stopping:
            await asyncio.sleep(self.settings.epoch_check_s)
            try:
                if self.settings.topic(EPOCH_TOPIC) not in await self._topics_now():
                    await self.handle_new_epoch()
                    continue
                token = await self._claim_epoch()
                if self.epoch_token is None:
                    self.epoch_token = token
                elif token != self.epoch_token:
                    await self.handle_new_epoch()
            except Exception:
                log.warning("broker at %s not answering", self.bootstrap, exc_info=True)
                await self._close_epoch_reader()

    async def _read_epoch_token(self) -> str | None:
        if self._epoch_reader is None:
            self._epoch_reader = self.consumer(group_id=None, fetch_max_wait_ms=100)
            await asyncio.wait_for(self._epoch_reader.start(), 15)
            self._epoch_reader.assign([self.tp(EPOCH_TOPIC, 0)])
        tp = self.tp(EPOCH_TOPIC, 0)
        self._epoch_reader.seek(tp, 0)
        got = await asyncio.wait_for(self._epoch_reader.getmany(tp, timeout_ms=500, max_records=1), 10)
        records = got.get(tp) or []
        return bytes(records[0].value).decode() if records and records[0].value else None

    async def _claim_epoch(self) -> str:
        """The epoch's token; the first process to find none writes one (the record at offset 0 wins)."""
        token = await self._read_epoch_token()
        for _ in range(20):
            if token is not None:
                return token
            await (await self.send_raw(EPOCH_TOPIC, None, uuid.uuid4().hex.encode(), []))
            token = await self._read_epoch_token()
        raise RuntimeError("the epoch topic keeps no token")

    async def _close_epoch_reader(self) -> None:
        if self._epoch_reader is not None:
            reader, self._epoch_reader = self._epoch_reader, None
            with contextlib.suppress(Exception):  # bounded: a stop must never hold up the process's own stop
                await asyncio.wait_for(reader.stop(), 5)

    async def _topics_now(self) -> set[str]:
        # Over the producer's open connection: a new admin client every check meant a connection,
        # a handshake and a full metadata answer from the broker every 2 s in every process.
        if self.producer is None:
            return {self.settings.topic(t) for t in await self.list_topics()}
        metadata = await self.producer.client.fetch_all_metadata()
        return set(metadata.topics())

    async def handle_new_epoch(self) -> None:
        self.epochs_seen += 1
        log.warning("broker lost its data (new epoch %d): re-creating topics, restarting clients",
                    self.epochs_seen)
        self.epoch_token = None  # adopted at the next check if claiming it below fails
        await self._close_epoch_reader()
        await self.ensure_topics()
        if self.producer is not None:
            await self.pin_producer_topics()
        for listener in self._epoch_listeners:
            try:
                await listener()
            except Exception:
                log.exception("epoch listener failed")
        self.epoch_token = await self._claim_epoch()


async def wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str], timeout: float = 30.0) -> None:
    """Until every partition of the new topics has a leader: the first sends and fetches after a
    creation would otherwise be refused (NotLeaderForPartition) and retried with warnings."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        described = await admin.describe_topics(topics)
        if all(t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
               for t in described):
            return
        await asyncio.sleep(0.1)
    log.warning("new topics still without leaders after %.0f s", timeout)


def instance_id() -> str:
    return uuid.uuid4().hex[:12]
