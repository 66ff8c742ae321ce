"""The consumer loop every service uses: validate, handle, retry without blocking, dead-letter.

A handler gets a validated `Incoming`. If it raises, the message goes to `<topic>.retry`
with the next attempt number and a due time, and the loop moves on; the retry consumer
handles it again when due. After the attempt budget or the message's deadline, it goes to
`<topic>.dlq` with the reason in headers (key and value unchanged) and `on_give_up` is told.
Bad input (not JSON, wrong schema, unknown type) goes to `.dlq` at once. Nothing crashes
the loop, and offsets are committed only for messages fully dealt with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CorruptRecordException
from prometheus_client import Counter, Histogram

from schemas.topics import DLQ_SUFFIX, RETRY_SUFFIX
from services import tracing
from services.bus.client import Bus
from services.bus.envelope import (
    ATTEMPT,
    CONSUMER,
    DUE,
    BadMessageError,
    Headers,
    Incoming,
    Readable,
    decode,
    header_dict,
    header_list,
    now_ms,
    replace_header,
)
from services.metrics import HANDLE, LAG, RECORDS

GIVE_UP = "yibao-give-up"  # on a retry record: its handling was given up; telling the sender is due
GIVE_UP_TRIES = "yibao-give-up-tries"
GIVE_UP_ATTEMPTS = 120  # at the backoff ceiling (5 s) about ten minutes of a database outage
log = logging.getLogger("yibao.bus.worker")

Handler = Callable[[Incoming], Awaitable[None]]
GiveUp = Callable[[Incoming, str], Awaitable[None]]
UNPARSABLE = (UnicodeDecodeError, CorruptRecordException)  # raised by the client's record parser
CAREFUL_RECORDS = 1000  # read one at a time per partition while looking for an unparsable record
YIELD_AFTER_S = 0.004  # the longest a batch holds the loop; yielding after every message fetched too often
BatchFn = Callable[[list[Incoming]], Awaitable[list[BaseException | None]]]


class BatchHandler:
    """A handler that takes every valid message of one fetched batch at once (one DB transaction
    for many records) and answers, per message, None (done) or the exception it raised."""

    def __init__(self, fn: BatchFn) -> None:
        self.fn = fn

    async def __call__(self, msg: Incoming) -> None:
        (err,) = await self.fn([msg])
        if err is not None:
            raise err


class PermanentError(Exception):
    """The handler knows retrying cannot help: dead-letter at once, with a reason code."""

    def __init__(self, message: str, code: str = "REJECTED") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DeadLetter:
    """What was dead-lettered and why, for services that tell the sender (rejection events)."""

    topic: str
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]
    value: bytes
    code: str
    reason: str


OnDeadLetter = Callable[[DeadLetter], Awaitable[None]]


class Committer:
    """Commits a consumer's offsets behind its loop: once what the handled messages sent is
    acknowledged (a producer flush), never before. The loop fetches the next batch meanwhile
    instead of waiting a flush and a commit round trip per batch."""

    def __init__(self, bus: Bus, consumer: AIOKafkaConsumer, group: str) -> None:
        self.bus, self.consumer, self.group = bus, consumer, group
        self._pending: dict[TopicPartition, int] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"{group}-commit")

    def add(self, done: dict[TopicPartition, int]) -> None:
        if done:
            self._pending.update(done)
            self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self._commit()

    async def _commit(self) -> None:
        offsets, self._pending = self._pending, {}
        if not offsets:
            return
        try:
            await self.bus.flush()
            await self.consumer.commit(offsets)
        except Exception:
            log.warning("%s: commit failed; messages may be handled again", self.group, exc_info=True)

    async def close(self) -> None:
        """Let a commit under way finish, then commit what is left (when the loop ends)."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._task, timeout=10)
        except BaseException:  # cancelled or stuck: what stays uncommitted is handled again
            self._task.cancel()
            raise
        await self._commit()


def _lag(c: AIOKafkaConsumer) -> int:
    """Records behind the high watermark its last fetches saw, over its partitions (no request)."""
    lag = 0
    for tp in c.assignment():
        hw = c.highwater(tp)
        try:  # aiokafka keeps the position here; `position()` would wait for one that is unknown
            state = c._subscription.subscription.assignment.state_value(tp)
        except AttributeError:
            continue
        if hw is not None and state is not None and state.has_valid_position:
            lag += max(0, hw - state.position)
    return lag


