"""The Kafka cluster every benchmark runs on: a local 3-node Apache Kafka (replication factor 3,
min.insync.replicas 2, producers with acks=all), or the cluster named by ``FLEET2BAN_BENCH_BOOTSTRAP``."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from fleet2ban.kafka import Cluster, ensure_topics, resolve
from fleet2ban.kafka.local import LocalKafka
from fleet2ban.settings import KafkaSettings

BOOTSTRAP_ENV = "FLEET2BAN_BENCH_BOOTSTRAP"


@dataclass
class BenchCluster:
    bootstrap: str
    replication_factor: int
    local: LocalKafka | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [int(a.rpartition(":")[2]) for a in self.bootstrap.split(",")]

    def fresh_topics(self, tag: str, partitions: int = 3) -> Cluster:
        """The fleet's topics under a prefix of their own (``<tag><6 hex>.``), created on this cluster."""
        kafka = KafkaSettings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=f"{tag}{uuid.uuid4().hex[:6]}.",
            partitions=partitions,
            replication_factor=self.replication_factor,
        )
        cluster = resolve(kafka)
        ensure_topics(cluster)
        return cluster


@contextlib.contextmanager
def bench_cluster(nodes: int = 3) -> Iterator[BenchCluster]:
    """A cluster for one benchmark run (started and stopped here unless one is configured)."""
    given = os.environ.get(BOOTSTRAP_ENV)
    if given:
        yield BenchCluster(given, int(os.environ.get("FLEET2BAN_BENCH_REPLICATION", "1")))
        return
    with LocalKafka(nodes) as k:
        yield BenchCluster(k.bootstrap, k.replication_factor, k, k.pids())
