"""The Kafka runtime on a real broker: dead letters, retries, outbox, inbox, broker workarounds."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from decimal import Decimal

import orjson
import pytest
from aiokafka import TopicPartition
from sqlmodel import select

from schemas.events import EnrolmentUpdated, FilingUpdated
from schemas.export import JSON_DIR
from services.bus import outbox
from services.bus.client import Bus
from services.bus.db import create_tables, transaction
from services.bus.envelope import Incoming, encode, make_headers
from services.bus.inbox import InboxRecord, already_processed
from services.bus.kafka import KafkaCluster
from services.bus.outbox import OUTBOX_TABLES, OutboxRelay, OutboxRow, OutboxValue
from services.bus.settings import BusSettings
from services.bus.worker import BatchHandler, DeadLetter, PermanentError, Worker
from tests.conftest import BrokerUnderTest
from tests.helpers import headers_of, read_topic, wait_until

pytestmark = pytest.mark.integration


def filing_event(n: int = 1) -> FilingUpdated:
    return FilingUpdated(fil_id=f"F{n}", psn_no=f"P{n}", insuplc_admdvs="360100", fil_type="REFERRAL",  # type: ignore[arg-type]
                         target_admdvs="440100", begndate=date(2026, 1, 1), status="active")  # type: ignore[arg-type]


async def started_bus(bus_settings: BusSettings, broker: BrokerUnderTest) -> Bus:
    bus = Bus(bus_settings, broker.bootstrap, "test")
    await bus.start()
    return bus


@pytest.mark.embedded_smoke
async def test_bad_messages_are_dead_lettered_and_the_worker_goes_on(broker: BrokerUnderTest, bus_settings: BusSettings) -> None:
    bus = await started_bus(bus_settings, broker)
    seen: list[Incoming] = []

    async def handle(msg: Incoming) -> None:
        seen.append(msg)

    worker = Worker(bus, "t-bad", {"filing.events": handle})
    await worker.start()
    good_headers = make_headers(filing_event(), "/test")
    bad = [
        (b"not json {", good_headers),
        (encode(filing_event()), [(k, v) for k, v in good_headers if k != "ce_type"]),
        (encode(filing_event()), [(k, v if k != "ce_type" else b"yibao.nope.v9") for k, v in good_headers]),
        (orjson.dumps({"fil_id": "F1"}), good_headers),
    ]
    for value, hs in bad:
        await bus.send_raw("filing.events", "P1", value, hs)
    await bus.send("filing.events", "P1", filing_event(2), "/test")
    await bus.flush()
    await wait_until(lambda: seen and worker.stats["dead_lettered"] == 4, what="4 dead letters and 1 good")
    assert [m.event.fil_id for m in seen] == ["F2"]
    dlq = await read_topic(broker, "filing.events.dlq", 4)
    assert sorted(r.value for r in dlq) == sorted(v for v, _ in bad)  # original bytes, unchanged
    reasons = " | ".join(headers_of(r)["dlq-error-message"] for r in dlq)
    for fragment in ("not JSON", "missing header ce_type", "unknown ce_type", "does not match"):
        assert fragment in reasons
    h = headers_of(dlq[0])
    assert h["dlq-original-topic"] == "filing.events" and h["dlq-consumer"] == "t-bad"
    await worker.stop()
    await bus.stop()


@pytest.mark.embedded_smoke
async def test_a_bad_key_or_header_is_dead_lettered_and_the_worker_goes_on(broker: BrokerUnderTest,
                                                                           bus_settings: BusSettings) -> None:
    """Any part of a record that cannot be read (key, any header, value) is bad input: it goes to the
    dead-letter topic with the reason, key and value unchanged, and the consumer carries on."""
    bus = await started_bus(bus_settings, broker)
    seen: list[Incoming] = []

    async def handle(msg: Incoming) -> None:
        seen.append(msg)

    worker = Worker(bus, "t-bad-parts", {"filing.events": handle})
    await worker.start()
    good = make_headers(filing_event(), "/test")

    def with_header(name: str, value: bytes) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in good if k != name] + [(name, value)]

    bad = [
        (b"\xff\xfe key", good, "key is not UTF-8"),
        (b"P1", with_header("ce_attempt", b"x"), "header ce_attempt is 'x'"),
        (b"P1", with_header("ce_deadline", b"soon"), "header ce_deadline is 'soon'"),
        (b"P1", with_header("traceparent", b"\xc3\x28"), "header 'traceparent' is not UTF-8"),
    ]
    for key, hs, _ in bad:
        await bus.send_raw("filing.events", key, encode(filing_event()), hs)
    null_header = good + [("x-note", None)]  # a null header value is valid Kafka: read as empty
    await bus.send_raw("filing.events", "P3", encode(filing_event(3)), null_header)  # type: ignore[arg-type]
    await bus.send("filing.events", "P2", filing_event(2), "/test")
    await bus.flush()
    await wait_until(lambda: len(seen) == 2 and worker.stats["dead_lettered"] == 4,
                     what="4 dead letters, then the two good ones")
    assert sorted(m.event.fil_id for m in seen) == ["F2", "F3"]
    dlq = await read_topic(broker, "filing.events.dlq", 4)
    assert sorted(r.key for r in dlq) == sorted(k for k, _, _ in bad)  # keys unchanged, even unreadable ones
    reasons = " | ".join(headers_of(r)["dlq-error-message"] for r in dlq)
    for _, _, fragment in bad:
        assert fragment in reasons, reasons
    assert [c["state"] for c in worker.health()] == ["running", "running"]
    await worker.stop()
    await bus.stop()


class _NotUtf8Name(str):
    """A header name whose bytes on the wire are not UTF-8 (what a foreign producer may write)."""

    def encode(self, *_: object, **__: object) -> bytes:  # type: ignore[override]
        return b"\xff\xfe-note"


async def test_a_record_the_client_cannot_parse_is_stepped_over_and_nothing_around_it_is_lost(
        broker: BrokerUnderTest, bus_settings: BusSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A header *name* that is not UTF-8 breaks the Kafka client's own record parser, before any
    decoder of ours sees the record; the client cannot read past it within its producer batch either.
    The consumer finds the offset, dead-letters those records by their place (topic, partition,
    offset) with the reason, and handles every record before them and after their batch."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.producer import message_accumulator, producer
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    # aiokafka's own producer cannot write such a name; its pure-Python record builder writes what
    # the name's encode() gives
    for module in (message_accumulator, producer):
        monkeypatch.setattr(module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
    bus = await started_bus(bus_settings, broker)
    seen: list[str] = []

    async def handle(msg: Incoming) -> None:
        seen.append(msg.event.fil_id)

    worker = Worker(bus, "t-unparsable", {"filing.events": handle})
    raw = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=100)
    await raw.start()
    offsets: dict[int, int] = {}
    for batch in ((1, 2, 9, 7), (3, 4, 5)):  # two producer batches; 9 is the unparsable record
        sent = {n: await raw.send(bus_settings.topic("filing.events"), encode(filing_event(n)), key=b"P",
                                  headers=make_headers(filing_event(n), "/test") +
                                  ([(_NotUtf8Name("x"), b"1")] if n == 9 else []))
                for n in batch}
        offsets |= {n: (await f).offset for n, f in sent.items()}
    await raw.stop()
    await worker.start()
    await wait_until(lambda: len(seen) == 5 and worker.stats["dead_lettered"] == 2,
                     what="the readable records handled, the unparsable one and the rest of its batch dead-lettered")
    assert seen == ["F1", "F2", "F3", "F4", "F5"]
    dead = await read_topic(broker, "filing.events.dlq", 2)
    hs = sorted((headers_of(r) for r in dead), key=lambda h: int(h["dlq-original-offset"]))  # no key: any partition
    assert [(h["dlq-original-topic"], int(h["dlq-original-offset"])) for h in hs] == \
        [("filing.events", offsets[9]), ("filing.events", offsets[7])], hs
    assert all("cannot be parsed" in h["dlq-error-message"] for h in hs), hs
    assert [c["state"] for c in worker.health()] == ["running", "running"]
    await bus.send("filing.events", "P", filing_event(6), "/test")  # and the partition flows on
    await wait_until(lambda: "F6" in seen, what="a record after it")
    await worker.stop()
    await bus.stop()


class CrashOnceWorker(Worker):
    """A worker whose loop dies on its first message, as a bug in the runtime would make it."""

    crashed = False

    async def _process(self, rec, retry):  # type: ignore[no-untyped-def]
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("a bug in the loop")
        await super()._process(rec, retry)


async def test_a_consumer_loop_that_dies_is_restarted_and_loses_nothing(broker: BrokerUnderTest,
                                                                         bus_settings: BusSettings) -> None:
    bus = await started_bus(bus_settings, broker)
    seen: list[str] = []

    async def handle(msg: Incoming) -> None:
        seen.append(msg.event.fil_id)

    worker = CrashOnceWorker(bus, "t-crash", {"filing.events": handle})
    await worker.start()
    for n in (1, 2, 3):
        await bus.send("filing.events", "P", filing_event(n), "/test")
    await wait_until(lambda: sorted(set(seen)) == ["F1", "F2", "F3"], what="all three handled after the restart")
    assert worker.crashed and worker.stats["loop_restarts"] == 1
    assert worker.health()[0]["state"] == "running"
    await worker.stop()
    await bus.stop()


async def test_a_failing_message_is_retried_without_blocking_others(broker: BrokerUnderTest, bus_settings: BusSettings) -> None:
    bus = await started_bus(bus_settings, broker)
    attempts: dict[str, int] = {}
    done: list[str] = []

    async def handle(msg: Incoming) -> None:
        fid = msg.event.fil_id
        attempts[fid] = attempts.get(fid, 0) + 1
        if fid == "F1" and attempts[fid] < 3:
            raise ConnectionError("region database unreachable")
        done.append(fid)

    worker = Worker(bus, "t-retry", {"filing.events": handle})
    await worker.start()
    for n in (1, 2, 3):
        await bus.send("filing.events", f"P{n}", filing_event(n), "/test")
    await wait_until(lambda: "F1" in done, what="F1 to succeed on its third attempt")
    assert done.index("F1") > done.index("F2")  # others went on while F1 waited
    assert attempts["F1"] == 3 and done.count("F1") == 1
    assert worker.stats["retried"] == 2 and worker.stats["dead_lettered"] == 0
    await worker.stop()
    await bus.stop()


async def test_after_the_budget_the_message_is_dead_lettered_and_reported(broker: BrokerUnderTest) -> None:
    settings = broker.settings(retry_attempts=3, retry_backoff_ms=50, retry_backoff_max_ms=100)
    bus = await started_bus(settings, broker)
    given_up: list[tuple[str, str]] = []

    async def always_fail(msg: Incoming) -> None:
        raise TimeoutError("national hub did not answer")

    async def on_give_up(msg: Incoming, reason: str) -> None:
        given_up.append((msg.event.fil_id, reason))

    worker = Worker(bus, "t-budget", {"filing.events": always_fail}, on_give_up)
    await worker.start()
    await bus.send("filing.events", "P7", filing_event(7), "/test")
    await wait_until(lambda: given_up, what="give-up")
    assert given_up[0][0] == "F7" and "after 3 attempts" in given_up[0][1]
    dlq = await read_topic(broker, "filing.events.dlq", 1)
    h = headers_of(dlq[0])
    assert h["dlq-attempts"] == "3" and h["dlq-error-class"] == "TimeoutError"
    await worker.stop()
    await bus.stop()


async def test_telling_the_sender_is_tried_again_until_it_works(broker: BrokerUnderTest) -> None:
    """Giving up includes telling the sender (on_give_up, e.g. recording the hospital's answer). When
    that fails too (its database is down), the message goes back to the retry topic and the telling
    is tried again; it reaches the dead-letter topic once, after the sender was told."""
    settings = broker.settings(retry_attempts=2, retry_backoff_ms=50, retry_backoff_max_ms=100)
    bus = await started_bus(settings, broker)
    tries: list[str] = []

    async def always_fail(msg: Incoming) -> None:
        raise TimeoutError("national hub did not answer")

    async def on_give_up(msg: Incoming, reason: str) -> None:
        tries.append(reason)
        if len(tries) < 3:
            raise ConnectionRefusedError("the database is down")

    worker = Worker(bus, "t-tell", {"filing.events": always_fail}, on_give_up)
    await worker.start()
    await bus.send("filing.events", "P8", filing_event(8), "/test")
    await wait_until(lambda: len(tries) >= 3, what="the third attempt to tell the sender")
    assert len(set(tries)) == 1 and "after 2 attempts" in tries[0]  # the same give-up, told again
    dlq = await read_topic(broker, "filing.events.dlq", 1)  # dead-lettered after the sender was told
    assert len(dlq) == 1 and len(tries) == 3
    await worker.stop()
    await bus.stop()


@pytest.mark.embedded_smoke
async def test_end_offsets_are_right_when_batches_hold_many_records(broker: BrokerUnderTest, bus_settings: BusSettings) -> None:
    """broker-notes item 1: ListOffsets(LATEST) is wrong for multi-record batches."""
    bus = await started_bus(bus_settings, broker)
    await bus.create_topic("t.offsets", 1)
    futures = [await bus.send_raw("t.offsets", "k", b"{}", []) for _ in range(25)]  # batched together
    await asyncio.gather(*futures)
    tp = TopicPartition("t.offsets", 0)
    assert (await bus.end_offsets([tp]))[tp] == 25
    await bus.stop()


async def test_a_new_topic_does_not_stall_sends_to_known_ones(broker: BrokerUnderTest, bus_settings: BusSettings) -> None:
    """The producer keeps every registry topic in its metadata (see Bus.pin_producer_topics)."""
    bus = await started_bus(bus_settings, broker)
    await bus.create_topic("settle.reply.test", 1)
    futures = [await bus.send_raw(t, "k", b"{}", []) for t in ("settle.hospital", "settle.completed", "settle.reply.test")]
    await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
    await bus.stop()


async def test_outbox_publishes_what_commits_and_nothing_that_rolls_back(broker: BrokerUnderTest, bus_settings: BusSettings,
                                                                         engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory("outbox")
    create_tables(engine, OUTBOX_TABLES)
    bus = await started_bus(bus_settings, broker)
    relay = OutboxRelay(engine, "t-outbox", bus)
    relay.start()
    with pytest.raises(RuntimeError), transaction(engine) as s:
        outbox.add(s, "t-outbox", "filing.events", "P1", filing_event(1))
        raise RuntimeError("the state change failed")
    with transaction(engine) as s:
        outbox.add(s, "t-outbox", "filing.events", "P2", filing_event(2))
    relay.notify()
    await wait_until(lambda: relay.published == 1, what="relay publish")
    records = await read_topic(broker, "filing.events", 1, timeout=3)
    assert [orjson.loads(r.value)["fil_id"] for r in records] == ["F2"]
    assert headers_of(records[0])["ce_type"] == "yibao.filing.FilingUpdated.v1"
    await relay.stop()
    await bus.stop()


async def test_outbox_rows_the_fast_path_missed_are_published_by_the_poll(broker: BrokerUnderTest, bus_settings: BusSettings,
                                                                          engine_factory) -> None:  # type: ignore[no-untyped-def]
    """Rows committed where no relay runs (another process) and rows whose send failed still go out."""
    engine = engine_factory("outbox-poll")
    create_tables(engine, OUTBOX_TABLES)
    bus = await started_bus(bus_settings, broker)
    await bus.create_topic("t.outbox.poll", 1)
    with transaction(engine) as s:  # no relay in this process yet: the row is not leased
        outbox.add(s, "t-poll", "t.outbox.poll", "P1", filing_event(1))
    relay = OutboxRelay(engine, "t-poll", bus)
    relay.start()
    await wait_until(lambda: relay.published == 1, what="the poll to publish the unleased row")
    real_send, failures = bus.send_raw, []

    async def failing_once(*args, **kw):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(args[0])
            raise ConnectionError("broker away")
        return await real_send(*args, **kw)

    bus.send_raw = failing_once  # type: ignore[method-assign]
    with transaction(engine) as s:  # handed over at commit; its send fails; the lease is given back
        outbox.add(s, "t-poll", "t.outbox.poll", "P2", filing_event(2))
    await wait_until(lambda: relay.published == 2, what="the failed row to be sent again")
    records = await read_topic(broker, "t.outbox.poll", 2, timeout=3)
    assert [orjson.loads(r.value)["fil_id"] for r in records] == ["F1", "F2"] and failures
    with transaction(engine) as s:
        assert all(r.sent_ms is not None for r in s.exec(select(OutboxRow)).all())
    await relay.stop()
    await bus.stop()


async def test_a_row_an_older_version_wrote_with_its_value_in_it_is_published(
        broker: BrokerUnderTest, bus_settings: BusSettings, engine_factory) -> None:  # type: ignore[no-untyped-def]
    """Rows keep their values in bus_outbox_value; a pending row from before that table, its value
    in bus_outbox itself, still goes out with it. A row written now leaves bus_outbox.value empty."""
    engine = engine_factory("outbox-old")
    create_tables(engine, OUTBOX_TABLES)
    bus = await started_bus(bus_settings, broker)
    await bus.create_topic("t.outbox.old", 1)
    event = filing_event(1)
    with transaction(engine) as s:
        s.connection().execute(OutboxRow.__table__.insert().values(  # type: ignore[attr-defined]
            service="t-old", topic="t.outbox.old", key="P1", value=encode(event), created_ms=1,
            headers=orjson.dumps([[k, v.decode()] for k, v in make_headers(event, "/test")])))
        outbox.add(s, "t-old", "t.outbox.old", "P2", filing_event(2))
    relay = OutboxRelay(engine, "t-old", bus)
    relay.start()
    await wait_until(lambda: relay.published == 2, what="both rows published")
    records = await read_topic(broker, "t.outbox.old", 2, timeout=3)
    assert [orjson.loads(r.value)["fil_id"] for r in records] == ["F1", "F2"]
    with transaction(engine) as s:
        rows = s.exec(select(OutboxRow).where(OutboxRow.service == "t-old").order_by(OutboxRow.id)).all()  # type: ignore[arg-type]
        assert [r.value for r in rows] == [encode(event), b""] and all(r.sent_ms for r in rows)
        assert s.get(OutboxValue, rows[1].id).value == encode(filing_event(2))  # type: ignore[union-attr]
    await relay.stop()
    await bus.stop()


async def test_an_outbox_row_goes_to_every_topic_of_its_fanout(broker: BrokerUnderTest, bus_settings: BusSettings,
                                                               engine_factory) -> None:  # type: ignore[no-untyped-def]
    """One row, stored once, is sent to each of its topics with its key there; it is marked sent when
    all are acknowledged, and when one send fails the whole row goes again (by the poll)."""
    engine = engine_factory("outbox-fanout")
    create_tables(engine, OUTBOX_TABLES)
    bus = await started_bus(bus_settings, broker)
    topics = ["t.fanout.a", "t.fanout.b", "t.fanout.c"]
    for t in topics:
        await bus.create_topic(t, 1)
    fanout = [("t.fanout.b", "KB"), ("t.fanout.c", None)]
    with transaction(engine) as s:  # no relay yet: the poll sends it
        outbox.add(s, "t-fanout", "t.fanout.a", "KA", filing_event(1), fanout=fanout)
    relay = OutboxRelay(engine, "t-fanout", bus)
    relay.start()
    await wait_until(lambda: relay.published == 1, what="the poll to publish the row to its three topics")
    real_send, failed = bus.send_raw, []

    async def second_fails_once(topic, *args, **kw):  # type: ignore[no-untyped-def]
        if topic == "t.fanout.b" and not failed:
            failed.append(topic)
            raise ConnectionError("broker away")
        return await real_send(topic, *args, **kw)

    bus.send_raw = second_fails_once  # type: ignore[method-assign]
    with transaction(engine) as s:  # handed over at commit; its second send fails
        outbox.add(s, "t-fanout", "t.fanout.a", "KA", filing_event(2), fanout=fanout)
    await wait_until(lambda: relay.published == 2, what="the row whose send failed to go again")
    got = {t: [(r.key, orjson.loads(r.value)["fil_id"]) for r in await read_topic(broker, t, 2, timeout=3)]
           for t in topics}
    assert failed and got == {"t.fanout.a": [(b"KA", "F1"), (b"KA", "F2"), (b"KA", "F2")],
                              "t.fanout.b": [(b"KB", "F1"), (b"KB", "F2")],
                              "t.fanout.c": [(None, "F1"), (None, "F2")]}
    with transaction(engine) as s:
        rows = s.exec(select(OutboxRow).where(OutboxRow.service == "t-fanout")).all()
        assert len(rows) == 2 and all(r.sent_ms is not None for r in rows)
    await relay.stop()
    await bus.stop()


def test_inbox_records_once(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory("inbox")
    create_tables(engine, [InboxRecord])
    with transaction(engine) as s:
        assert already_processed(s, "c", "m1") is False
    with transaction(engine) as s:
        assert already_processed(s, "c", "m1") is True
        assert already_processed(s, "other", "m1") is False


async def test_broker_restart_republishes_recent_events(embedded_broker, engine_factory) -> None:  # type: ignore[no-untyped-def]
    """broker-notes item 8: after the embedded broker loses its data, the outbox fills it again."""
    bus_settings = BrokerUnderTest(embedded_broker.bootstrap, "embedded").settings()
    engine = engine_factory("epoch")
    create_tables(engine, OUTBOX_TABLES)
    bus = await started_bus(bus_settings, BrokerUnderTest(embedded_broker.bootstrap, "embedded"))
    relay = OutboxRelay(engine, "t-epoch", bus)
    relay.start()
    bus.on_new_epoch(lambda: asyncio.sleep(0, relay.republish_recent(600)))
    bus.watch_epoch()
    with transaction(engine) as s:
        outbox.add(s, "t-epoch", "filing.events", "P3", filing_event(3))
    relay.notify()
    await wait_until(lambda: relay.published == 1, what="first publish")
    await embedded_broker.restart()
    await wait_until(lambda: bus.epochs_seen == 1, what="the new epoch to be noticed")
    await wait_until(lambda: relay.published == 2, what="republish")
    records = await read_topic(BrokerUnderTest(embedded_broker.bootstrap, "embedded"), "filing.events", 1)
    assert [orjson.loads(r.value)["fil_id"] for r in records] == ["F3"]
    await relay.stop()
    await bus.stop()


async def watching_pair(bootstrap: str, recovered: list[str]) -> tuple[Bus, Bus]:
    """Two processes' buses on the embedded broker, watching its epoch, once both hold its token."""
    settings = BrokerUnderTest(bootstrap, "embedded").settings()
    first, second = Bus(settings, bootstrap, "p1"), Bus(settings, bootstrap, "p2")
    for bus in (first, second):
        await bus.start()
        bus.on_new_epoch(lambda name=bus.client_id: asyncio.sleep(0, recovered.append(name)))
        bus.watch_epoch()
    await wait_until(lambda: first.epoch_token and first.epoch_token == second.epoch_token, what="one epoch token")
    return first, second


async def hold_one_new_token(first: Bus, second: Bus, old: str | None) -> None:
    """Both processes come to hold the same new token, each having seen one new epoch; then stop.
    A process whose claim of the new token failed (the restarted broker may refuse the first send)
    adopts it at its next check: agreement is awaited, not assumed the moment both recovered."""
    try:
        await wait_until(lambda: second.epoch_token is not None and second.epoch_token == first.epoch_token,
                         what="both processes to hold the new epoch's token")
        assert second.epoch_token != old
        assert (first.epochs_seen, second.epochs_seen) == (1, 1)
    finally:
        await first.stop()
        await second.stop()


async def test_after_a_broker_restart_every_process_recovers_not_only_the_first(embedded_broker) -> None:  # type: ignore[no-untyped-def]
    """Two processes watch the epoch; whichever notices first re-creates the topics, and the other
    still sees the new epoch (its token changed) and recovers too."""
    recovered: list[str] = []
    first, second = await watching_pair(embedded_broker.bootstrap, recovered)
    old = first.epoch_token
    await embedded_broker.restart()
    await wait_until(lambda: sorted(recovered) == ["p1", "p2"], what="both processes to recover")
    await hold_one_new_token(first, second, old)


async def test_a_process_whose_claim_of_the_new_epoch_fails_adopts_it_at_its_next_check(embedded_broker) -> None:  # type: ignore[no-untyped-def]
    """The restarted broker may refuse a process's first send; that process has still recovered,
    holds no token for a moment, and takes the one the other process wrote at its next check."""
    recovered: list[str] = []
    first, second = await watching_pair(embedded_broker.bootstrap, recovered)
    refused: list[str] = []
    real_claim = second._claim_epoch

    async def refuse_once_after_recovery() -> str:
        if second.epochs_seen and not refused:
            refused.append("claim")
            raise RuntimeError("the restarted broker refused the send")
        return await real_claim()

    second._claim_epoch = refuse_once_after_recovery  # type: ignore[method-assign]
    old = first.epoch_token
    await embedded_broker.restart()
    await wait_until(lambda: refused and "p2" in recovered, what="the second process to recover, its claim refused")
    await hold_one_new_token(first, second, old)


async def test_a_replaced_kafka_cluster_is_a_new_epoch_for_every_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On Apache Kafka a restart loses nothing; a cluster put in the place of another (same address,
    empty data) is a new epoch: both processes re-create the topics and recover, not only the first."""
    old = KafkaCluster.on_free_ports(tmp_path / "a")
    bootstrap = await asyncio.to_thread(old.start)
    settings = BrokerUnderTest(bootstrap, "kafka").settings()
    buses = [Bus(settings, bootstrap, f"p{i}") for i in (1, 2)]
    recovered: list[str] = []
    try:
        for bus in buses:
            await bus.start()
            await bus.ensure_topics()
            bus.on_new_epoch(lambda name=bus.client_id: asyncio.sleep(0, recovered.append(name)))
            bus.watch_epoch()
        await wait_until(lambda: buses[0].epoch_token and buses[0].epoch_token == buses[1].epoch_token,
                         what="one epoch token", timeout=60)
        token = buses[0].epoch_token
        await asyncio.to_thread(old.stop)
        new = KafkaCluster(tmp_path / "b", [n.port for n in old.nodes], [n.controller_port for n in old.nodes])
        await asyncio.to_thread(new.start)
        try:
            await wait_until(lambda: sorted(recovered) == ["p1", "p2"], what="both processes to recover", timeout=90)
            await wait_until(lambda: buses[0].epoch_token and buses[0].epoch_token == buses[1].epoch_token,
                             what="the new epoch's token", timeout=30)
            assert buses[0].epoch_token != token
            assert settings.topic("settle.city") in await buses[0]._topics_now()
        finally:
            for bus in buses:
                await bus.stop()
            await asyncio.to_thread(new.stop)
    finally:
        await asyncio.to_thread(old.stop)


async def test_a_plain_kafka_client_reads_a_topic_with_only_the_schema_files(broker: BrokerUnderTest, bus_settings: BusSettings) -> None:
    """confluent-kafka (librdkafka) + schemas/json: headers name the type, the file validates the value."""
    jsonschema = pytest.importorskip("jsonschema")
    from confluent_kafka import Consumer

    bus = await started_bus(bus_settings, broker)
    ev = EnrolmentUpdated(psn_no="P9", psn_name="王五", gend="2", brdy=date(1990, 5, 1), insuplc_admdvs="360100",
                          insutype="310", psn_insu_stas="1", acct_balc=Decimal("12.50"))  # type: ignore[arg-type]
    await (await bus.send("enroll.events", "P9", ev, "/test"))
    await bus.stop()

    def consume() -> tuple[dict[str, str], bytes]:
        # a group join waits half the session on the embedded broker (broker-notes item 3):
        # librdkafka's default session of 45 s would make this test wait 22 s for nothing
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": broker.topic("plain-reader"),
                      "auto.offset.reset": "earliest", "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
        c.subscribe([broker.topic("enroll.events")])
        try:
            for _ in range(200):
                m = c.poll(0.2)
                if m is not None and not m.error():
                    return {k: v.decode() for k, v in m.headers()}, m.value()
            raise AssertionError("nothing read")
        finally:
            c.close()

    headers, value = await asyncio.to_thread(consume)
    assert headers["ce_specversion"] == "1.0" and headers["content-type"] == "application/json"
    schema = json.loads((JSON_DIR / f"{headers['ce_type']}.json").read_text(encoding="utf-8"))
    jsonschema.validate(json.loads(value), schema)


async def test_a_handler_error_while_consuming_never_kills_the_loop(broker: BrokerUnderTest, bus_settings: BusSettings) -> None:
    bus = await started_bus(bus_settings, broker)
    calls: list[str] = []

    async def handle(msg: Incoming) -> None:
        calls.append(msg.event.fil_id)
        if msg.event.fil_id == "F1":
            raise KeyError("a bug")

    bus.settings = broker.settings(retry_attempts=1)
    worker = Worker(bus, "t-bug", {"filing.events": handle})
    await worker.start()
    await bus.send("filing.events", "P1", filing_event(1), "/test")
    await bus.send("filing.events", "P2", filing_event(2), "/test")
    await wait_until(lambda: "F2" in calls and worker.stats["dead_lettered"] == 1, what="loop survives")
    await worker.stop()
    await bus.stop()


async def test_consumers_are_tuned_for_each_broker() -> None:
    """The embedded broker (broker-notes items 2 and 3): a short fetch wait (new data does not wake a
    waiting fetch), a short session (every join waits session/2). Kafka: an append wakes a waiting
    fetch, so a long wait costs no latency and keeps idle consumers quiet. Both: request timeout
    above the session, no auto-commit, an explicit setting wins over the broker's tuning."""
    embedded, kafka = BusSettings(broker="embedded"), BusSettings(broker="kafka")
    c = Bus(embedded, "127.0.0.1:1", "t").consumer("filing.events", group_id="x")
    assert c._fetch_max_wait_ms == embedded.fetch_max_wait_ms <= 50
    assert c._session_timeout_ms == embedded.session_timeout_ms <= 3000
    assert c._heartbeat_interval_ms * 3 <= c._session_timeout_ms < c._request_timeout_ms
    assert c._enable_auto_commit is False
    slow = Bus(embedded, "127.0.0.1:1", "t").consumer("filing.events.retry", group_id="x.retry", slow=True)
    await c.stop()
    await slow.stop()
    assert slow._fetch_max_wait_ms > c._fetch_max_wait_ms  # idle retry readers cost less broker CPU
    k = Bus(kafka, "127.0.0.1:1", "t").consumer("filing.events", group_id="x")
    await k.stop()
    assert k._fetch_max_wait_ms >= 500
    assert k._session_timeout_ms >= max(6000, 3 * k._heartbeat_interval_ms)
    assert BusSettings(broker="kafka", fetch_max_wait_ms=20).fetch_max_wait_ms == 20


@pytest.mark.embedded_smoke
async def test_the_producer_is_idempotent_on_kafka_and_at_least_once_on_the_embedded_broker(
        broker: BrokerUnderTest, bus_settings: BusSettings) -> None:
    """broker-notes item 4: InitProducerId fails on the embedded broker; acks=all there, no idempotence."""
    bus = await started_bus(bus_settings, broker)
    assert bus.producer is not None
    assert (bus.producer._txn_manager is None) == (broker.kind == "embedded")
    await (await bus.send("filing.events", "P1", filing_event(1), "/test"))  # and it works
    await bus.stop()


async def test_two_relays_on_one_database_publish_each_row_once(broker: BrokerUnderTest, bus_settings: BusSettings,
                                                                engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory("lease")
    create_tables(engine, OUTBOX_TABLES)
    bus = await started_bus(bus_settings, broker)
    with transaction(engine) as s:
        for n in range(60):
            outbox.add(s, "t-lease", "filing.events", f"P{n}", filing_event(n))
    a, b = OutboxRelay(engine, "t-lease", bus, batch=7), OutboxRelay(engine, "t-lease", bus, batch=7)

    async def drain(r: OutboxRelay) -> None:
        while await r.drain_once():
            pass

    await asyncio.gather(drain(a), drain(b))
    assert a.published + b.published == 60
    records = await read_topic(broker, "filing.events", 60)
    assert sorted(orjson.loads(r.value)["fil_id"] for r in records) == sorted(f"F{n}" for n in range(60))
    with transaction(engine) as s:
        ids = [r.id for r in s.exec(select(OutboxRow).where(OutboxRow.service == "t-lease")).all()]
        assert len(ids) == 60 and len(s.exec(select(OutboxValue).where(OutboxValue.id.in_(ids))).all()) == 60  # type: ignore[union-attr]
    a.prune(0)
    with transaction(engine) as s:
        assert not s.exec(select(OutboxRow).where(OutboxRow.service == "t-lease")).all()
        assert not s.exec(select(OutboxValue).where(OutboxValue.id.in_(ids))).all()  # type: ignore[union-attr]
    await bus.stop()


async def test_a_batch_handler_gets_many_at_once_and_each_message_its_own_fate(broker: BrokerUnderTest,
                                                                                bus_settings: BusSettings) -> None:
    """One call per fetched batch; per message: done, refused (dead letter + on_dead_letter with the
    code) or failed (retried on its own through the retry topic, then done)."""
    bus = await started_bus(bus_settings, broker)
    calls: list[list[str]] = []
    failed_once: set[str] = set()
    told: list[DeadLetter] = []

    async def handle(msgs: list[Incoming]) -> list[BaseException | None]:
        calls.append([m.event.fil_id for m in msgs])
        out: list[BaseException | None] = []
        for m in msgs:
            if m.event.fil_id == "F3":
                out.append(PermanentError("F3 is refused", "NOT_ALLOWED"))
            elif m.event.fil_id == "F5" and "F5" not in failed_once:
                failed_once.add("F5")
                out.append(RuntimeError("database busy"))
            else:
                out.append(None)
        return out

    async def on_dead_letter(dl: DeadLetter) -> None:
        told.append(dl)

    for n in range(1, 9):  # one key: one partition, one fetch
        await bus.send("filing.events", "P", filing_event(n), "/test")
    await bus.send_raw("filing.events", "P", b"{oops", make_headers(filing_event(), "/test"))
    await bus.flush()
    worker = Worker(bus, "t-batch", {"filing.events": BatchHandler(handle)}, on_dead_letter=on_dead_letter)
    await worker.start()
    await wait_until(lambda: worker.stats["handled"] == 7 and len(told) == 2, what="7 handled, 2 dead letters")
    assert len(calls[0]) > 1  # many messages in one call
    assert calls[-1] == ["F5"]  # the retry, alone
    assert sorted(d.code for d in told) == ["NOT_ALLOWED", "NOT_JSON"]
    assert next(d for d in told if d.code == "NOT_ALLOWED").reason == "F3 is refused"
    await worker.stop()
    await bus.stop()


async def test_topics_get_the_registry_configs(broker: BrokerUnderTest, bus_settings: BusSettings) -> None:
    """Retention for hop topics, compaction for state topics, long retention for dead letters."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        names = ["settle.city", "ops.faults", "settle.city.dlq"]
        answers = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, broker.topic(n)) for n in names])
        configs = {}
        for answer in answers:
            for _code, _msg, _type, name, entries in answer.resources:
                configs[bus_settings.logical(name)] = {e[0]: e[1] for e in entries}
    finally:
        await admin.close()
    assert configs["settle.city"]["retention.ms"] == str(24 * 3600 * 1000)
    assert configs["ops.faults"]["cleanup.policy"] == "compact"
    assert configs["settle.city.dlq"]["retention.ms"] == str(30 * 24 * 3600 * 1000)
