"""Three Kafka brokers (replication factor 3, min.insync.replicas 2, acks=all, idempotent producers):
the broker leading settle.city dies by kill -9 while claims are in flight, and comes back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlmodel import Session, select

from services.bus.client import Bus
from services.bus.kafka import KafkaCluster
from services.settle.settings import SettleSettings
from services.settle.store import LedgerEntry
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import GZ_HOSPITAL, Stack, start_stack
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.one_database]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    c = KafkaCluster.on_free_ports(tmp_path_factory.mktemp("kafka3"), nodes=3)
    c.start(timeout=120)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def stack(cluster: KafkaCluster, engine_factory) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    b = BrokerUnderTest(cluster.bootstrap, "kafka", prefix=f"c{uuid.uuid4().hex[:8]}.")
    setup = Bus(b.settings(), b.bootstrap, "test-setup")
    await setup.ensure_topics()
    await setup.wait_group_coordinator()
    s = await start_stack(b.bootstrap, engine_factory, b.settings(), SettleSettings(deadline_ms=40_000))
    try:
        yield s
    finally:
        await s.stop()


async def leaders(bootstrap: str, topic: str) -> Counter[int]:
    """How many partitions of `topic` each broker leads."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
        assert all(len(p["replicas"]) == 3 for p in desc["partitions"]), desc
        return Counter(p["leader"] for p in desc["partitions"])
    finally:
        await admin.close()


def ledger(stack: Stack) -> list[LedgerEntry]:
    with Session(stack.settle.engine) as s:
        return list(s.exec(select(LedgerEntry)).all())


def fen(amount: Any) -> int:
    return int(Decimal(str(amount)) * 100)


async def test_a_dead_broker_loses_no_claim_and_pays_none_twice(cluster: KafkaCluster, stack: Stack) -> None:
    people = [await stack.person("360100") for _ in range(4)]
    for psn in people:
        await stack.file(psn, "440100")
    topic = stack.settle.runtime.bus.settings.topic("settle.city")
    victim_id = (await leaders(cluster.bootstrap, topic)).most_common(1)[0][0]
    victim = next(n for n in cluster.nodes if n.node_id == victim_id)

    answers: list[dict[str, Any]] = []
    done = asyncio.Event()

    slowest = [0.0]

    async def hospital_desk(i: int) -> None:
        while not done.is_set():
            t = time.monotonic()
            answers.append(await stack.settle_claim(people[i], GZ_HOSPITAL, "440100", "360100"))
            slowest[0] = max(slowest[0], time.monotonic() - t)

    async def fenced() -> bool:
        return await asyncio.to_thread(cluster.live_brokers) == len(cluster.nodes) - 1

    desks = [asyncio.create_task(hospital_desk(i)) for i in range(len(people))]
    await wait_until(lambda: len(answers) >= 4, what="claims settling on every hop")
    in_flight_at_kill = len(answers)
    await asyncio.to_thread(cluster.kill, victim)
    # a process starting now (restarted by its supervisor) creates its topics although the dead
    # broker is still listed: the admin asks brokers at random, and asks again when one is down
    for i in range(4):
        await stack.settle.runtime.bus.create_topic(f"test.started-while-a-broker-is-down.{i}")
    # the cluster fences the dead broker and moves its leaderships; claims settle without it
    await wait_until(fenced, what="the dead broker fenced")
    await wait_until(lambda: len(answers) >= in_flight_at_kill + 4, timeout=30, what="claims settling without it")
    await asyncio.to_thread(cluster.start_node, victim)
    await asyncio.to_thread(cluster.wait_ready, 60)
    back = len(answers)
    await wait_until(lambda: len(answers) >= back + 4, timeout=30, what="claims settling with it back")
    done.set()
    await asyncio.gather(*desks)
    print(f"\nkilled broker {victim_id} (leader of settle.city) after {in_flight_at_kill} claims; "
          f"{len(answers)} claims answered in all, slowest {slowest[0]:.2f} s")

    assert len(answers) > in_flight_at_kill + 8, "claims must keep settling while a broker is down"
    refused = [(a["msgid"], a.get("err_msg")) for a in answers if a["infcode"] != 0]
    assert not refused, refused
    msgids = [a["msgid"] for a in answers]
    assert len(set(msgids)) == len(msgids)  # each claim answered once
    rows = ledger(stack)
    assert sorted(r.msgid for r in rows) == sorted(msgids)  # 0 lost, 0 paid twice
    assert sum(r.fund_fen for r in rows) == sum(fen(a["output"]["setlinfo"]["fund_pay_sumamt"]) for a in answers)
    assert sum(r.medfee_fen for r in rows) == sum(fen(a["output"]["setlinfo"]["medfee_sumamt"]) for a in answers)