class Worker:
    """One consumer group over some topics, plus its retry consumer."""

    def __init__(self, bus: Bus, group: str, handlers: Mapping[str, Handler],
                 on_give_up: GiveUp | None = None, on_dead_letter: OnDeadLetter | None = None,
                 slow: bool = False, read_as: Mapping[str, Readable] | None = None) -> None:
        self.bus, self.group, self.handlers, self.on_give_up = bus, group, handlers, on_give_up
        self.on_dead_letter = on_dead_letter
        self.read_as = dict(read_as or {})  # topic → a lighter view of its type (a relay's view of a hop)
        self.slow = slow  # throughput over latency (bulk intake): a longer fetch wait, less broker load
        self._consumers: list[AIOKafkaConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self.stats = {"handled": 0, "retried": 0, "dead_lettered": 0, "loop_restarts": 0}
        self._meter_cache: dict[str, tuple[Histogram, Counter]] = {}
        self.state: dict[str, str] = {}  # consumer ("main", "retry") → running, restarting, stopped
        bus.on_new_epoch(self.restart)

    async def start(self) -> None:
        self._running = True
        bulk = {"fetch_min_bytes": self.bus.settings.bulk_fetch_min_bytes} if self.slow else {}
        main = self.bus.consumer(*self.handlers, group_id=self.group, slow=self.slow, **bulk)
        retry = self.bus.consumer(*(t + RETRY_SUFFIX for t in self.handlers),
                                  group_id=self.group + ".retry", slow=True)
        await asyncio.gather(main.start(), retry.start())
        self._consumers = [main, retry]
        self._tasks = [
            asyncio.create_task(self._supervise(main, retry=False), name=f"{self.group}-main"),
            asyncio.create_task(self._supervise(retry, retry=True), name=f"{self.group}-retry"),
        ]

    async def wait_assigned(self, timeout: float = 30.0) -> None:
        """Until both consumers have joined their group and hold partitions."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not all(c.assignment() for c in self._consumers):
            if loop.time() > end:
                raise TimeoutError(f"{self.group}: no partitions assigned within {timeout}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Finish the batch in hand, commit what was done, leave the group."""
        self._running = False
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.stop() for c in self._consumers), return_exceptions=True)
        self._tasks, self._consumers = [], []

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def health(self) -> list[dict[str, Any]]:
        """Each consumer's state and lag (from the high watermarks of its last fetches)."""
        out = []
        for name, c in zip(("main", "retry"), self._consumers, strict=False):
            out.append({"group": self.group + ("" if name == "main" else ".retry"),
                        "state": self.state.get(name, "stopped"), "lag": _lag(c)} | self.stats)
        return out

    # --- the loop ---------------------------------------------------------------------

    async def _supervise(self, consumer: AIOKafkaConsumer, retry: bool) -> None:
        """Run the loop; if it dies of anything, log it, go back to the last committed offsets
        (what was handled since is handled again: consumers are idempotent) and start it again
        after a backoff that doubles up to 30 s."""
        name, backoff = ("retry" if retry else "main"), 0.5
        while self._running:
            self.state[name] = "running"
            try:
                await self._loop(consumer, retry)
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                self.state[name] = "restarting"
                self.stats["loop_restarts"] += 1
                log.exception("%s: the %s consumer loop died; restarting it in %.1f s", self.group, name, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                await self._rewind(consumer)
        self.state[name] = "stopped"

    async def _rewind(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            try:
                committed = await consumer.committed(tp)
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
            except Exception:
                log.warning("%s: could not rewind %s", self.group, tp, exc_info=True)

    async def _loop(self, consumer: AIOKafkaConsumer, retry: bool) -> None:
        offsets = Committer(self.bus, consumer, self.group)
        handled_to: dict[TopicPartition, int] = {}  # the next offset to handle, per partition, by our count
        loop = asyncio.get_running_loop()
        lag_due = 0.0
        try:
            while self._running:
                try:
                    batches = await consumer.getmany(timeout_ms=200)
                except UNPARSABLE as exc:
                    await self._step_over_unparsable(consumer, retry, handled_to, offsets, exc)
                    continue
                except Exception:
                    log.warning("%s: fetch failed; retrying", self.group, exc_info=True)
                    await asyncio.sleep(0.5)
                    continue
                done: dict[TopicPartition, int] = {}
                yielded = loop.time()
                for tp, records in batches.items():
                    topic = self.bus.settings.logical(tp.topic)
                    if not retry and isinstance(self.handlers.get(topic), BatchHandler):
                        await self._process_batch(topic, records)
                        done[tp] = records[-1].offset + 1
                        continue
                    for rec in records:
                        if retry and not await self._wait_due(rec):
                            break  # stopping: leave it uncommitted for the next owner
                        await self._process(rec, retry)
                        done[tp] = rec.offset + 1
                        if loop.time() - yielded > YIELD_AFTER_S:
                            # a long batch of synchronous (SQLite) work: let the outbox relay and
                            # the producer send what the first messages produced meanwhile
                            await asyncio.sleep(0)
                            yielded = loop.time()
                    else:
                        continue
                    break
                handled_to.update(done)
                offsets.add(done)
                if loop.time() > lag_due:  # the lag gauge, at most once a second
                    LAG.labels(self.group + (".retry" if retry else "")).set(_lag(consumer))
                    lag_due = loop.time() + 1.0
        finally:
            await offsets.close()

    async def _step_over_unparsable(self, consumer: AIOKafkaConsumer, retry: bool,
                                    handled_to: dict[TopicPartition, int], offsets: Committer,
                                    exc: BaseException) -> None:
        """The client could not parse a fetched record (a header name that is not UTF-8, a corrupt
        batch). Its error names neither partition nor offset, and the fetch it broke drops the
        records parsed before it. So: every partition goes back to what was handled, then each is
        read one record at a time until the record that fails is found; it is dead-lettered by its
        place (topic, partition, offset: still on the topic for retention) and stepped over. The
        client parses a producer batch in order, so the records after it in the same batch fail
        the same way and are dead-lettered one by one too; the next batch is read as usual."""
        log.warning("%s: a fetched record cannot be parsed (%s); finding it", self.group, exc)
        for tp in consumer.assignment():
            start = handled_to.get(tp)
            if start is None:
                start = await consumer.committed(tp)
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
        for tp in sorted(consumer.assignment()):
            for _ in range(CAREFUL_RECORDS):
                if not self._running:
                    return
                try:
                    got = (await consumer.getmany(tp, timeout_ms=200, max_records=1)).get(tp, [])
                except UNPARSABLE as err:
                    at = await consumer.position(tp)  # parsed records moved it; the failing one did not
                    await self._dead_letter_unparsable(tp, at, err)
                    consumer.seek(tp, at + 1)
                    handled_to[tp] = at + 1
                    offsets.add({tp: at + 1})
                    break
                if not got:
                    break
                rec = got[0]
                if retry and not await self._wait_due(rec):
                    return
                await self._process(rec, retry)
                handled_to[tp] = rec.offset + 1
                offsets.add({tp: rec.offset + 1})

    async def _dead_letter_unparsable(self, tp: TopicPartition, offset: int, err: BaseException) -> None:
        topic = self.bus.settings.logical(tp.topic)
        reason = (f"the record cannot be parsed by the Kafka client ({type(err).__name__}: {err}), or follows "
                  f"one that cannot in its producer batch; it stays on {tp.topic} partition {tp.partition} "
                  f"offset {offset} until retention: read it there with a byte-level tool (kcat -o {offset})")
        hs = self._dlq_headers(topic, tp.partition, offset, err, reason, attempts=1)
        log.warning("%s: dead-lettered %s@%d/%d: %s", self.group, topic, tp.partition, offset, reason)
        await self.bus.send_raw(topic.removesuffix(RETRY_SUFFIX) + DLQ_SUFFIX, None, b"",
                                [(k, v.encode()) for k, v in hs.items()])
        self.stats["dead_lettered"] += 1
        RECORDS.labels(self.group, topic, "dead_lettered").inc()

    def _dlq_headers(self, topic: str, partition: int, offset: int, exc: BaseException, reason: str,
                     attempts: int) -> dict[str, str]:
        """Why and from where, in the `dlq-*` headers (as Kafka Connect names them)."""
        return {
            "dlq-error-class": type(exc).__name__,
            "dlq-error-message": reason[:1000],
            "dlq-original-topic": topic,
            "dlq-original-partition": str(partition),
            "dlq-original-offset": str(offset),
            "dlq-attempts": str(attempts),
            "dlq-consumer": self.group,
        }

    async def _wait_due(self, rec: ConsumerRecord[Any, Any]) -> bool:
        hd = header_dict(rec.headers)
        if hd.get(CONSUMER) != self.group:
            return True  # another group's retry: _process skips it
        due = hd.get(DUE, "0")
        due_ms = int(due) if due.isascii() and due.isdigit() else 0  # unreadable: due now (decode judges it)
        while (wait_ms := due_ms - now_ms()) > 0:
            if not self._running:
                return False
            await asyncio.sleep(min(wait_ms, 100) / 1000)
        return True

    async def _process(self, rec: ConsumerRecord[Any, Any], retry: bool) -> None:
        topic = self.bus.settings.logical(rec.topic).removesuffix(RETRY_SUFFIX)
        if retry and header_dict(rec.headers).get(CONSUMER) != self.group:
            return
        msg = await self._decode_or_dead_letter(rec, topic)
        if msg is None or await self._giving_up(rec, topic, msg) or await self._expired(rec, topic, msg):
            return
        t0 = time.perf_counter()
        try:
            with tracing.handling(self.group, topic, msg.headers, rec.partition, rec.offset):
                await self.handlers[topic](msg)
            self.stats["handled"] += 1
            timing, handled = self._meters(topic)
            timing.observe(time.perf_counter() - t0)
            handled.inc()
        except PermanentError as exc:
            await self._give_up(rec, topic, msg, str(exc), exc)
        except Exception as exc:
            await self._retry_or_give_up(rec, topic, msg, exc)

    async def _process_batch(self, topic: str, records: list[ConsumerRecord[Any, Any]]) -> None:
        handler = self.handlers[topic]
        assert isinstance(handler, BatchHandler)
        valid: list[tuple[ConsumerRecord[Any, Any], Incoming]] = []
        for rec in records:
            msg = await self._decode_or_dead_letter(rec, topic)
            if msg is not None and not (await self._giving_up(rec, topic, msg) or await self._expired(rec, topic, msg)):
                valid.append((rec, msg))
        if not valid:
            return
        t0 = time.perf_counter()
        try:
            with tracing.handling_many(self.group, topic, valid):
                errors = await handler.fn([m for _, m in valid])
        except Exception as exc:  # the whole batch failed: each message retries on its own
            errors = [exc] * len(valid)
        share = (time.perf_counter() - t0) / len(valid)
        timing, handled = self._meters(topic)
        for (rec, msg), err in zip(valid, errors, strict=True):
            if err is None:
                self.stats["handled"] += 1
                timing.observe(share)
                handled.inc()
            elif isinstance(err, PermanentError):
                await self._give_up(rec, topic, msg, str(err), err)
            else:
                await self._retry_or_give_up(rec, topic, msg, err if isinstance(err, Exception) else
                                             RuntimeError(str(err)))

    def _meters(self, topic: str) -> tuple[Histogram, Counter]:
        """The time histogram and the handled counter of a topic, looked up once (labels() takes a
        lock and a dict lookup)."""
        meters = self._meter_cache.get(topic)
        if meters is None:
            meters = self._meter_cache[topic] = (HANDLE.labels(self.group, topic),
                                                 RECORDS.labels(self.group, topic, "handled"))
        return meters

    async def _decode_or_dead_letter(self, rec: ConsumerRecord[Any, Any], topic: str) -> Incoming | None:
        """The validated message, or None once a record that cannot be read (value, key or any
        header) is on the dead-letter topic with the reason."""
        try:
            return decode(topic, rec.key, rec.value, rec.headers, rec.partition, rec.offset, self.read_as.get(topic))
        except BadMessageError as exc:
            await self._dead_letter(rec, topic, header_list(rec.headers), exc, attempts=1)
        except Exception as exc:  # a decoder bug must not stop the consumer either
            log.exception("%s: %s@%d/%d could not be read", self.group, topic, rec.partition, rec.offset)
            await self._dead_letter(rec, topic, header_list(rec.headers), exc, attempts=1,
                                    reason=f"unreadable: {exc!r}"[:500])
        return None

    async def _expired(self, rec: ConsumerRecord[Any, Any], topic: str, msg: Incoming) -> bool:
        """Its deadline passed: given up (dead-lettered, the sender told) instead of handled."""
        if msg.deadline_ms is None or now_ms() <= msg.deadline_ms:
            return False
        await self._give_up(rec, topic, msg, "deadline passed before this hop could act", TimeoutError("deadline passed"))
        return True

    async def _retry_or_give_up(self, rec: ConsumerRecord[Any, Any], topic: str, msg: Incoming,
                                exc: Exception) -> None:
        s = self.bus.settings
        if msg.attempt >= s.retry_attempts:
            await self._give_up(rec, topic, msg, f"still failing after {msg.attempt} attempts: {exc}", exc)
            return
        delay = min(s.retry_backoff_ms * 2 ** (msg.attempt - 1), s.retry_backoff_max_ms)
        due = now_ms() + delay
        if msg.deadline_ms is not None and due > msg.deadline_ms:
            await self._give_up(rec, topic, msg, f"deadline passes before the next attempt: {exc}", exc)
            return
        hs = replace_header(msg.raw_headers, ATTEMPT, str(msg.attempt + 1))
        hs = replace_header(hs, "yibao-last-error", f"{type(exc).__name__}: {exc}"[:500])
        log.info("%s: %s attempt %d failed (%s); retry in %d ms [claim %s]", self.group, topic,
                 msg.attempt, exc, delay, msg.correlation_id or msg.key)
        await self._requeue(rec, topic, hs, delay)
        self.stats["retried"] += 1
        RECORDS.labels(self.group, topic, "retried").inc()

    async def _requeue(self, rec: ConsumerRecord[Any, Any], topic: str, headers: Headers, delay_ms: int) -> None:
        """The record again on `<topic>.retry`, due after `delay_ms`, for this consumer group only."""
        hs = replace_header(headers, DUE, str(now_ms() + delay_ms))
        hs = replace_header(hs, CONSUMER, self.group)
        await self.bus.send_raw(topic + RETRY_SUFFIX, rec.key, rec.value, hs)

    async def _giving_up(self, rec: ConsumerRecord[Any, Any], topic: str, msg: Incoming) -> bool:
        """A message back from the retry topic because telling its sender failed: tell again."""
        reason = msg.headers.get(GIVE_UP)
        if reason is None:
            return False
        await self._give_up(rec, topic, msg, reason, RuntimeError(reason))
        return True

    async def _give_up(self, rec: ConsumerRecord[Any, Any], topic: str, msg: Incoming, reason: str,
                       exc: BaseException) -> None:
        """Dead-letter the message once its sender was told (on_give_up). Telling is part of giving
        up: when it fails (the database down), the message goes back to the retry topic and the
        telling is tried again, with backoff, for up to GIVE_UP_ATTEMPTS times."""
        if self.on_give_up:
            try:
                await self.on_give_up(msg, reason)
            except Exception as err:
                tries = int(msg.headers.get(GIVE_UP_TRIES, "0") or 0) + 1
                if tries < GIVE_UP_ATTEMPTS:
                    log.warning("%s: telling the sender of %s failed (%s); again in a while (%d) [claim %s]",
                                self.group, topic, err, tries, msg.correlation_id)
                    s = self.bus.settings
                    hs = replace_header(msg.raw_headers, GIVE_UP, reason)
                    hs = replace_header(hs, GIVE_UP_TRIES, str(tries))
                    await self._requeue(rec, topic, hs, min(s.retry_backoff_ms * 2 ** tries, s.retry_backoff_max_ms))
                    return
                log.exception("%s: on_give_up failed %d times for %s; dead-lettered untold", self.group, tries,
                              msg.correlation_id)
        await self._dead_letter(rec, topic, msg.raw_headers, exc, attempts=msg.attempt, reason=reason)

    async def _dead_letter(self, rec: ConsumerRecord[Any, Any], topic: str, headers: Headers,
                           exc: BaseException, attempts: int, reason: str | None = None) -> None:
        """Original key and value bytes, unchanged; the reason in headers, as Kafka Connect does."""
        extra = self._dlq_headers(topic, rec.partition, rec.offset, exc, reason or str(exc), attempts)
        hs = list(headers)
        for k, v in extra.items():
            hs = replace_header(hs, k, v)
        log.warning("%s: dead-lettered %s@%d/%d: %s", self.group, topic, rec.partition, rec.offset,
                    extra["dlq-error-message"])
        value = rec.value if rec.value is not None else b""
        await self.bus.send_raw(topic + DLQ_SUFFIX, rec.key, value, hs)
        key = rec.key.decode("utf-8", "replace") if rec.key else None
        self.stats["dead_lettered"] += 1
        RECORDS.labels(self.group, topic, "dead_lettered").inc()
        if self.on_dead_letter:
            code = getattr(exc, "code", None) or ("RETRIES_EXHAUSTED" if attempts > 1 else "FAILED")
            try:
                await self.on_dead_letter(DeadLetter(topic, rec.partition, rec.offset, key, header_dict(headers),
                                                     value, str(code), extra["dlq-error-message"]))
            except Exception:
                log.exception("%s: on_dead_letter failed for %s@%d/%d", self.group, topic, rec.partition,
                              rec.offset)
