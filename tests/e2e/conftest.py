from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.bus.settings import BusSettings
from tests.conftest import BrokerUnderTest
from tests.e2e.stack import Stack, start_stack


@pytest.fixture
async def stack(broker: BrokerUnderTest, engine_factory, bus_settings: BusSettings) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    s = await start_stack(broker.bootstrap, engine_factory, bus_settings)
    try:
        yield s
    finally:
        await s.stop()
