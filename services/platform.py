"""Running the platform: one service in this process, or the broker plus every service as processes."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from schemas.events import HopLevel
from services.bus.broker import EmbeddedBroker, free_port
from services.bus.client import Bus
from services.bus.kafka import KafkaCluster, kafka_version, why_not_kafka
from services.bus.settings import BusSettings
from services.http import serve
from services.metrics import MULTIPROC_ENV
from services.service import Service
from services.settings import CommonSettings

log = logging.getLogger("yibao.platform")
SERVICES = ("enroll", "filing", "settle", "monitor")
# `yibao run` runs settle as an API process (hospital requests and their replies) and
# YIBAO_SETTLE_WORKERS worker processes (default 1) that each serve every hop level, the levels
# as separate topics, consumer groups and retry topics, so a hop still fails and retries on its
# own. One worker, measured on the settlement bench (2 cores, 2026-11-24): ~180/s at 150 % CPU, against
# ~170/s at 177 % for the earlier layout of a city worker plus a province/national worker, and
# ~150/s for two workers of all levels: every extra process adds consumers that fetch, heartbeat
# and produce on their own, and the broker charges per request. YIBAO_SETTLE_EXTERNAL names
# levels left to a worker the operator runs (`yibao worker settle --level city`), to stop and
# restart it on its own.
SETTLE_API_LEVELS: tuple[str, ...] = ()
ALL_SETTLE_LEVELS = tuple(level.value for level in HopLevel)


def settle_workers(env: dict[str, str]) -> dict[str, tuple[str, ...]]:
    raw = env.get("YIBAO_SETTLE_WORKERS", "") or "1"
    try:
        n = int(raw)
    except ValueError:
        raise SystemExit(f"YIBAO_SETTLE_WORKERS={raw!r}: give a whole number of settle workers, e.g. 1") from None
    return {f"settle-worker-{i + 1}": ALL_SETTLE_LEVELS for i in range(max(n, 1))}


DEFAULT_PORTS = {"enroll": 8101, "filing": 8102, "settle": 8103, "monitor": 8104}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (YIBAO_LOG_FORMAT=json): time, level, logger, message, and the
    claim's msgid and the hop topic when the message names them."""

    CLAIM = re.compile(r"\bclaim (\w+)")
    HOP = re.compile(r"\b(settle\.(?:city|province|national))\b")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                               "message": message}
        if m := self.CLAIM.search(message):
            out["msgid"] = m.group(1)
        if m := self.HOP.search(message):
            out["hop"] = m.group(1)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s [%(name)s] %(message)s",
                        stream=sys.stdout, force=True)
    if os.environ.get("YIBAO_LOG_FORMAT", "text") == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLogFormatter())
    for noisy in ("aiokafka", "kafka", "httpx", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_service(name: str, bootstrap: str, **kw: Any) -> Service:
    if name == "enroll":
        from services.enroll.app import EnrollService
        return EnrollService(bootstrap, **kw)
    if name == "filing":
        from services.filing.app import FilingService
        return FilingService(bootstrap, **kw)
    if name == "settle":
        from services.settle.app import SettleService
        return SettleService(bootstrap, **kw)
    if name == "monitor":
        from services.monitor.app import MonitorService
        return MonitorService(bootstrap, **kw)
    raise ValueError(f"unknown service {name!r}: one of {', '.join(SERVICES)}")


def require_bootstrap() -> str:
    bootstrap = BusSettings().kafka_bootstrap
    if not bootstrap:
        raise SystemExit("YIBAO_KAFKA_BOOTSTRAP is not set: start the platform with `yibao run`, "
                         "or point this process at a running broker")
    return bootstrap


def _settle_the_heap() -> None:
    """Once a service is up: what start-up built (modules, models, schemas, metadata: most of the
    heap) leaves the collector's generations for good, and the youngest generation is collected
    after 10,000 allocations instead of 700. A full collection then scans what was made since,
    not the whole heap: with the defaults each took 65-135 ms in a settle process under load,
    every 2-3 s, and held its event loop as long."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


async def _serve_until_signalled(svc: Service, with_http: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await svc.start()
    await svc.wait_ready(60)
    _settle_the_heap()
    if with_http and svc.app is not None:
        log.info("%s ready on http://%s:%d", svc.name, CommonSettings().host, svc.port)
        await serve(svc.app, CommonSettings().host, svc.port, stop)
    else:
        log.info("%s worker ready", svc.name)
        await stop.wait()
    log.info("%s stopping: finishing in-flight work", svc.name)
    await svc.stop()


def run_service(name: str, **kw: Any) -> None:
    """Entry of `python -m services.<name>`: serve one service until SIGINT/SIGTERM."""
    setup_logging(CommonSettings().log_level)
    svc = build_service(name, require_bootstrap(), **kw)
    if svc.nice > 0:
        os.nice(min(svc.nice, 19))
        log.info("%s runs at nice %d: the settlement path's processes go first on a busy machine", name, svc.nice)
    asyncio.run(_serve_until_signalled(svc, with_http=svc.app is not None))


async def create_topics(bootstrap: str, partitions: int | None = None, broker: str = "kafka",
                        prefix: str = "") -> list[str]:
    settings = BusSettings(partitions=partitions, broker=broker, topic_prefix=prefix)
    bus = Bus(settings, bootstrap, "yibao-setup")
    made = await bus.ensure_topics()
    if broker == "kafka":
        await bus.wait_group_coordinator()
    return made


def topic_partitions(env: dict[str, str], embedded: bool) -> int | None:
    """Partitions per topic: YIBAO_PARTITIONS; else, on the embedded broker, one per settle worker
    (one process per consumer group needs no more, and each partition is named in every fetch, so
    fewer partitions cost the embedded broker less: docs/performance.md); else, on a cluster, the
    registry's counts."""
    raw = env.get("YIBAO_PARTITIONS", "")
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise SystemExit(f"YIBAO_PARTITIONS={raw!r}: give a whole number of partitions per topic, 1 or more")
        return int(raw)
    return len(settle_workers(env)) if embedded else None


def choose_broker(env: dict[str, str]) -> tuple[str, str]:
    """Which broker `yibao run` uses, and why: ("external"|"kafka"|"embedded", reason)."""
    if env.get("YIBAO_KAFKA_BOOTSTRAP"):
        return "external", "YIBAO_KAFKA_BOOTSTRAP is set"
    if env.get("YIBAO_BROKER") == "embedded":
        return "embedded", "YIBAO_BROKER=embedded"
    why = why_not_kafka()
    if why:
        return "embedded", f"Apache Kafka cannot run here ({why})"
    return "kafka", "Java 17+ and Maven are present"


@dataclass
class Platform:
    """The broker (Apache Kafka from Maven Central, the embedded fallback, or YIBAO_KAFKA_BOOTSTRAP's
    cluster) and one OS process per service."""

    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    broker_port: int = 9092
    var_dir: Path = Path("var")
    env: dict[str, str] = field(default_factory=dict)
    broker: EmbeddedBroker | None = None
    kafka: KafkaCluster | None = None
    bootstrap: str = ""
    broker_name: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    specs: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)  # by process name: how often it was started again
    _watching: threading.Event = field(default_factory=threading.Event)  # set: supervision ends
    _watcher: threading.Thread | None = None

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start_broker(self, env: dict[str, str]) -> str:
        """Start (or find) the broker; print one line naming it and why; return its kind."""
        kind, why = choose_broker(env)
        if kind == "external":
            self.bootstrap = env["YIBAO_KAFKA_BOOTSTRAP"]
            self.broker_name = "external cluster"
            print(f"  broker    {self.bootstrap}  ({self.broker_name}: {why})")
            return env.get("YIBAO_BROKER", "kafka")
        if kind == "kafka":
            data = self.var_dir / "kafka" / "data"
            self.kafka = (KafkaCluster.local(data, self.broker_port) if self.broker_port
                          else KafkaCluster.on_free_ports(data))
            self.bootstrap = self.kafka.start()
            self.broker_name = f"Apache Kafka {kafka_version()}"
            print(f"  broker    {self.bootstrap}  {self.broker_name}, KRaft, one node ({why}); "
                  f"data and log in {self.kafka.nodes[0].dir}")
            return "kafka"
        self.broker = EmbeddedBroker(self.broker_port or free_port(), self.var_dir / "broker.log")
        self.bootstrap = self.broker.start()
        self.broker_name = "embedded Tansu"
        print(f"  broker    {self.bootstrap}  {self.broker_name}, memory only ({why}); log {self.var_dir / 'broker.log'}")
        return "embedded"

    def start(self, timeout: float = 90.0) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        base = dict(os.environ, **self.env)
        try:
            kind = self.start_broker(base)
        except RuntimeError:
            self.stop()
            raise
        base |= {"YIBAO_KAFKA_BOOTSTRAP": self.bootstrap, "YIBAO_VAR_DIR": str(self.var_dir), "YIBAO_BROKER": kind,
                 MULTIPROC_ENV: str(self.fresh_metrics_dir())}
        base.setdefault("YIBAO_SETTLE_MONITOR_URL", self.url("monitor"))  # the console's alerts page
        workers = settle_workers(base)
        partitions = topic_partitions(base, embedded=kind == "embedded")
        if partitions:  # the services re-create topics after a broker restart: the same count
            base["YIBAO_PARTITIONS"] = str(partitions)
        made = asyncio.run(create_topics(self.bootstrap, partitions, kind, base.get("YIBAO_TOPIC_PREFIX", "")))
        print(f"  topics    {len(made)} created from the registry in schemas/topics.py"
              + (f", {partitions} partition(s) each" if partitions else ""))
        if partitions and partitions < len(workers):
            print(f"  note      {len(workers)} settle workers share {partitions} partition(s) per topic:"
                  " the extra workers stay idle")
        external = {x.strip() for x in base.get("YIBAO_SETTLE_EXTERNAL", "").split(",") if x.strip()}
        for name in SERVICES:
            env = base | {f"YIBAO_{name.upper()}_PORT": str(self.ports[name])}
            if name == "settle":
                env["YIBAO_SETTLE_LEVELS"] = ",".join(lv for lv in SETTLE_API_LEVELS if lv not in external)
            self.launch(name, [sys.executable, "-m", f"services.{name}"], env)
        for proc_name, levels in workers.items():
            mine = ",".join(lv for lv in levels if lv not in external)
            if mine:
                self.launch(proc_name, [sys.executable, "-m", "services.cli", "worker", "settle", "--level", mine], base)
        if external:
            print(f"  settle    levels {', '.join(sorted(external))} left to `yibao worker settle --level ...`")
        self.wait_healthy(timeout)
        self._watching.clear()
        self._watcher = threading.Thread(target=self._supervise, name="yibao-supervisor", daemon=True)
        self._watcher.start()

    def fresh_metrics_dir(self) -> Path:
        """Where every process of this run writes its metrics, so that /metrics of any service
        shows the platform's (services/metrics.py); emptied at start."""
        d = self.var_dir / "metrics"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def launch(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.specs[name] = (cmd, env)
        self.procs[name] = subprocess.Popen(cmd, env=env)

    def _supervise(self) -> None:
        """Every half second: a service, worker or broker that exited is started again, after a
        backoff that doubles (1 s to 30 s) while it keeps dying within a minute of its start."""
        backoff: dict[str, float] = {}
        started: dict[str, float] = {}
        while not self._watching.wait(0.5):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    if time.monotonic() - started.get(name, 0) > 60:
                        backoff.pop(name, None)
                    continue
                wait = backoff.get(name, 1.0)
                log.error("%s exited with code %s: restarting it in %.0f s (restart %d)", name, code, wait,
                          self.restarts.get(name, 0) + 1)
                if self._watching.wait(wait):
                    return
                cmd, env = self.specs[name]
                self.procs[name] = subprocess.Popen(cmd, env=env)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                started[name], backoff[name] = time.monotonic(), min(wait * 2, 30.0)
            self._supervise_broker()

    def _supervise_broker(self) -> None:
        if self.kafka is not None:
            for node in self.kafka.nodes:
                if node.pid() is None and not self._watching.is_set():
                    log.error("Kafka node %d is down: starting it again", node.node_id)
                    self.kafka.start_node(node)
                    self.restarts["broker"] = self.restarts.get("broker", 0) + 1
        elif self.broker is not None and self.broker.pid is not None and not self.broker.running():
            log.error("the embedded broker exited: starting a new one (its data is gone; services recover)")
            self.broker.start()
            self.restarts["broker"] = self.restarts.get("broker", 0) + 1

    def wait_healthy(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        pending = set(SERVICES)
        while pending:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited with code {proc.returncode} during start-up")
            for name in list(pending):
                try:
                    if httpx.get(self.url(name) + "/healthz", timeout=1).status_code == 200:
                        pending.discard(name)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"services not healthy within {timeout}s: {sorted(pending)}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.stop_services()
        if self.broker:
            self.broker.stop()
            self.broker = None
        if self.kafka:
            self.kafka.stop()
            self.kafka = None

    def stop_services(self) -> None:
        self._watching.set()  # nothing is restarted from here on
        if self._watcher is not None:
            self._watcher.join(timeout=35)
            self._watcher = None
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 20 s: killing it", name)
                proc.kill()
        self.procs.clear()
