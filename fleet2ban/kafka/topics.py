"""Creating and checking the fleet's topics (partitions, replication, cleanup policy, retention)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fleet2ban.exceptions import BrokerError
from fleet2ban.kafka.config import Cluster, _short, admin_config

log = logging.getLogger(__name__)

CHECKED_CONFIGS = ("cleanup.policy", "retention.ms")


@dataclass
class TopicCheck:
    name: str
    status: str  # "created" | "ok" | "mismatch"
    detail: str = ""


def ensure_topics(cluster: Cluster, timeout: float = 15.0) -> list[TopicCheck]:
    """Create the fleet's topics when missing; report existing ones whose set-up differs. Idempotent.

    Checked on existing topics: the partition count, the replication factor, and the topic configs
    :data:`CHECKED_CONFIGS`.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

    s = cluster.settings
    specs = cluster.topics.specs(s.partitions, s.decisions_retention_days, s.events_retention_hours)
    admin = AdminClient(admin_config(cluster))
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerError(f"Kafka at {cluster.bootstrap} is unreachable: {_short(exc)}") from None
    results: list[TopicCheck] = []
    missing = [sp for sp in specs if sp.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(sp.name, sp.partitions, s.replication_factor, config=sp.config) for sp in missing],
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout)
                results.append(TopicCheck(name, "created"))
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    results.append(TopicCheck(name, "ok", "created concurrently"))
                else:
                    raise BrokerError(f"cannot create topic {name}: {_short(exc)}") from None
    for sp in specs:
        if sp.name not in existing:
            continue
        problems = []
        parts = existing[sp.name].partitions
        if len(parts) != sp.partitions:
            problems.append(f"partitions {len(parts)} (want {sp.partitions})")
        replicas = {len(p.replicas) for p in parts.values()}
        if replicas and replicas != {s.replication_factor}:
            problems.append(
                f"replication factor {','.join(map(str, sorted(replicas)))} (want {s.replication_factor})"
            )
        res = ConfigResource(ConfigResource.Type.TOPIC, sp.name)
        try:
            configs = admin.describe_configs([res], request_timeout=timeout)[res].result(timeout)
        except KafkaException as exc:
            raise BrokerError(f"cannot describe topic {sp.name}: {_short(exc)}") from None
        for key in CHECKED_CONFIGS:
            want = sp.config.get(key)
            got = configs[key].value if key in configs else None
            if want is None or got is None:
                continue
            if key == "cleanup.policy":
                if set(got.split(",")) != set(want.split(",")):
                    problems.append(f"{key}={got} (want {want})")
            elif got != want:
                problems.append(f"{key}={got} (want {want})")
        results.append(TopicCheck(sp.name, "mismatch" if problems else "ok", "; ".join(problems)))
    return results


def ensure_topics_quietly(cluster: Cluster) -> None:
    """Create missing topics before a long-running component starts; mismatches are warned about."""
    for check in ensure_topics(cluster):
        if check.status == "mismatch":
            log.warning("topic %s differs from the design: %s", check.name, check.detail)
        elif check.status == "created":
            log.info("created topic %s", check.name)
