"""A processor worker and the brokers under it dying, on a 3-node Kafka of the test's own (replication 3,
``min.insync.replicas`` 2).

- A worker started right after a broker was killed (before the controller fenced it) starts and bans.
  Faust sent its CreateTopics for the changelog and the leader topic to the broker the metadata named
  as controller, and the worker died on that one being gone (NodeNotReadyError); now fleet2ban creates
  the changelog with Kafka's admin client and Faust declares nothing (``processor.app.changelog_spec``).
- The broker that coordinates the worker's group is killed: the worker finds the new coordinator,
  rejoins and bans again within a bound (measured 8.3 s: the dead broker is fenced after 6 s here).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet2ban.kafka import admin_config
from fleet2ban.kafka.local import LocalKafka

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]

COORDINATOR_BOUND_S = 45.0


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    # the controller fences a dead broker after its session (9 s by default): 6 s here
    overrides = {"broker.session.timeout.ms": "6000", "broker.heartbeat.interval.ms": "1000"}
    with LocalKafka(3, data_dir=tmp_path / "kafka", overrides=overrides) as k:
        yield k


def coordinator(cluster: Any, group: str) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**admin_config(cluster), "log_level": 0})
    (fut,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    return int(fut.result(15).coordinator.id)


def test_a_worker_starts_next_to_a_dead_broker_and_survives_its_coordinator_s_death(
    kafka: LocalKafka, make_fleet: Callable[..., Any]
) -> None:
    fleet = make_fleet(kafka.bootstrap, replication_factor=3)
    kafka.kill(3)  # not yet fenced: the metadata still names it (as leader, as "controller")
    worker = fleet.start_worker(metrics=False)
    fleet.fail("198.51.100.1", 20)
    # the produce itself waits for the dead broker to leave the ISR (replica.lag.time.max.ms 10 s)
    fleet.wait_decision("198.51.100.1", timeout=90)
    assert worker.poll() is None, fleet.logs()

    kafka.restart(3)
    fleet.wait_for("node 3 back in the cluster", lambda: len(_brokers(fleet.cluster)) == 3, 60, every=0.5)
    victim = coordinator(fleet.cluster, f"{fleet.prefix}fleet2ban-processor")
    kafka.kill(victim)
    killed = time.monotonic()
    fleet.fail("198.51.100.2", 20)
    fleet.wait_decision("198.51.100.2", timeout=COORDINATOR_BOUND_S + 30)
    took = time.monotonic() - killed
    print(f"coordinator (node {victim}) killed: the worker banned again after {took:.1f}s")
    assert took < COORDINATOR_BOUND_S, fleet.logs()
    assert worker.poll() is None, fleet.logs()
    for ip in ("198.51.100.1", "198.51.100.2"):
        assert len(fleet.decisions(ip)) == 1, fleet.decisions(ip)


def _brokers(cluster: Any) -> list[int]:
    from confluent_kafka.admin import AdminClient

    try:
        meta = AdminClient({**admin_config(cluster), "log_level": 0}).list_topics(timeout=5)
    except Exception:
        return []
    return list(meta.brokers)
