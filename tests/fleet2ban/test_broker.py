"""The embedded broker: starts, serves confluent-kafka and aiokafka, creates topics, stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer

from fleet2ban.broker import EmbeddedBroker, free_port
from fleet2ban.exceptions import BrokerError
from fleet2ban.kafka import Cluster, aiokafka_kwargs, ensure_topics, producer_config, read_to_end, resolve
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


def test_session_broker_is_detected_as_embedded(cluster: Cluster) -> None:
    assert cluster.embedded


def test_confluent_produce_and_read_back(cluster: Cluster) -> None:
    p = Producer(producer_config(cluster, linger_ms=0))
    for i in range(50):
        p.produce(cluster.topics.events, key=f"10.0.0.{i % 7}".encode(), value=str(i).encode())
    assert p.flush(10) == 0
    got = sorted(int(m.value()) for m in read_to_end(cluster, cluster.topics.events))
    assert got == list(range(50))
    # one key always lands in one partition (murmur2)
    parts: dict[bytes, set[int]] = {}
    for m in read_to_end(cluster, cluster.topics.events):
        parts.setdefault(m.key(), set()).add(m.partition())
    assert all(len(v) == 1 for v in parts.values())


def test_aiokafka_produce_and_consume(cluster: Cluster) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    async def go() -> list[bytes]:
        producer = AIOKafkaProducer(**aiokafka_kwargs(cluster), acks="all", enable_idempotence=False)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(cluster.topics.reports, key=b"h", value=b"m%d" % i)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(**aiokafka_kwargs(cluster), enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(cluster.topics.reports) or set()
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
    wider = resolve(kafka_settings.model_copy(update={"partitions": 5}))
    mismatched = {t.name: t for t in ensure_topics(wider)}
    assert mismatched[c.topics.events].status == "mismatch"
    assert "partitions 3" in mismatched[c.topics.events].detail


def test_context_manager_stops_the_process() -> None:
    with EmbeddedBroker() as b:
        pid = b.pid
        assert pid is not None and _alive(pid)
        assert resolve(KafkaSettings(), b.bootstrap).embedded
    wait_for(lambda: not _alive(pid), 10, "the broker process to exit")


def test_port_in_use_is_a_clear_error() -> None:
    with EmbeddedBroker() as b, pytest.raises(BrokerError):
        EmbeddedBroker(port=b.port).start(timeout=3)


def test_unreachable_broker_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(BrokerError, match="unreachable"):
        ensure_topics(resolve(KafkaSettings(flavor="kafka"), f"127.0.0.1:{port}"), timeout=2)


def test_cli_broker_prints_bootstrap_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet2ban.cli.main", "broker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        host, _, port = line.rpartition(":")
        assert host == "127.0.0.1" and port.isdigit()
        c = resolve(KafkaSettings(), line)
        names = {t.name for t in ensure_topics(c)}
        assert "fleet2ban.bans" in names
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], check=False, capture_output=True, text=True
        ).stdout.split()
        assert children, "the broker runs as a child process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        wait_for(lambda: not any(_alive(int(p)) for p in children), 10, "the broker to exit with the CLI")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_broker_dies_with_a_killed_parent() -> None:
    code = "from fleet2ban.broker import EmbeddedBroker; import time; b=EmbeddedBroker().start(); print(b.pid, flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline()) if proc.stdout else 0
        assert _alive(child)
        proc.kill()
        proc.wait(5)
        wait_for(lambda: not _alive(child), 10, "the broker to die with its kill -9'd parent")
    finally:
        if proc.poll() is None:
            proc.kill()
