"""Apache Kafka on loopback: jars from Maven Central, KRaft nodes (one, or three for fault tests).

`deploy/kafka/pom.xml` pins the release; Maven copies its runtime jars into `<home>/lib`. Each node
is one JVM in combined mode (broker and controller) with a static voter list, formatted once and
restarted on the same data. The cluster is ready when every node, asked on its own port, lists every node.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.bus.broker import die_with_parent, free_port, port_open

log = logging.getLogger("yibao.bus.kafka")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
POM = DEPLOY / "pom.xml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
# Sized for two cores shared with the services: a small heap, at most two GC threads.
# G1 (Kafka's own default) with short pauses: under 300 settlements/s the serial collector paused
# the broker, and every leg of every claim in flight, 12 ms at the median every 1-2 s and 66-73 ms
# when it collected the old generation; G1 5-6 ms, at most 15-21 ms (docs/performance.md)
DEFAULT_JVM_OPTS = ("-Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=10 -XX:ParallelGCThreads=2 "
                    "-XX:ConcGCThreads=1 -XX:MaxMetaspaceSize=160m -Djava.awt.headless=true")


class KafkaUnavailableError(RuntimeError):
    """Java 17+ or Maven is missing, the jars cannot be fetched, or a node does not come up."""


def kafka_version() -> str:
    m = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert m, f"{POM} names no kafka.version"
    return m.group(1)


def java_major() -> int | None:
    """The major version of the `java` on PATH, or None without one."""
    java = shutil.which("java")
    if not java:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def why_not_kafka() -> str | None:
    """None when this machine can run Kafka (Java ≥ 17, and Maven or jars already fetched)."""
    major = java_major()
    if major is None:
        return "no java on PATH"
    if major < 17:
        return f"java {major} found, Kafka {kafka_version()} needs 17 or newer"
    if not shutil.which("mvn") and not Jars().ready():
        return "no mvn on PATH to fetch Kafka's jars"
    return None


@dataclass
class Jars:
    """Kafka's runtime jars in a cache the project owns, stamped with the pom they came from."""

    home: Path = field(default_factory=lambda: Path(os.environ.get("YIBAO_KAFKA_HOME", str(DEPLOY.parents[1] / "var" / "kafka"))))

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    def _stamp(self) -> str:
        return hashlib.sha256(POM.read_bytes()).hexdigest()[:16]

    def ready(self) -> bool:
        stamp = self.lib / ".pom-sha"
        return stamp.exists() and stamp.read_text() == self._stamp()

    def classpath(self) -> str:
        return str(self.lib.resolve() / "*")

    def fetch(self, say: Callable[[str], None] = print) -> None:
        """Resolve the pom's runtime jars through Maven (its local repository caches them)."""
        if self.ready():
            return
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaUnavailableError("no mvn on PATH: install Maven to fetch Kafka's jars")
        tmp = self.home / "lib.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        say(f"kafka: resolving Apache Kafka {kafka_version()} and its runtime jars with Maven "
            f"into {self.lib} (first time only)")
        cmd = [mvn, "-B", "-f", str(POM), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={tmp.resolve()}"]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        downloaded, last_said = 0, 0.0
        tail: list[str] = []
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            if "Downloaded from" in line:
                downloaded += 1
                if time.monotonic() - last_said > 3:
                    say(f"kafka:   {downloaded} files downloaded ({time.monotonic() - started:.0f} s)")
                    last_said = time.monotonic()
        if proc.wait() != 0:
            raise KafkaUnavailableError("Maven could not resolve Kafka's jars:\n  " + "\n  ".join(tail))
        jars = list(tmp.glob("*.jar"))
        (tmp / ".pom-sha").write_text(self._stamp())
        shutil.rmtree(self.lib, ignore_errors=True)
        tmp.rename(self.lib)
        say(f"kafka: {len(jars)} jars ready in {self.lib} ({downloaded} downloaded, "
            f"{time.monotonic() - started:.0f} s)")


def new_cluster_id() -> str:
    """16 random bytes, base64url without padding, not starting with '-' (as Kafka's Uuid)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.dir / "kafka.pid"

    def pid(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None


class KafkaCluster:
    """One or more KRaft nodes on 127.0.0.1, data under `data_dir`.

    A node i listens for clients on `ports[i]` and for the quorum on `controller_ports[i]`.
    `attached` nodes die with the process that started them (tests, `yibao run`); detached ones
    (`yibao kafka start`) run until `yibao kafka stop`.
    """

    def __init__(self, data_dir: Path, ports: list[int], controller_ports: list[int],
                 jars: Jars | None = None, attached: bool = True) -> None:
        assert len(ports) == len(controller_ports) >= 1
        self.data_dir, self.jars, self.attached = data_dir, jars or Jars(), attached
        self.nodes = [Node(i + 1, p, c, data_dir / f"node{i + 1}") for i, (p, c) in
                      enumerate(zip(ports, controller_ports, strict=True))]

    @classmethod
    def on_free_ports(cls, data_dir: Path, nodes: int = 1, **kw: object) -> KafkaCluster:
        return cls(data_dir, [free_port() for _ in range(nodes)], [free_port() for _ in range(nodes)], **kw)  # type: ignore[arg-type]

    @classmethod
    def local(cls, data_dir: Path, port: int = 9092, nodes: int = 1, **kw: object) -> KafkaCluster:
        """Clients on port, port+1, …; controllers on the ports after them (9092 → 9093 for one node)."""
        return cls(data_dir, [port + i for i in range(nodes)], [port + nodes + i for i in range(nodes)], **kw)  # type: ignore[arg-type]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    # --- configuration ------------------------------------------------------------------

    def properties(self, node: Node) -> str:
        n = len(self.nodes)
        rf, isr = (3, 2) if n >= 3 else (n, 1)
        voters = ",".join(f"{x.node_id}@127.0.0.1:{x.controller_port}" for x in self.nodes)
        base = (DEPLOY / "server.properties").read_text()
        return base + "\n".join([
            "", "# written by services/bus/kafka.py for this node",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
            f"log.dirs={(node.dir / 'data').resolve()}",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            f"offsets.topic.replication.factor={rf}",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            "",
        ])

    def _java(self, node: Node, main: str, *args: str) -> list[str]:
        opts = os.environ.get("YIBAO_KAFKA_JVM_OPTS", DEFAULT_JVM_OPTS).split()
        return ["java", *opts, f"-Dlog4j2.configurationFile={(DEPLOY / 'log4j2.properties').resolve()}",
                "-cp", self.jars.classpath(), main, *args]

    def format(self) -> None:
        """Write each node's properties; format the nodes not yet formatted, with one cluster id."""
        cid_file = self.data_dir / "cluster.id"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not cid_file.exists():
            cid_file.write_text(new_cluster_id())
        cid = cid_file.read_text().strip()
        todo = []
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            (node.dir / "server.properties").write_text(self.properties(node))
            if not (node.dir / "data" / "meta.properties").exists():
                todo.append(subprocess.Popen(
                    self._java(node, "kafka.tools.StorageTool", "format", "-t", cid,
                               "-c", str(node.dir / "server.properties"), "--ignore-formatted"),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for proc in todo:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise KafkaUnavailableError("formatting Kafka's storage failed:\n" + out.decode()[-2000:])

    # --- processes ----------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> str:
        """Fetch, format, start every node; return the bootstrap list once every node is listed."""
        self.jars.fetch()
        busy = [p for n in self.nodes for p in (n.port, n.controller_port) if port_open(p)]
        if busy:
            raise KafkaUnavailableError(f"port(s) {busy} already in use: stop what listens there "
                                        "(`yibao kafka stop`?) or choose other ports")
        self.format()
        for node in self.nodes:
            self.start_node(node)
        self.wait_ready(timeout)
        return self.bootstrap

    def start_node(self, node: Node) -> None:
        log_file = open(node.dir / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
        node.proc = subprocess.Popen(
            self._java(node, "kafka.Kafka", str(node.dir / "server.properties")),
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent if self.attached else None,
        )
        log_file.close()
        node.pid_file.write_text(str(node.proc.pid))

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until every node, asked on its own port, lists all of them: a node the others already
        list may not accept connections yet (a client told of it is refused)."""
        want = len(self.nodes)
        end = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise KafkaUnavailableError(
                        f"Kafka node {node.node_id} exited with code {node.proc.returncode}; "
                        f"its log: {node.dir / 'server.log'}\n{self.log_tail(node)}")
            # a port not yet listening is not asked: the client would log each refused connection
            if all(port_open(n.port) and _run(_count_brokers(f"127.0.0.1:{n.port}")) >= want for n in self.nodes):
                return
            if time.monotonic() > end:
                raise KafkaUnavailableError(f"Kafka did not list {want} broker(s) within {timeout:.0f} s; "
                                            f"logs under {self.data_dir}")
            time.sleep(0.25)

    def live_brokers(self) -> int:
        """How many brokers a metadata request lists (0 when none answers)."""
        up = [n for n in self.nodes if port_open(n.port)]
        return _run(_count_brokers(",".join(f"127.0.0.1:{n.port}" for n in up))) if up else 0

    def log_tail(self, node: Node, lines: int = 15) -> str:
        try:
            return "\n".join((node.dir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, node: Node) -> None:
        """kill -9: a crash, for fault tests."""
        pid = node.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
        if node.proc is not None:
            node.proc.wait(10)
        node.proc = None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown) to every node; SIGKILL what is still up after `timeout`."""
        pids = [(n, n.pid()) for n in self.nodes]
        for _, pid in pids:
            if pid:
                os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        for node, pid in pids:
            while pid and _alive(pid) and time.monotonic() < end:
                if node.proc is not None:
                    try:
                        node.proc.wait(0.1)
                    except subprocess.TimeoutExpired:
                        continue
                else:
                    time.sleep(0.1)
            if pid and _alive(pid):
                log.warning("Kafka node %d did not stop in %.0f s: killing it", node.node_id, timeout)
                os.kill(pid, signal.SIGKILL)
            if node.proc is not None:
                node.proc.wait(10)
            node.proc = None
            node.pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


async def _count_brokers(bootstrap: str) -> int:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await asyncio.wait_for(client.bootstrap(), 3)
        return len(client.cluster.brokers())
    except Exception:
        return 0
    finally:
        await client.close()


def _run(coro: object) -> int:
    """Run a coroutine from synchronous code, also when the caller's thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


def main_status(cluster: KafkaCluster) -> int:
    """Print each node's state; 0 when every node runs and is listed."""
    listed = cluster.live_brokers()
    for node in cluster.nodes:
        pid = node.pid()
        print(f"node {node.node_id}  127.0.0.1:{node.port}  {'running, pid ' + str(pid) if pid else 'stopped'}")
    print(f"{listed} of {len(cluster.nodes)} broker(s) listed by a metadata request at {cluster.bootstrap}")
    return 0 if listed == len(cluster.nodes) else 1

