"""`yibao bench enroll`: a generated population through enroll.inbound.

Self-contained: a fresh embedded broker and one enroll service process (its own SQLite file under
a temporary directory). The generator publishes N persons as provincial platforms would (each from
its own province, CloudEvents headers, JSON values) with 2 % of them enrolled a second time by
another province (national duplicates) and 5 % with lapsed contributions. Reports how fast the
service consumes them (records/s until its consumer group has no lag), how fast its events leave
(enroll.events), how many duplicates it found as the records arrived against the batch check,
and its resident memory while doing so. Writes var/bench-enroll.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from schemas.regions import pooling_regions
from services.bus.broker import free_port
from services.bus.client import Bus
from services.bus.kafka import KafkaCluster, kafka_version
from services.bus.settings import BusSettings
from services.enroll.domain import with_check_char
from services.identity import headers_for

ENROL = b"yibao.enroll.EnrolmentRecord.v1"
DUP_EVERY = 50  # 2 %
LAPSE_EVERY = 20  # 5 %: half of them 居民, half 职工 (whose employers are reminded too)


def progress(text: str) -> None:
    print(f"[bench-enroll {time.strftime('%H:%M:%S')}] {text}", flush=True)


def population(n: int) -> list[tuple[bytes, bytes, bytes]]:
    """(key, ce_source, value) for n persons plus their 2 % second enrolments, in publish order."""
    regions = sorted(pooling_regions())
    year_end = date(date.today().year, 12, 31).isoformat()
    lapsed = (date.today().replace(day=1) - timedelta(days=1)).isoformat()
    base = date(1940, 1, 1)
    out: list[tuple[bytes, bytes, bytes]] = []
    for i in range(n):
        region = regions[i % len(regions)]
        j = i // len(regions)
        brdy = base + timedelta(days=j // 1000)
        certno = with_check_char(f"{region}{brdy:%Y%m%d}{j % 1000:03d}")
        resident = i % 5 < 2
        rec: dict[str, Any] = {
            "record_id": f"G{i}", "certno": certno, "psn_name": f"参保人{i}", "insuplc_admdvs": region,
            "insutype": "390" if resident else "310", "psn_type": "21" if j % 7 == 0 else "11",
            "begndate": "2020-01-01", "paid_through": lapsed if i % (2 * LAPSE_EVERY) in (0, 7) else year_end,
            "contrib_months": 12 * (j % 30), "voucher_active": i % 3 != 0,
        }
        if not resident:
            rec["emp_no"] = f"E{region}{i % 5000:05d}"
        key = certno.encode()
        out.append((key, f"/province/{region[:2]}0000".encode(), orjson.dumps(rec)))
        if i % DUP_EVERY == 1:  # the same person enrolled by another province too
            other = next(r for r in regions[(i + 3) % len(regions):] + regions if r[:2] != region[:2])
            dup = rec | {"record_id": f"D{i}", "insuplc_admdvs": other}
            out.append((key, f"/province/{other[:2]}0000".encode(), orjson.dumps(dup)))
    return out


async def publish(bootstrap: str, records: list[tuple[bytes, bytes, bytes]]) -> float:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024,
                         compression_type="lz4")
    await p.start()
    t0 = time.perf_counter()
    try:
        pending = []
        for n, (key, source, value) in enumerate(records, 1):
            headers = [("ce_specversion", b"1.0"), ("ce_id", uuid.uuid4().bytes.hex().encode()),
                       ("ce_source", source), ("ce_type", ENROL), ("content-type", b"application/json")]
            pending.append(await p.send("enroll.inbound", value=value, key=key, headers=headers))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
            if n % 200000 == 0:
                progress(f"published {n:,} records")
        await asyncio.gather(*pending)
    finally:
        await p.stop()
    return time.perf_counter() - t0


async def events_out(bootstrap: str) -> int:
    bus = Bus(BusSettings(), bootstrap, "bench-probe")
    ends = await bus.end_offsets([TopicPartition("enroll.events", p) for p in range(4)])
    return sum(ends.values())


def consumed(port: int) -> int:
    """Records the enroll.inbound consumer has dealt with (handled or dead-lettered).

    (Consumer-group offsets would say the same, but Tansu closes the connection on the admin
    client's OffsetFetch, so the service's own counters are read instead.)"""
    s = httpx.get(f"http://127.0.0.1:{port}/ops/stats", timeout=10, headers=headers_for("operator", subject="bench")).json()["inbound"]
    return int(s["handled"]) + int(s["dead_lettered"])


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.running = pid, True
        self.samples: list[float] = []

    def run(self) -> None:
        while self.running:
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
                kb = int(next(line.split()[1] for line in text.splitlines() if line.startswith("VmRSS")))
                self.samples.append(kb / 1024)
            except (OSError, StopIteration):
                pass
            time.sleep(0.5)


def main() -> None:
    n = int(os.environ.get("BENCH_ENROLL_PERSONS", "100000"))
    out_dir = Path(os.environ.get("YIBAO_VAR_DIR", "var"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="yibao-bench-enroll-") as tmp:
        broker = KafkaCluster.on_free_ports(Path(tmp) / "kafka")  # the same Apache Kafka as `yibao run`
        bootstrap = broker.start()
        progress(f"Apache Kafka {kafka_version()} on {bootstrap}")
        proc = None
        try:
            asyncio.run(Bus(BusSettings(), bootstrap, "bench-setup").ensure_topics())
            port = free_port()
            # ERROR by default: the 2 % duplicates are planted, and a WARNING line for each of them
            # (2,000 at the default size) buried the progress lines; the bench counts them itself
            env = dict(os.environ, YIBAO_KAFKA_BOOTSTRAP=bootstrap, YIBAO_BROKER="kafka", YIBAO_VAR_DIR=tmp,
                       YIBAO_ENROLL_PORT=str(port),
                       YIBAO_ENROLL_REMINDER_INTERVAL_S="0",
                       YIBAO_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "ERROR"))
            proc = subprocess.Popen([sys.executable, "-m", "services.enroll"], env=env)
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            progress(f"generating {n:,} persons (2 % enrolled twice, 5 % lapsed)")
            records = population(n)
            sampler = RssSampler(proc.pid)
            sampler.start()
            while not sampler.samples:
                time.sleep(0.1)
            idle_rss = sampler.samples[-1]
            t0 = time.perf_counter()
            publish_s = asyncio.run(publish(bootstrap, records))
            progress(f"published {len(records):,} records in {publish_s:.1f} s; waiting for enroll to consume them")
            consumed_s = events_s = None
            while True:
                lag = len(records) - consumed(port)
                events = asyncio.run(events_out(bootstrap))
                now = time.perf_counter() - t0
                if consumed_s is None and lag <= 0:
                    consumed_s = now
                if events >= len(records):  # one event per record: everything was consumed too
                    events_s = now
                    consumed_s = consumed_s if consumed_s is not None else now
                    break
                progress(f"lag {lag:,} records, {events:,} events out, RSS {sampler.samples[-1]:.0f} MiB")
                time.sleep(2)
            sampler.running = False
            assert consumed_s is not None
            progress("batch duplicate check over the whole registry")
            c0 = time.perf_counter()
            check = httpx.get(f"http://127.0.0.1:{port}/duplicates/check", timeout=600, headers=headers_for("operator", subject="bench")).json()
            check_s = time.perf_counter() - c0
            progress("断保提醒 scan over the whole registry")
            r0 = time.perf_counter()
            reminded = httpx.post(f"http://127.0.0.1:{port}/ops/reminders/scan", timeout=900, headers=headers_for("operator", subject="bench")).json()
            reminders_s = time.perf_counter() - r0
        finally:
            if proc and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
            broker.stop()
    expected_dups = sum(1 for i in range(n) if i % DUP_EVERY == 1)
    result = {
        "persons": n, "records": len(records), "publish_s": round(publish_s, 1),
        "consume_s": round(consumed_s, 1), "records_per_s": round(len(records) / consumed_s),
        "events_out_s": round(events_s, 1),
        "duplicates_expected": expected_dups, "duplicates_detected_incrementally": check["incremental_open"],
        "duplicates_batch_check": check["batch"], "batch_check_consistent": check["consistent"],
        "batch_check_s": round(check_s, 1),
        "lapsed_expected": sum(1 for i in range(n) if i % (2 * LAPSE_EVERY) in (0, 7)), "reminders": reminded,
        "reminder_scan_s": round(reminders_s, 1),
        "rss_mib": {"idle": round(idle_rss), "peak": round(max(sampler.samples)), "end": round(sampler.samples[-1])},
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    (out_dir / "bench-enroll.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
