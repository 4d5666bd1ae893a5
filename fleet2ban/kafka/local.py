"""A local Apache Kafka (KRaft) on loopback, run from the Maven Central jars.

The same code serves ``fleet2ban broker``, ``fleet2ban dev``, every local run without a configured
bootstrap, the benches and the test suite. One node by default, or three (replication factor 3,
``min.insync.replicas`` 2). What it needs:

- Java 17+ and Maven (``scripts/setup`` installs Debian's ``default-jre-headless`` and ``maven`` as root);
- the jars: ``org.apache.kafka:kafka_2.13`` with its dependencies plus the SLF4J binding, which the POM
  does not carry (shared/notes/kafka-from-jars.md), fetched once by ``mvn dependency:copy-dependencies``
  into a cache folder (:func:`fetch_jars`).

Each node is one ``java ... kafka.Kafka node.properties`` process that dies with the process that started
it (``PR_SET_PDEATHSIG``), so a killed test run or CLI never leaves a JVM behind.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from fleet2ban.exceptions import BrokerError, CapabilityError
from fleet2ban.kafka.security import SecureSpec

log = logging.getLogger(__name__)

DEFAULT_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.3"
"""The log4j2 of Kafka 4.x's own tarball; ``log4j-slf4j-impl`` binds Kafka's SLF4J 1.7 to it."""
CACHE_ENV = "FLEET2BAN_KAFKA_CACHE"
_PR_SET_PDEATHSIG = 1
_READY_MARK = ".fleet2ban-complete"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.fleet2ban</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """appender.o.type=Console
appender.o.name=O
appender.o.layout.type=PatternLayout
appender.o.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=WARN
rootLogger.appenderRef.o.ref=O
logger.s.name=kafka.server.KafkaRaftServer
logger.s.level=INFO
"""

_JVM_OPTS = [
    "-XX:+UseSerialGC",  # 2-core machines: no parallel GC threads competing with the brokers' own
    "-XX:TieredStopAtLevel=1",  # C1 only: start-up costs a third less CPU; a local broker is never CPU bound
    "-Xss512k",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
]


def cache_dir(version: str, configured: Path | None = None) -> Path:
    """Where the jars of ``version`` live: the setting, ``$FLEET2BAN_KAFKA_CACHE``, or ~/.cache."""
    if configured is not None:
        return configured
    base = os.environ.get(CACHE_ENV)
    root = (
        Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleet2ban"
    )
    return root / f"kafka-{version}"


def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH, version 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise CapabilityError(
            "the local Kafka needs Java 17+: run scripts/setup as root, or apt-get install default-jre-headless"
        )
    return java


def jars_ready(directory: Path) -> bool:
    return (directory / "lib" / _READY_MARK).is_file()


def fetch_jars(
    version: str = DEFAULT_VERSION, directory: Path | None = None, say: Callable[[str], None] | None = None
) -> Path:
    """Fetch Apache Kafka ``version`` and its dependencies from Maven Central into ``directory/lib``, once.

    Returns the ``lib`` folder. Prints one line before fetching and one per jar fetched (through ``say``).
    """
    target = cache_dir(version, directory)
    lib = target / "lib"
    if jars_ready(target):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise CapabilityError(
            "fetching Apache Kafka's jars needs Maven: run scripts/setup as root, or apt-get install maven"
        )
    java_binary()
    emit = say or (lambda line: print(line, file=sys.stderr, flush=True))
    emit(
        f"fetching Apache Kafka {version} (org.apache.kafka:kafka_2.13) from Maven Central into {lib} (once)"
    )
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="lib.", dir=target))
    (target / "pom.xml").write_text(_POM.format(version=version, log4j=LOG4J_VERSION), encoding="utf-8")
    cmd = [
        mvn,
        "-B",
        "-f",
        str(target / "pom.xml"),
        "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip()
        tail = [*tail[-20:], line]
        if line.startswith("Downloaded from") and line.split("(")[0].rstrip().endswith(".jar"):
            name = line.rsplit("/", 1)[-1]
            emit(f"  fetched {name}")
    if proc.wait() != 0:
        shutil.rmtree(staging, ignore_errors=True)
        detail = "\n".join(t for t in tail if "ERROR" in t)[-800:] or "\n".join(tail[-5:])
        raise BrokerError(f"mvn could not fetch Apache Kafka {version}:\n{detail}")
    jars = list(staging.glob("*.jar"))
    if not any(j.name.startswith(f"kafka_2.13-{version}") for j in jars):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(f"mvn finished but kafka_2.13-{version}.jar is missing from {staging}")
    (staging / _READY_MARK).write_text(f"{len(jars)} jars\n", encoding="utf-8")
    if lib.exists():
        shutil.rmtree(lib)
    staging.rename(lib)
    size = sum(j.stat().st_size for j in lib.glob("*.jar")) / 1e6
    emit(f"fetched Apache Kafka {version}: {len(jars)} jars, {size:.0f} MB")
    return lib


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGKILL the JVM when the process that started it dies (even by kill -9)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()  # Ctrl-C in a terminal goes to the parent, which then stops the nodes in order


def _uuid_b64() -> str:
    """A Kafka UUID (cluster id): url-safe base64 of 16 random bytes, no padding, no leading '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def wait_for_metadata(
    bootstrap: str, timeout: float = 15.0, brokers: int = 1, client: dict[str, str] | None = None
) -> None:
    """Return once the cluster at ``bootstrap`` answers a metadata request listing ``brokers`` brokers
    (``client``: the librdkafka properties to connect with, e.g. the super user's credentials)."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    last: object = None
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            **(client or {}),
            "socket.connection.setup.timeout.ms": 1000,
            "log_level": 0,
        }
    )
    while time.monotonic() < deadline:
        try:
            meta = admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if len(meta.brokers) >= brokers:
                return
            last = f"{len(meta.brokers)} of {brokers} brokers registered"
        except Exception as exc:  # KafkaException or a timeout; try again until the deadline
            last = exc
        time.sleep(0.1)
    raise BrokerError(f"no Kafka cluster answered at {bootstrap} within {timeout:.0f}s ({last})")


@dataclass
class _Node:
    node_id: int
    port: int
    controller_port: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    internal_port: int = 0
    """Broker-to-broker listener of a secure cluster (0: the client listener serves it)."""

    @property
    def log_path(self) -> Path:
        return self.data / "server.log"


class LocalKafka:
    """Apache Kafka in KRaft mode on 127.0.0.1: ``nodes`` combined broker+controller processes.

    Use as a context manager, or ``start()``/``stop()``. ``kill(node_id)`` and ``restart(node_id)`` break
    and mend single nodes for fault tests.
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        port: int = 0,
        data_dir: Path | None = None,
        version: str = DEFAULT_VERSION,
        cache: Path | None = None,
        heap_mb: int = 384,
        host: str = "127.0.0.1",
        overrides: dict[str, str] | None = None,
        security: SecureSpec | None = None,
    ) -> None:
        """``security``: SASL_SSL clients, ACLs and SCRAM users (:mod:`fleet2ban.kafka.security`);
        without it every listener is PLAINTEXT and there is no authorizer."""
        if nodes not in (1, 3):
            raise BrokerError(f"a local cluster has 1 or 3 nodes, not {nodes}")
        self.host = host
        self.version = version
        self.heap_mb = heap_mb
        self.overrides = dict(overrides or {})
        self._cache = cache
        self._lib: Path | None = None
        self._own_data = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="fleet2ban-kafka-"))
        ports = [port + i for i in range(nodes)] if port else [free_port(host) for _ in range(nodes)]
        self.nodes = [
            _Node(i + 1, ports[i], free_port(host), self.data_dir / f"n{i + 1}") for i in range(nodes)
        ]
        self.security = security
        if security is not None:
            for n in self.nodes:
                n.internal_port = free_port(host)
        self.cluster_id = _uuid_b64()

    # -------------------------------------------------------------------------------- properties

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    @property
    def replication_factor(self) -> int:
        return min(3, len(self.nodes))

    def client_config(self) -> dict[str, str]:
        """librdkafka properties reaching the cluster as its administrator (the super user when secure)."""
        conf = {"bootstrap.servers": self.bootstrap}
        if self.security is not None:
            conf.update(self.security.client_config())
        return conf

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def node(self, node_id: int) -> _Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise BrokerError(f"no node {node_id} in this cluster")

    def node_for_port(self, port: int) -> int:
        return next(n.node_id for n in self.nodes if n.port == port)

    def running(self) -> bool:
        return bool(self.nodes) and all(n.proc is not None and n.proc.poll() is None for n in self.nodes)

    # ------------------------------------------------------------------------------ configuration

    def _properties(self, node: _Node) -> str:
        n = len(self.nodes)
        rf = self.replication_factor
        isr = 2 if n >= 3 else 1
        voters = ",".join(f"{x.node_id}@{self.host}:{x.controller_port}" for x in self.nodes)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.host}:{node.port},CONTROLLER://{self.host}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{node.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(node.data / "log"),
            "num.partitions": "1",
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(isr),
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(isr),
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(isr),
            "group.initial.rebalance.delay.ms": "0",
            "group.consumer.session.timeout.ms": "6000",
            "group.consumer.min.session.timeout.ms": "2000",
            "group.min.session.timeout.ms": "1000",
            "log.cleaner.backoff.ms": "100",
            "log.cleaner.dedupe.buffer.size": "2097152",
            "log.cleaner.threads": "1",
            "log.initial.task.delay.ms": "100",
            "log.retention.check.interval.ms": "5000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.replica.fetchers": "1",
            "background.threads": "2",
            "replica.lag.time.max.ms": "10000",
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
        }
        if self.security is not None:
            props.update(
                self.security.listener_properties(
                    self.host, node.port, node.internal_port, node.controller_port
                )
            )
        props.update(self.overrides)
        props.update(node.extra)
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self, main: str, *args: str, heap: bool = True) -> list[str]:
        lib = self._jars()
        opts = [f"-Xmx{self.heap_mb}m", f"-Xms{min(self.heap_mb, 128)}m"] if heap else ["-Xmx256m"]
        return [
            java_binary(),
            *opts,
            *_JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{lib}/*",
            main,
            *args,
        ]

    def _jars(self) -> Path:
        if self._lib is None:
            self._lib = fetch_jars(self.version, self._cache)
        return self._lib

    # ---------------------------------------------------------------------------------- lifecycle

    def _format_all(self) -> None:
        """Write each node's properties and format the ones not yet formatted (in parallel)."""
        running: list[tuple[_Node, subprocess.Popen[str]]] = []
        for node in self.nodes:
            node.data.mkdir(parents=True, exist_ok=True)
            conf = node.data / "server.properties"
            conf.write_text(self._properties(node), encoding="utf-8")
            if (node.data / "log" / "meta.properties").is_file():
                continue  # formatted by an earlier run on the same data folder
            cmd = self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(conf),
                *(self.security.format_args() if self.security is not None else []),
                heap=False,
            )
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
            )
            running.append((node, proc))
        for node, proc in running:
            out, _ = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise BrokerError(f"formatting Kafka node {node.node_id} failed: {out[-500:]}")

    def _cluster_id_on_disk(self) -> str | None:
        meta = self.nodes[0].data / "log" / "meta.properties"
        if not meta.is_file():
            return None
        for line in meta.read_text(encoding="utf-8").splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return None

    def _launch(self, node: _Node) -> None:
        if not _port_free(self.host, node.port):
            raise BrokerError(f"cannot start Kafka node {node.node_id}: {self.host}:{node.port} is in use")
        out = open(node.log_path, "ab")  # noqa: SIM115 - closed in _reap
        node.log_file = out
        node.proc = subprocess.Popen(
            self._java("kafka.Kafka", str(node.data / "server.properties")),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - needed for PDEATHSIG
        )

    def start(self, timeout: float = 90.0) -> LocalKafka:
        """Format (first time), start every node, and wait until the cluster serves metadata with all its
        brokers and takes and returns a record on a replicated topic."""
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2, encoding="utf-8")
        self.cluster_id = self._cluster_id_on_disk() or self.cluster_id
        for node in self.nodes:
            for port in (
                node.port,
                node.controller_port,
                *([node.internal_port] if node.internal_port else []),
            ):
                if not _port_free(self.host, port):
                    raise BrokerError(f"cannot start Kafka node {node.node_id}: {self.host}:{port} is in use")
        try:
            self._format_all()
            for node in self.nodes:
                self._launch(node)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "local Apache Kafka %s ready: bootstrap=%s nodes=%d in %.1fs",
            self.version,
            self.bootstrap,
            len(self.nodes),
            time.monotonic() - started,
        )
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        self._check_alive()
        while True:
            self._check_alive()
            try:
                wait_for_metadata(
                    self.bootstrap,
                    min(2.0, max(0.5, deadline - time.monotonic())),
                    len(self.nodes),
                    client=self.client_config(),
                )
                break
            except BrokerError:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"the local Kafka at {self.bootstrap} was not ready within {timeout:.0f}s;"
                        f" see {self.nodes[0].log_path}"
                    ) from None
        self._probe_produce_consume(max(5.0, deadline - time.monotonic()))

    def _check_alive(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                tail = ""
                with contextlib.suppress(OSError):
                    tail = node.log_path.read_text(errors="replace")[-600:]
                raise BrokerError(
                    f"Kafka node {node.node_id} exited with {node.proc.returncode} at start; {node.log_path}:\n{tail}"
                )

    def _probe_produce_consume(self, timeout: float) -> None:
        """Create a replicated probe topic, write one record with acks=all and read it back."""
        from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        deadline = time.monotonic() + timeout
        topic = "__fleet2ban_probe"
        base: dict[str, str | int | float | bool] = {**self.client_config(), "log_level": 0}
        admin = AdminClient(base)
        while True:
            try:
                fut = admin.create_topics([NewTopic(topic, 1, self.replication_factor)], request_timeout=5)
                fut[topic].result(10)
                break
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    break
                if time.monotonic() > deadline:
                    raise BrokerError(f"the local Kafka cannot create a topic: {exc}") from None
                time.sleep(0.2)
        producer = Producer({**base, "acks": "all", "message.timeout.ms": int(max(1, timeout) * 1000)})
        token = uuid.uuid4().bytes
        producer.produce(topic, token)
        if producer.flush(max(1.0, deadline - time.monotonic())) != 0:
            raise BrokerError(
                f"the local Kafka at {self.bootstrap} did not take a record within {timeout:.0f}s"
            )
        consumer = Consumer({**base, "group.id": "fleet2ban-probe", "enable.auto.commit": False})
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            consumer.assign([TopicPartition(topic, 0, max(0, high - 1))])
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is not None and msg.error() is None and msg.value() == token:
                    return
            raise BrokerError(f"the local Kafka at {self.bootstrap} did not return a record it took")
        finally:
            consumer.close()

    def kill(self, node_id: int) -> None:
        """kill -9 one node (fault tests)."""
        node = self.node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)
        self._reap(node)

    def restart(self, node_id: int, timeout: float = 60.0) -> None:
        """Start a node that was killed or stopped again, on the same ports and data."""
        node = self.node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            return
        deadline = time.monotonic() + timeout
        while not _port_free(self.host, node.port):  # the killed JVM's socket may linger a moment
            if time.monotonic() > deadline:
                raise BrokerError(f"port {node.port} of node {node_id} stays in use")
            time.sleep(0.1)
        self._launch(node)

    def producer_ids(self, topic: str) -> list[int]:
        """The producer id of every record batch of ``topic`` in this cluster's log segments, every replica
        (tests): -1 for a batch of a producer without idempotence, else the id InitProducerId gave it."""
        from aiokafka.record.memory_records import MemoryRecords

        ids = []
        for segment in sorted(self.data_dir.glob(f"n*/log/{topic}-*/*.log")):
            records = MemoryRecords(segment.read_bytes())
            while (batch := records.next_batch()) is not None:
                ids.append(batch.producer_id)
        return ids

    def _reap(self, node: _Node) -> None:
        f, node.log_file = node.log_file, None
        if f is not None:
            f.close()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every node (controlled shutdown), SIGKILL what is left after ``timeout``."""
        live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for node in live:
            assert node.proc is not None
            node.proc.terminate()
        deadline = time.monotonic() + timeout
        for node in live:
            assert node.proc is not None
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)
        for node in self.nodes:
            self._reap(node)
        if live:
            log.info("local Apache Kafka stopped bootstrap=%s", self.bootstrap)
        if self._own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafka:
        return self.start() if not self.running() else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def local_kafka(nodes: int = 1, **kwargs: object) -> Iterator[LocalKafka]:
    """A local cluster for the duration of the ``with`` block."""
    cluster = LocalKafka(nodes, **kwargs)  # type: ignore[arg-type]
    with cluster:
        yield cluster
