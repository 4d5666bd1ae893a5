"""Suite-wide fixtures: the Kafka cluster every Kafka test shares, and root/namespace detection.

``kafka_bootstrap`` starts a local 3-node Apache Kafka (KRaft, replication factor 3, min.insync.replicas
2) once per session, from the Maven Central jars (:mod:`fleet2ban.kafka.local`). With
``FLEET2BAN_TEST_KAFKA=testcontainers`` and a Docker engine, testcontainers' Kafka is used instead; without
Docker that choice skips the Kafka tests with a clear reason rather than silently falling back. With
``FLEET2BAN_TEST_KAFKA=HOST:PORT`` the tests use that cluster.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fleet2ban.contract import Topics
from fleet2ban.kafka import Cluster, ensure_topics, resolve
from fleet2ban.kafka.local import LocalKafka
from fleet2ban.settings import KafkaSettings

TEST_KAFKA_ENV = "FLEET2BAN_TEST_KAFKA"


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


TEST_REPLICATION = 3
"""The suite's cluster has 3 nodes; its topics are created with replication factor 3 (min ISR 2)."""


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    """The session's local 3-node Apache Kafka (None when the tests use another cluster)."""
    choice = os.environ.get(TEST_KAFKA_ENV, "local")
    if choice != "local":
        yield None
        return
    with LocalKafka(3, data_dir=tmp_path_factory.mktemp("kafka")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: LocalKafka | None) -> Iterator[str]:
    """Bootstrap address of the Kafka cluster for this test session."""
    if local_kafka is not None:
        yield local_kafka.bootstrap
        return
    choice = os.environ[TEST_KAFKA_ENV]
    if choice == "testcontainers":
        if not _docker_available():
            pytest.skip(f"{TEST_KAFKA_ENV}=testcontainers but no Docker engine is reachable")
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kc:
            yield kc.get_bootstrap_server()
        return
    yield choice


@pytest.fixture(scope="session")
def test_replication(local_kafka: LocalKafka | None) -> int:
    return TEST_REPLICATION if local_kafka is not None else 1


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, test_replication: int) -> KafkaSettings:
    """Kafka settings with a fresh topic prefix per test, so tests never see each other's records."""
    return KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=3,
        replication_factor=test_replication,
        # records written with fixed timestamps in the past (T0 of the audit and enforcer tests) must not
        # be deleted by time retention (the local broker checks it every 5 s) while a test reads them;
        # tests of retention set it per topic
        decisions_retention_days=3650.0,
        events_retention_hours=3650.0 * 24,
        reports_retention_days=3650.0,
    )


@pytest.fixture
def cluster(kafka_settings: KafkaSettings) -> Cluster:
    """A resolved cluster whose topics (under a fresh prefix) exist."""
    c = resolve(kafka_settings)
    ensure_topics(c)
    wait_for_leaders(c)
    return c


def wait_for_leaders(c: Cluster, timeout: float = 30.0) -> None:
    """Return once the leader of every partition of the fleet's topics answers an offsets request.

    A topic just created is unknown to its leader for a moment; a consumer assigned to it then can fail
    its first offset query ("Unknown topic or partition") and never read that partition (seen as tests
    whose readers see nothing)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from fleet2ban.kafka import consumer_config
    from fleet2ban.waiting import wait_for

    consumer = Consumer({**consumer_config(c), "log_level": 0})
    names = [c.topics.events, c.topics.decisions, c.topics.bans, c.topics.reports]

    def answers() -> bool:
        try:
            for name in names:
                for p in range(c.settings.partitions):
                    consumer.get_watermark_offsets(TopicPartition(name, p), timeout=2)
            consumer.get_watermark_offsets(TopicPartition(c.topics.allow, 0), timeout=2)
        except KafkaException:
            return False
        return True

    try:
        wait_for(answers, timeout, "every partition's leader to answer", every=0.1)
    finally:
        consumer.close()


@pytest.fixture
def topics(cluster: Cluster) -> Topics:
    return cluster.topics


def is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the audit reader's fallbacks to the per-ban reports (``fleet2ban.audit.reader.load_view``)
    while a test runs: `bans list` answers from the enforcers' digests when they match."""
    from fleet2ban.audit import reader

    calls: list[int] = []
    real = reader.load_view

    def counted(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(reader, "load_view", counted)
    return calls


def netns_unavailable_reason() -> str | None:
    """Why namespace/firewall tests cannot run here, or None when they can."""
    if not is_root():
        return "needs root (network namespaces and firewall rules)"
    for tool in ("ip", "iptables-legacy", "ipset", "nft"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command (the test command installs it as root)"
    if not os.path.isdir("/run/netns") and not os.access("/run", os.W_OK):
        return "cannot create /run/netns"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = netns_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        # In CI we are root with the packages installed: a skipped firewall suite is a failure.
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


FAST_COMPACTION = {
    "segment.ms": "200",  # the next record after 200 ms rolls the segment: the cleaner only takes rolled ones
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "200",  # tombstones go in the cleaning pass after next
}
"""Per-topic settings that make a local broker compact a topic within seconds (log.cleaner.backoff.ms is
100 ms on the local cluster)."""


def alter_topic(cluster: Cluster, topic: str, configs: dict[str, str]) -> None:
    """Set some configs of ``topic`` (incremental: the others keep their values)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    from fleet2ban.kafka import admin_config

    admin = AdminClient({**admin_config(cluster), "log_level": 0})
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()
        ],
    )
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(15)


@pytest.fixture
def topic_configs() -> Any:
    """``topic_configs(cluster, topic, {name: value})``: per-topic settings set by a test (compaction,
    retention), so a test makes the broker compact or delete within seconds."""
    return alter_topic


@pytest.fixture
def compact_fast() -> Any:
    """``compact_fast(cluster, topic)``: make the broker compact ``topic`` within seconds
    (:data:`FAST_COMPACTION`); records written after it roll segments the cleaner then takes."""

    def apply(cluster: Cluster, topic: str) -> None:
        alter_topic(cluster, topic, FAST_COMPACTION)

    return apply
