"""Shared fixtures: Apache Kafka for the session (a topic prefix per test) or the embedded broker,
real databases (SQLite and PostgreSQL), services."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from sqlalchemy import Engine, text

from services.bus.broker import EmbeddedBroker, free_port
from services.bus.client import Bus
from services.bus.db import make_engine
from services.bus.kafka import KafkaCluster
from services.bus.settings import BusSettings

PG_ADMIN_URL = os.environ.get("YIBAO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


@dataclass(frozen=True)
class BrokerUnderTest:
    """The broker a test runs on; on the session's Kafka, each test has topics and groups of its own."""

    bootstrap: str
    kind: Literal["kafka", "embedded"]
    prefix: str = ""

    def topic(self, name: str) -> str:
        """The broker's name of a registry topic in this test."""
        return self.prefix + name

    def settings(self, **kw: Any) -> BusSettings:
        # short backoff keeps retry tests quick; short sessions make a killed consumer's partitions
        # move quickly (the test brokers allow them); everything else as in production
        base: dict[str, Any] = dict(retry_backoff_ms=100, retry_backoff_max_ms=400, epoch_check_s=0.5)
        if self.kind == "kafka":
            base |= dict(session_timeout_ms=3000, heartbeat_interval_ms=500)
        return BusSettings(broker=self.kind, topic_prefix=self.prefix, **(base | kw))


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One Apache Kafka node for the whole session, on free loopback ports. A machine that cannot
    run it fails here: the suite never falls back silently."""
    cluster = KafkaCluster.on_free_ports(tmp_path_factory.mktemp("kafka"), nodes=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def broker_kind(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", None) or os.environ.get("YIBAO_TEST_BROKER", "kafka")


@pytest.fixture
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerUnderTest]:
    """A broker with every registry topic: the session's Apache Kafka under a prefix of this test's
    own (deleted afterwards), a fresh embedded broker, or Kafka in a container."""
    kind = broker_kind(request)
    if kind == "container":
        if not docker_available():
            pytest.skip("YIBAO_TEST_BROKER=container but no Docker engine answers here")
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            b = BrokerUnderTest(kafka.get_bootstrap_server(), "kafka")
            await Bus(b.settings(), b.bootstrap, "test-setup").ensure_topics()
            yield b
        return
    if kind == "embedded":
        eb = EmbeddedBroker(free_port())
        eb.start()
        try:
            b = BrokerUnderTest(eb.bootstrap, "embedded")
            await Bus(b.settings(), b.bootstrap, "test-setup").ensure_topics()
            yield b
        finally:
            eb.stop()
        return
    cluster: KafkaCluster = request.getfixturevalue("kafka_cluster")
    b = BrokerUnderTest(cluster.bootstrap, "kafka", prefix=f"t{uuid.uuid4().hex[:8]}.")
    setup = Bus(b.settings(), b.bootstrap, "test-setup")
    await setup.ensure_topics()
    await setup.wait_group_coordinator()
    try:
        yield b
    finally:
        await setup.delete_topics(await setup.list_topics())


@pytest.fixture
def bus_settings(broker: BrokerUnderTest) -> BusSettings:
    return broker.settings()


@pytest.fixture
async def embedded_broker() -> AsyncIterator[EmbeddedBroker]:
    """The embedded broker itself, for tests that restart it."""
    b = EmbeddedBroker(free_port())
    b.start()
    try:
        await Bus(BrokerUnderTest(b.bootstrap, "embedded").settings(), b.bootstrap, "test-setup").ensure_topics()
        yield b
    finally:
        b.stop()


def _postgres_engine() -> Iterator[Engine]:
    schema = "t_" + uuid.uuid4().hex[:10]
    try:
        admin = make_engine(PG_ADMIN_URL)
        with admin.begin() as c:
            c.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:
        if os.environ.get("YIBAO_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required (YIBAO_REQUIRE_POSTGRES=1) but unreachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    engine = make_engine(f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as c:
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_factory(request: pytest.FixtureRequest, tmp_path):  # type: ignore[no-untyped-def]
    """Makes one engine per service name, all on SQLite files or all in one PostgreSQL schema."""
    if request.param == "sqlite":
        engines: dict[str, Engine] = {}

        def make(name: str) -> Engine:
            engines[name] = make_engine(f"sqlite:///{tmp_path / (name + '.db')}")
            return engines[name]

        yield make
        for e in engines.values():
            e.dispose()
    else:
        gen = _postgres_engine()
        pg = next(gen)
        yield lambda _name: pg
        gen.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked embedded_smoke run on the embedded broker too, so the fallback stays true."""
    if "broker" in metafunc.fixturenames and metafunc.definition.get_closest_marker("embedded_smoke") \
            and not os.environ.get("YIBAO_TEST_BROKER"):
        metafunc.parametrize("broker", ["kafka", "embedded"], indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked one_database (authentication, streams, adapters: no SQL of their own) run on
    SQLite only; everything that reads or writes a table runs on both databases. The embedded
    broker's smoke run is on SQLite only."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        on_pg = params.get("engine_factory") == "postgresql"
        one_db = item.get_closest_marker("one_database") or params.get("broker") == "embedded"
        (drop if on_pg and one_db else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
