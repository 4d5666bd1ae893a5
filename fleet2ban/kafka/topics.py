"""Creating and checking the fleet's topics (partitions, replication, min ISR, cleanup policy, retention).

A component checks only the topics it uses (``uses``), one metadata request per topic, so a principal
with only its role's ACLs never stumbles on a topic it may not see: Kafka hides such topics from a full
listing, and answers TOPIC_AUTHORIZATION_FAILED for one asked by name. Missing topics are created when
the principal may (``Create``); otherwise the error names the ACL or the command that is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fleet2ban.contract import TopicSpec
from fleet2ban.exceptions import BrokerError
from fleet2ban.kafka.config import Cluster, KafkaAuthorizationError, _short, admin_config, check_connection

log = logging.getLogger(__name__)

CHECKED_CONFIGS = ("cleanup.policy", "retention.ms", "min.insync.replicas")


@dataclass
class TopicCheck:
    name: str
    status: str  # "created" | "ok" | "mismatch"
    detail: str = ""


def min_insync_replicas(cluster: Cluster) -> int:
    """``kafka.min_insync_replicas``, or 2 with a replication factor of 3 or more (1 below)."""
    s = cluster.settings
    if s.min_insync_replicas is not None:
        return s.min_insync_replicas
    return 2 if s.replication_factor >= 3 else 1


def _is_auth(err: Any) -> bool:
    from confluent_kafka import KafkaError

    code = err.code() if hasattr(err, "code") else None
    return code in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    ) or "AUTHORIZATION_FAILED" in str(err)


def _kafka_error(exc: BaseException) -> Any:
    return exc.args[0] if exc.args else exc


def ensure_topics(  # noqa: C901  # create-or-check of every topic and its configs; kafka layer not in this change
    cluster: Cluster,
    timeout: float = 15.0,
    *,
    uses: Iterable[str] | None = None,
    create: bool = True,
    configs: bool | None = None,
    extra: Iterable[TopicSpec] = (),
) -> list[TopicCheck]:
    """Check the fleet's topics (or only those whose suffix is in ``uses``: ``events``, ``bans``...),
    creating missing ones when ``create``; report existing ones whose set-up differs. Idempotent.
    ``extra`` adds topics of one component (the processor's changelog), checked the same way.

    Checked: the partition count and replication factor (metadata, which every role may see), and the
    topic configs :data:`CHECKED_CONFIGS` (``configs``: needs DescribeConfigs; None = checked where
    allowed, silently skipped where not). Raises :class:`KafkaAuthorizationError` (one line naming the
    ACL) when the principal may not see a topic it uses, or may not create a missing one.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

    s = cluster.settings
    wanted = set(uses) if uses is not None else None
    specs = [
        sp
        for sp in cluster.topics.specs(
            s.partitions, s.decisions_retention_days, s.events_retention_hours, s.reports_retention_days
        )
        if wanted is None or sp.name.removeprefix(s.topic_prefix) in wanted
    ] + list(extra)
    isr = min_insync_replicas(cluster)
    check_connection(cluster, timeout=min(timeout, 10.0))
    admin = AdminClient({**admin_config(cluster), "log_level": 0})
    who = cluster.principal
    results: list[TopicCheck] = []
    existing: dict[str, Any] = {}
    missing = []
    for sp in specs:
        try:
            meta = admin.list_topics(topic=sp.name, timeout=timeout)
        except KafkaException as exc:
            raise BrokerError(f"Kafka at {cluster.bootstrap} is unreachable: {_short(exc)}") from None
        tmeta = meta.topics.get(sp.name)
        err = tmeta.error if tmeta is not None else None
        if err is not None and _is_auth(err):
            raise KafkaAuthorizationError(
                f"{who} may not see topic {sp.name}: it needs an ACL allowing Describe on it"
                " (fleet2ban acls apply)"
            )
        if tmeta is None or (err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            missing.append(sp)
        elif err is not None:
            raise BrokerError(f"topic {sp.name}: {err.str()}")
        else:
            existing[sp.name] = tmeta
    if missing and not create:
        raise BrokerError(
            "topics missing: "
            + ", ".join(sp.name for sp in missing)
            + " (create them: fleet2ban topics create)"
        )
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    sp.name,
                    sp.partitions,
                    s.replication_factor,
                    config={**sp.config, "min.insync.replicas": str(isr)},
                )
                for sp in missing
            ],
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout)
                results.append(TopicCheck(name, "created"))
            except KafkaException as exc:
                err = _kafka_error(exc)
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    results.append(TopicCheck(name, "ok", "created concurrently"))
                elif _is_auth(err):
                    raise KafkaAuthorizationError(
                        f"topic {name} does not exist and {who} may not create it (an ACL allowing Create on"
                        " it): run fleet2ban topics create with the admin role's settings"
                    ) from None
                else:
                    raise BrokerError(f"cannot create topic {name}: {_short(exc)}") from None
    describe = configs is not False
    for sp in specs:
        tmeta = existing.get(sp.name)
        if tmeta is None:
            continue
        problems = []
        parts = tmeta.partitions
        if len(parts) != sp.partitions:
            problems.append(f"partitions {len(parts)} (want {sp.partitions})")
        replicas = {len(p.replicas) for p in parts.values()}
        if replicas and replicas != {s.replication_factor}:
            problems.append(
                f"replication factor {','.join(map(str, sorted(replicas)))} (want {s.replication_factor})"
            )
        if describe:
            want_configs = {**sp.config, "min.insync.replicas": str(isr)}
            res = ConfigResource(ConfigResource.Type.TOPIC, sp.name)
            try:
                got_configs = admin.describe_configs([res], request_timeout=timeout)[res].result(timeout)
            except KafkaException as exc:
                if _is_auth(_kafka_error(exc)) and configs is None:
                    describe = False  # this role may not read topic configs: partitions and RF only
                    got_configs = {}
                elif _is_auth(_kafka_error(exc)):
                    raise KafkaAuthorizationError(
                        f"{who} may not read the configs of topic {sp.name}: it needs an ACL allowing"
                        " DescribeConfigs on it"
                    ) from None
                else:
                    raise BrokerError(f"cannot describe topic {sp.name}: {_short(exc)}") from None
            for key in CHECKED_CONFIGS:
                want = want_configs.get(key)
                got = got_configs[key].value if key in got_configs else None
                if want is None or got is None:
                    continue
                if key == "cleanup.policy":
                    if set(got.split(",")) != set(want.split(",")):
                        problems.append(f"{key}={got} (want {want})")
                elif got != want:
                    problems.append(f"{key}={got} (want {want})")
        results.append(TopicCheck(sp.name, "mismatch" if problems else "ok", "; ".join(problems)))
    return results


def ensure_topics_quietly(
    cluster: Cluster,
    uses: Iterable[str] | None = None,
    create: bool = True,
    extra: Iterable[TopicSpec] = (),
) -> None:
    """Check (and create where allowed) the topics a long-running component uses before it starts;
    mismatches are warned about."""
    for check in ensure_topics(cluster, uses=uses, create=create, extra=extra):
        if check.status == "mismatch":
            log.warning("topic %s differs from the design: %s", check.name, check.detail)
        elif check.status == "created":
            log.info("created topic %s", check.name)
