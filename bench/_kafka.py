"""The Kafka cluster every benchmark runs on: a local 3-node Apache Kafka (replication factor 3,
min.insync.replicas 2, producers with acks=all), or the cluster named by ``FLEET2BAN_BENCH_BOOTSTRAP``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from fleet2ban.kafka.local import LocalKafka

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


@contextlib.contextmanager
def bench_cluster(nodes: int = 3) -> Iterator[BenchCluster]:
    """A cluster for one benchmark run (started and stopped here unless one is configured)."""
    given = os.environ.get(BOOTSTRAP_ENV)
    if given:
        yield BenchCluster(given, int(os.environ.get("FLEET2BAN_BENCH_REPLICATION", "1")))
        return
    with LocalKafka(nodes) as k:
        yield BenchCluster(k.bootstrap, k.replication_factor, k, k.pids())
