"""A monitor killed -9 mid-stream resumes with its history intact and raises no alert twice: each
alert is stored once, and published at least once under one ce_id. The settlements trickle in
while the monitor runs, so it dies with the stream still flowing, however fast the machine."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import create_engine, text

from schemas.events import SettlementResult
from services.bus.broker import free_port
from services.bus.client import Bus
from services.monitor.scenarios import settled
from tests.conftest import BrokerUnderTest
from tests.helpers import headers_of, read_all, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.one_database]
HOSP = "H44010400001"
N = 240  # claims; each has a price over the cap (R-OVERSTD), the second half resells a trace code of the first (R-TRACE)
D = Decimal


def settlement(i: int) -> SettlementResult:
    """A price over the cap (氯沙坦钾片 at 4.00 against 3.80); claim i and claim i + N/2 sell the same pack."""
    code = "XC09CAL032A001010100512"
    return settled(f"{HOSP}20261205{i:010d}", f"360100{i:012d}", HOSP, date(2026, 11, 20),
                   [(code, D("10"), D("4.00"))], trac={code: f"8{i % (N // 2):019d}"})


def alert_ids(db: Path) -> list[str]:
    if not db.exists():
        return []
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as c:
            return [r[0] for r in c.execute(text("select alert_id from monitor_alerts"))]
    except Exception:  # the table is not there yet
        return []
    finally:
        engine.dispose()


async def test_a_monitor_killed_mid_stream_loses_no_alert_and_raises_none_twice(
        broker: BrokerUnderTest, tmp_path: Path) -> None:
    env = os.environ | {"YIBAO_KAFKA_BOOTSTRAP": broker.bootstrap, "YIBAO_BROKER": broker.kind,
                        "YIBAO_TOPIC_PREFIX": broker.prefix, "YIBAO_VAR_DIR": str(tmp_path),
                        "YIBAO_MONITOR_PORT": str(free_port()), "YIBAO_LOG_LEVEL": "WARNING",
                        "YIBAO_MONITOR_DATABASE_URL": ""}
    db = tmp_path / "monitor.db"

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "services.monitor"], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "monitor.log", "ab"))

    expected = N + N // 2

    def alerts_once(at_least: int) -> bool:
        assert proc.poll() is None, (tmp_path / "monitor.log").read_text()[-3000:]
        return len(alert_ids(db)) >= at_least

    def caught_up() -> bool:
        """The restarted monitor has read everything (lag 0): an alert raised twice would be in by now."""
        try:
            health = httpx.get(f"http://127.0.0.1:{env['YIBAO_MONITOR_PORT']}/healthz", timeout=5).json()
        except httpx.HTTPError:
            return False
        return bool(health.get("consumers")) and all(int(c.get("lag") or 0) == 0 for c in health["consumers"])

    async def trickle() -> None:
        """The settlements, 6 every 50 ms (about two seconds for all of them)."""
        for k in range(0, N, 6):
            for i in range(k, min(k + 6, N)):
                await bus.send("settle.completed", f"360100{i:012d}", settlement(i), "/test/settle",
                               correlation_id=f"{HOSP}20261205{i:010d}")
            await bus.flush()
            await asyncio.sleep(0.05)

    bus = Bus(broker.settings(), broker.bootstrap, "test-monitor-restart")
    await bus.start()
    proc = start()
    sending: asyncio.Task[None] | None = None
    try:
        await wait_until(caught_up, timeout=90, what="the monitor to join its group")
        # off the settlement path: it yields the CPU to the path's processes (YIBAO_MONITOR_NICE)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 5, 19)
        sending = asyncio.create_task(trickle())
        await wait_until(lambda: alerts_once(expected // 4), timeout=90, what="a quarter of the alerts")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill = len(alert_ids(db))
        assert at_kill < expected, "the monitor finished before it was killed: nothing was tested"
        await sending
        proc = start()
        await wait_until(lambda: alerts_once(expected), timeout=120, what=f"all {expected} alerts after the restart")
        await wait_until(caught_up, timeout=60, what="the restarted monitor to read to the end")
        ids = alert_ids(db)
        assert len(ids) == expected == len(set(ids))
        assert sum(i.startswith("R-TRACE-") for i in ids) == N // 2  # resales after the kill found the first sales
        # publication is at least once (the outbox): an event sent again after the kill carries the
        # same ce_id as the first, so a consumer that keeps ce_ids sees each alert once
        published: list[tuple[str, str]] = []
        end = time.monotonic() + 30
        while len(set(published)) < expected and time.monotonic() < end:
            published = [(headers_of(r)["ce_id"], orjson.loads(r.value)["alert_id"])
                         for r in await read_all(broker, "monitor.alerts")]
        assert sorted({a for _, a in published}) == sorted(ids)
        assert len({c for c, _ in published}) == expected and all(c == f"alert-{a}" for c, a in published)
        print(f"killed at {at_kill} of {expected} alerts; {len(published)} alert events published for "
              f"{expected} alerts (the rest sent again after the kill, with their first ce_id)")
    finally:
        if sending is not None and not sending.done():
            sending.cancel()
        await bus.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
