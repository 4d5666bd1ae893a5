"""The local Apache Kafka: starts from its jars, serves confluent-kafka and aiokafka, replicates,
creates and checks topics, and stops cleanly (CLI and library), never leaving a JVM behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from fleet2ban.exceptions import BrokerError, CapabilityError
from fleet2ban.kafka import Cluster, aiokafka_kwargs, ensure_topics, producer_config, read_to_end, resolve
from fleet2ban.kafka.local import LocalKafka, fetch_jars, free_port
from fleet2ban.settings import KafkaSettings
from fleet2ban.waiting import wait_for

pytestmark = pytest.mark.kafka


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _java_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "java"], check=False, capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_session_cluster_has_three_brokers_and_topics_replicate_three_times(cluster: Cluster) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    meta = admin.list_topics(timeout=10)
    assert len(meta.brokers) == 3
    events = meta.topics[cluster.topics.events]
    assert all(len(p.replicas) == 3 for p in events.partitions.values())

    def all_in_sync() -> bool:  # followers join the ISR a moment after the topic is created
        parts = admin.list_topics(cluster.topics.events, timeout=10).topics[cluster.topics.events].partitions
        return all(len(p.isrs) == 3 for p in parts.values())

    wait_for(all_in_sync, 20, "every replica of events in sync", every=0.2)


def test_confluent_produce_and_read_back(cluster: Cluster) -> None:
    p = Producer(producer_config(cluster, linger_ms=0))
    for i in range(50):
        p.produce(cluster.topics.events, key=f"10.0.0.{i % 7}".encode(), value=str(i).encode())
    assert p.flush(10) == 0
    records = read_to_end(cluster, cluster.topics.events)
    assert sorted(int(r.value or b"") for r in records) == list(range(50))
    # one key always lands in one partition (murmur2)
    parts: dict[bytes | None, set[int]] = {}
    for r in records:
        parts.setdefault(r.key, set()).add(r.partition)
    assert all(len(v) == 1 for v in parts.values())


def test_aiokafka_produce_and_consume(cluster: Cluster) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    async def go() -> list[bytes]:
        producer = AIOKafkaProducer(**aiokafka_kwargs(cluster), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(cluster.topics.reports, key=b"h", value=b"m%d" % i)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(**aiokafka_kwargs(cluster), enable_auto_commit=False)
        await consumer.start()
        try:
            parts = range(cluster.settings.partitions)
            consumer.assign([TopicPartition(cluster.topics.reports, p) for p in parts])
            await consumer.seek_to_beginning()
            out: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(out) < 5 and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                out += [m.value for msgs in batch.values() for m in msgs if m.value]
            return out
        finally:
            await consumer.stop()

    assert sorted(asyncio.run(go())) == [b"m0", b"m1", b"m2", b"m3", b"m4"]


def test_topics_create_is_idempotent_and_reports_mismatch(kafka_settings: KafkaSettings) -> None:
    c = resolve(kafka_settings)
    first = {t.name: t.status for t in ensure_topics(c)}
    assert set(first.values()) == {"created"}
    second = {t.name: t.status for t in ensure_topics(c)}
    assert set(second.values()) == {"ok"}
    wider = resolve(kafka_settings.model_copy(update={"partitions": 5, "replication_factor": 2}))
    mismatched = {t.name: t for t in ensure_topics(wider)}
    assert mismatched[c.topics.events].status == "mismatch"
    assert "partitions 3" in mismatched[c.topics.events].detail
    assert "replication factor 3 (want 2)" in mismatched[c.topics.events].detail
    have_ms = int(kafka_settings.events_retention_hours * 3600 * 1000)
    longer = resolve(kafka_settings.model_copy(update={"events_retention_hours": 48.0}))
    checks = {t.name: t for t in ensure_topics(longer)}
    assert f"retention.ms={have_ms} (want 172800000)" in checks[c.topics.events].detail


def test_a_port_in_use_is_a_clear_error_before_anything_starts(kafka_bootstrap: str) -> None:
    port = int(kafka_bootstrap.split(",", maxsplit=1)[0].rpartition(":")[2])
    with pytest.raises(BrokerError, match="is in use"):
        LocalKafka(1, port=port).start()


def test_unreachable_broker_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(BrokerError, match="unreachable"):
        ensure_topics(resolve(KafkaSettings(), f"127.0.0.1:{port}"), timeout=2)


def test_fetching_without_maven_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CapabilityError, match="Maven"):
        fetch_jars("4.1.1", tmp_path / "cache")


def test_cli_broker_prints_bootstrap_serves_and_leaves_no_jvm_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet2ban.cli.main", "broker", "--data", str(tmp_path / "k")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        host, _, port = line.rpartition(":")
        assert host == "127.0.0.1" and port.isdigit(), proc.stderr.read() if proc.stderr else ""
        names = {t.name for t in ensure_topics(resolve(KafkaSettings(), line))}
        assert "fleet2ban.bans" in names
        jvms = _java_children(proc.pid)
        assert len(jvms) == 1, "one node, one JVM"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        wait_for(lambda: not any(_alive(p) for p in jvms), 10, "the JVM to exit with the CLI")
        assert (tmp_path / "k" / "n1" / "log" / "meta.properties").is_file(), "--data keeps the data"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_nodes_die_with_a_killed_parent() -> None:
    code = (
        "from fleet2ban.kafka.local import LocalKafka; import time; k=LocalKafka(1).start(); "
        "print(*k.pids(), flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in (proc.stdout.readline() if proc.stdout else "").split()]
        assert pids and all(_alive(p) for p in pids)
        proc.kill()
        proc.wait(5)
        wait_for(lambda: not any(_alive(p) for p in pids), 10, "the JVM to die with its kill -9'd parent")
    finally:
        if proc.poll() is None:
            proc.kill()
