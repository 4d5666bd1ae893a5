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


def ensure_topics(
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
    from confluent_kafka.admin import AdminClient

    s = cluster.settings
    wanted = set(uses) if uses is not None else None
    specs = [
        sp
        for sp in cluster.topics.specs(
            s.partitions, s.decisions_retention_days, s.events_retention_hours, s.reports_retention_days
        )
        if wanted is None or sp.name.removeprefix(s.topic_prefix) in wanted
    ] + list(extra)
    check_connection(cluster, timeout=min(timeout, 10.0))
    t = _Topics(cluster, AdminClient({**admin_config(cluster), "log_level": 0}), timeout)
    existing, missing = t.split(specs)
    if missing and not create:
        raise BrokerError(
            "topics missing: "
            + ", ".join(sp.name for sp in missing)
            + " (create them: fleet2ban topics create)"
        )
    results = t.create(missing) if missing else []
    describe = configs is not False
    for sp in specs:
        tmeta = existing.get(sp.name)
        if tmeta is None:
            continue
        problems = t.layout_problems(sp, tmeta)
        if describe:
            got = t.describe(sp.name, required=configs is True)
            if got is None:
                describe = False  # this role may not read topic configs: partitions and RF only
            else:
                problems += config_problems({**sp.config, "min.insync.replicas": str(t.isr)}, got)
        results.append(TopicCheck(sp.name, "mismatch" if problems else "ok", "; ".join(problems)))
    return results


def config_problems(want: dict[str, str], got: dict[str, str]) -> list[str]:
    """How the topic configs ``got`` differ from ``want`` in :data:`CHECKED_CONFIGS` (one set by one
    side only is not compared; ``cleanup.policy`` is compared as a set)."""
    problems = []
    for key in CHECKED_CONFIGS:
        w, g = want.get(key), got.get(key)
        if w is None or g is None:
            continue
        same = set(g.split(",")) == set(w.split(",")) if key == "cleanup.policy" else g == w
        if not same:
            problems.append(f"{key}={g} (want {w})")
    return problems


class _Topics:
    """The admin calls of :func:`ensure_topics`, each turning Kafka's errors into one-line ones."""

    def __init__(self, cluster: Cluster, admin: Any, timeout: float) -> None:
        self.cluster = cluster
        self.admin = admin
        self.timeout = timeout
        self.isr = min_insync_replicas(cluster)
        self.who = cluster.principal

    def split(self, specs: list[TopicSpec]) -> tuple[dict[str, Any], list[TopicSpec]]:
        """The metadata of the topics that exist, and the specs of those that do not."""
        from confluent_kafka import KafkaError, KafkaException

        existing: dict[str, Any] = {}
        missing = []
        for sp in specs:
            try:
                meta = self.admin.list_topics(topic=sp.name, timeout=self.timeout)
            except KafkaException as exc:
                raise BrokerError(
                    f"Kafka at {self.cluster.bootstrap} is unreachable: {_short(exc)}"
                ) from None
            tmeta = meta.topics.get(sp.name)
            err = tmeta.error if tmeta is not None else None
            if err is not None and _is_auth(err):
                raise KafkaAuthorizationError(
                    f"{self.who} may not see topic {sp.name}: it needs an ACL allowing Describe on it"
                    " (fleet2ban acls apply)"
                )
            if tmeta is None or (err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                missing.append(sp)
            elif err is not None:
                raise BrokerError(f"topic {sp.name}: {err.str()}")
            else:
                existing[sp.name] = tmeta
        return existing, missing

    def create(self, missing: list[TopicSpec]) -> list[TopicCheck]:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        rf = self.cluster.settings.replication_factor
        futures = self.admin.create_topics(
            [
                NewTopic(
                    sp.name, sp.partitions, rf, config={**sp.config, "min.insync.replicas": str(self.isr)}
                )
                for sp in missing
            ],
            request_timeout=self.timeout,
        )
        results = []
        for name, fut in futures.items():
            try:
                fut.result(self.timeout)
                results.append(TopicCheck(name, "created"))
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    results.append(TopicCheck(name, "ok", "created concurrently"))
                elif _is_auth(_kafka_error(exc)):
                    raise KafkaAuthorizationError(
                        f"topic {name} does not exist and {self.who} may not create it (an ACL allowing"
                        " Create on it): run fleet2ban topics create with the admin role's settings"
                    ) from None
                else:
                    raise BrokerError(f"cannot create topic {name}: {_short(exc)}") from None
        return results

    def layout_problems(self, sp: TopicSpec, tmeta: Any) -> list[str]:
        """Partition count and replication factor against the spec (metadata only)."""
        problems = []
        rf = self.cluster.settings.replication_factor
        parts = tmeta.partitions
        if len(parts) != sp.partitions:
            problems.append(f"partitions {len(parts)} (want {sp.partitions})")
        replicas = {len(p.replicas) for p in parts.values()}
        if replicas and replicas != {rf}:
            problems.append(f"replication factor {','.join(map(str, sorted(replicas)))} (want {rf})")
        return problems

    def describe(self, name: str, required: bool) -> dict[str, str] | None:
        """The topic's configs; None when this principal may not read them and they are not
        ``required`` (an ACL error when they are)."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        try:
            got = self.admin.describe_configs([res], request_timeout=self.timeout)[res].result(self.timeout)
        except KafkaException as exc:
            if not _is_auth(_kafka_error(exc)):
                raise BrokerError(f"cannot describe topic {name}: {_short(exc)}") from None
            if not required:
                return None
            raise KafkaAuthorizationError(
                f"{self.who} may not read the configs of topic {name}: it needs an ACL allowing"
                " DescribeConfigs on it"
            ) from None
        return {key: entry.value for key, entry in got.items()}


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
