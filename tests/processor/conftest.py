"""A harness for processor workers (subprocesses of ``fleet2ban processor``) on the session's broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from fleet2ban import waiting
from fleet2ban.contract import (
    Decision,
    EventBatch,
    Line,
    decode_decision,
    encode,
    utcnow,
)
from fleet2ban.identity import Signer
from fleet2ban.kafka import Cluster, consumer_config, ensure_topics, producer_config, resolve
from fleet2ban.kafka.local import free_port
from fleet2ban.settings import KafkaSettings

T = TypeVar("T")

WORKER_CONFIG: dict[str, Any] = {
    "jails": [
        {"name": "amps", "reasons": ["auth"], "maxretry": 20, "findtime": 10, "bantime": 120},
        {"name": "short", "reasons": ["name in use"], "maxretry": 3, "findtime": 10, "bantime": 2},
    ],
    "processor": {"expiry_interval_s": 0.2, "lateness_s": 5.0},
}


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy (bounded)."""
    return waiting.wait_for(check, timeout, what, every)


class Follower:
    """Reads topics from the beginning (no group) in a thread and keeps every record."""

    def __init__(self, cluster: Cluster, topics: list[str]) -> None:
        self.records: dict[str, list[tuple[bytes | None, bytes | None]]] = {t: [] for t in topics}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(consumer_config(cluster, **{"enable.partition.eof": False}))
        parts = []
        for t in topics:
            meta = self._consumer.list_topics(t, timeout=10).topics[t]
            parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in meta.partitions]
        # a topic just created is unknown to some brokers for a moment: a consumer assigned then can
        # fail its first offset query and never read the partition; start once every leader answers
        wait_for("the topics' leaders to answer", lambda: all(self._answers(tp) for tp in parts), 30, 0.1)
        self._consumer.assign(parts)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _answers(self, tp: TopicPartition) -> bool:
        try:
            self._consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=2)
            return True
        except KafkaException:
            return False

    def _run(self) -> None:
        position: dict[tuple[str, int], int] = {}
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.05):
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise RuntimeError(str(err))
                    topic, part = msg.topic(), msg.partition()
                    if topic and part is not None and part >= 0:  # e.g. a failed offset query: again
                        at = position.get((topic, part), OFFSET_BEGINNING)
                        self._consumer.incremental_unassign([TopicPartition(topic, part)])
                        self._consumer.incremental_assign([TopicPartition(topic, part, at)])
                    continue
                position[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
                with self._lock:
                    self.records[msg.topic()].append((msg.key(), msg.value()))

    def get(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        with self._lock:
            return list(self.records[topic])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


class Fleet:
    """The topics of one test module, a producer standing in for shippers, and processor workers."""

    wait_for = staticmethod(wait_for)

    def __init__(
        self,
        bootstrap: str,
        tmp: Path,
        config: dict[str, Any] | None = None,
        signers: dict[str, Signer] | None = None,
        replication_factor: int = 1,
    ) -> None:
        self.signers = signers or {}
        """host -> its signer: what :meth:`ship` sends for that host is signed (host identity)."""
        self.prefix = f"p{uuid.uuid4().hex[:8]}."
        self.kafka = KafkaSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=self.prefix,
            partitions=3,
            replication_factor=replication_factor,
        )
        self.cluster = resolve(self.kafka)
        ensure_topics(self.cluster)
        self.topics = self.cluster.topics
        self.tmp = tmp
        self.metrics_port = free_port()
        cfg = {
            **(config or WORKER_CONFIG),
            "kafka": {"partitions": 3, "replication_factor": replication_factor},
            "state_dir": str(tmp / "state"),
            "metrics": {"port": self.metrics_port, "bind": "127.0.0.1"},
        }
        self.config_path = tmp / "processor.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.producer = Producer(producer_config(self.cluster, linger_ms=0))
        self.workers: list[subprocess.Popen[bytes]] = []
        self.follower = Follower(self.cluster, [self.topics.decisions, self.topics.bans])
        self._n = 0

    # ------------------------------------------------------------------------------------- workers

    def start_worker(self, metrics: bool = True) -> subprocess.Popen[bytes]:
        n = len(self.workers)
        env = dict(os.environ)
        env.pop("FLEET2BAN_CONFIG", None)
        args = [
            sys.executable,
            "-m",
            "fleet2ban.cli.main",
            "-c",
            str(self.config_path),
            "-b",
            self.cluster.bootstrap,
            "--topic-prefix",
            self.prefix,
            "processor",
        ]
        if not metrics:
            args += ["--metrics-port", "0"]
        log = open(self.tmp / f"worker{n}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- worker{i}.log\n" + (self.tmp / f"worker{i}.log").read_text(errors="replace")[-4000:]
            for i in range(len(self.workers))
        )

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(3)  # a graceful stop; the state dies with the test's topic prefix anyway
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.follower.close()

    # ------------------------------------------------------------------------------------- shipping

    def line_ids(self, host: str, n: int) -> list[str]:
        ids = [f"{host}:test:{self._n + i}" for i in range(n)]
        self._n += n
        return ids

    def ship(
        self,
        ip: str,
        host: str,
        ids: list[str],
        reason: str = "auth",
        ts: datetime | None = None,
        key: bytes | None = None,
    ) -> None:
        ts = ts or utcnow()
        batch = EventBatch(
            host=host,
            ip=ip,
            lines=[Line(id=i, ts=ts, port=40000, client="c", reason=reason, raw=f"line {i}") for i in ids],
        )
        k, value = key if key is not None else ip.encode(), encode(batch)
        signer = self.signers.get(host)
        self.produce_raw(k, value, headers=None if signer is None else signer.headers("events", k, value))

    def produce_raw(
        self,
        key: bytes | None,
        value: bytes | None,
        topic: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.producer.produce(topic or self.topics.events, key=key, value=value, headers=headers)
        self.producer.flush(10)

    def fail(self, ip: str, n: int, host: str = "h1", reason: str = "auth") -> list[str]:
        ids = self.line_ids(host, n)
        self.ship(ip, host, ids, reason)
        return ids

    # --------------------------------------------------------------------------------------- reading

    def decisions(self, ip: str | None = None) -> list[Decision]:
        out = [decode_decision(v) for _, v in self.follower.get(self.topics.decisions)]
        return [d for d in out if ip is None or d.ip == ip]

    def bans(self) -> dict[bytes, bytes | None]:
        latest: dict[bytes, bytes | None] = {}
        for k, v in self.follower.get(self.topics.bans):
            assert k is not None
            latest[k] = v
        return latest

    def ban_records(self, key: bytes) -> list[bytes | None]:
        return [v for k, v in self.follower.get(self.topics.bans) if k == key]

    def wait_decision(
        self, ip: str, action: str = "ban", count: int = 1, timeout: float = 30.0
    ) -> list[Decision]:
        def check() -> list[Decision] | None:
            got = [d for d in self.decisions(ip) if d.action == action]
            return got if len(got) >= count else None

        try:
            return wait_for(f"{count} {action} decision(s) for {ip}", check, timeout)
        except AssertionError:
            print(self.logs())
            raise

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def ready(self, timeout: float = 90.0) -> None:
        """Wait until the workers are consuming: a probe address gets banned. The bound covers a worker's
        start on a loaded 2-core machine (imports, group join, changelog recovery: 40 s was seen to run
        out while the worker was still joining)."""
        probe = f"192.0.2.{len(self.decisions()) % 250 + 1}"
        self.fail(probe, 3, reason="name in use")
        self.wait_decision(probe, timeout=timeout)


def worker_config(jail_changes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``WORKER_CONFIG`` with some jails' settings changed (``{jail name: {setting: value}}``)."""
    changes = jail_changes or {}
    jails = [{**j, **changes.get(j["name"], {})} for j in WORKER_CONFIG["jails"]]
    return {**WORKER_CONFIG, "jails": jails}


@pytest.fixture(scope="module")
def fleet(
    request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """One worker for the whole module, ready to ban.

    A module changes its workers' jails with ``FLEET_JAIL_CHANGES = {jail name: {setting: value}}``, or
    gives their whole settings with ``FLEET_CONFIG``, adds settings sections with ``FLEET_SETTINGS =
    {section: {...}}`` and signs what it ships for a host with ``FLEET_SIGNERS = {host: Signer}``.
    """
    config = {
        **(
            getattr(request.module, "FLEET_CONFIG", None)
            or worker_config(getattr(request.module, "FLEET_JAIL_CHANGES", None))
        ),
        **getattr(request.module, "FLEET_SETTINGS", {}),
    }
    signers = getattr(request.module, "FLEET_SIGNERS", None)
    f = Fleet(kafka_bootstrap, tmp_path_factory.mktemp("fleet"), config, signers)
    f.start_worker()
    try:
        f.ready()
        yield f
    finally:
        f.stop()


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Fleets on a cluster of the test's own (``make_fleet(bootstrap, replication_factor=3)``), stopped after
    the test."""
    made: list[Fleet] = []

    def make(bootstrap: str, **kwargs: Any) -> Fleet:
        tmp = tmp_path / f"fleet{len(made)}"
        tmp.mkdir()
        f = Fleet(bootstrap, tmp, **kwargs)
        made.append(f)
        return f

    try:
        yield make
    finally:
        for f in made:
            f.stop()
