"""Shared fixtures: a real broker per test, real databases (SQLite and PostgreSQL), services."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import Engine, text

from services.bus.broker import EmbeddedBroker, free_port
from services.bus.client import Bus
from services.bus.db import make_engine
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


@pytest.fixture
def bus_settings() -> BusSettings:
    # short backoff keeps retry tests quick; everything else as in production defaults
    return BusSettings(retry_backoff_ms=100, retry_backoff_max_ms=400, epoch_check_s=0.5)


@pytest.fixture
async def broker(bus_settings: BusSettings) -> AsyncIterator[str]:
    """A fresh broker with every registry topic: embedded Tansu, or Kafka in a container."""
    if os.environ.get("YIBAO_TEST_BROKER") == "container":
        if not docker_available():
            pytest.skip("YIBAO_TEST_BROKER=container but no Docker engine answers here")
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            bootstrap = kafka.get_bootstrap_server()
            await Bus(bus_settings, bootstrap, "test-setup").ensure_topics()
            yield bootstrap
        return
    b = EmbeddedBroker(free_port())
    b.start()
    try:
        await Bus(bus_settings, b.bootstrap, "test-setup").ensure_topics()
        yield b.bootstrap
    finally:
        b.stop()


@pytest.fixture
async def embedded_broker(bus_settings: BusSettings) -> AsyncIterator[EmbeddedBroker]:
    """The embedded broker itself, for tests that restart it."""
    b = EmbeddedBroker(free_port())
    b.start()
    try:
        await Bus(bus_settings, b.bootstrap, "test-setup").ensure_topics()
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked one_database (authentication, streams, adapters: no SQL of their own) run on
    SQLite only; everything that reads or writes a table runs on both databases."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_pg = callspec is not None and callspec.params.get("engine_factory") == "postgresql"
        (drop if on_pg and item.get_closest_marker("one_database") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
