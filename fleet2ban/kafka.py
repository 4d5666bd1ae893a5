"""Kafka client configuration for confluent-kafka and aiokafka/Faust, and topic set-up.

The embedded broker (tansu) needs workarounds (shared/notes/embedded-broker.md). They are applied here,
in one place, and only when the cluster is tansu, so production clients keep Kafka's real settings:

- group joins take half the session timeout: short session timeouts and heartbeats;
- a fetch that finds no data is held for half the max wait and not woken by new data: short fetch waits;
- ListOffsets(latest) is wrong: readers detect the end by partition EOF, never by end offsets;
- aiokafka's idempotent producer fails to start: idempotence off for aiokafka;
- Faust's changelog recovery relies on end offsets: one record per produce batch for Faust.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fleet2ban.contract import Topics
from fleet2ban.exceptions import BrokerError
from fleet2ban.settings import KafkaSettings

log = logging.getLogger(__name__)

librdkafka_log = logging.getLogger("fleet2ban.librdkafka")
TANSU_CLUSTER_PREFIX = "tansu"
_flavor_cache: dict[str, str] = {}


@dataclass(frozen=True)
class Cluster:
    """A resolved connection: bootstrap plus whether the embedded-broker workarounds apply."""

    settings: KafkaSettings
    bootstrap: str
    embedded: bool

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.topic_prefix)


def resolve(settings: KafkaSettings, bootstrap: str | None = None) -> Cluster:
    """Pin down the bootstrap and the broker flavour (asking the cluster when ``flavor`` is ``auto``)."""
    boot = bootstrap or settings.bootstrap_servers
    if not boot:
        raise BrokerError(
            "no Kafka bootstrap: set kafka.bootstrap_servers (FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS)"
            " or run a command that starts the embedded broker"
        )
    if settings.flavor != "auto":
        return Cluster(settings, boot, settings.flavor == "tansu")
    if boot not in _flavor_cache:
        _flavor_cache[boot] = detect_flavor(settings, boot)
    return Cluster(settings, boot, _flavor_cache[boot] == "tansu")


def detect_flavor(settings: KafkaSettings, bootstrap: str, timeout: float = 10.0) -> str:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**_common(settings, bootstrap), "socket.connection.setup.timeout.ms": 3000})
    try:
        cluster_id = admin.describe_cluster(request_timeout=timeout).result(timeout).cluster_id or ""
    except Exception as exc:
        raise BrokerError(f"Kafka at {bootstrap} is unreachable: {_short(exc)}") from None
    return "tansu" if cluster_id.startswith(TANSU_CLUSTER_PREFIX) else "kafka"


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."


def _common(settings: KafkaSettings, bootstrap: str) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": settings.security_protocol,
        "client.id": settings.client_id or f"fleet2ban-{socket.gethostname()}",
        "log.connection.close": False,
        # librdkafka's own log lines go through Python logging (greppable, one format), not raw stderr
        "logger": librdkafka_log,
    }
    if settings.sasl_mechanism:
        conf["sasl.mechanism"] = settings.sasl_mechanism
        conf["sasl.username"] = settings.sasl_username or ""
        conf["sasl.password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    for key, value in (
        ("ssl.ca.location", settings.ssl_ca_location),
        ("ssl.certificate.location", settings.ssl_certificate_location),
        ("ssl.key.location", settings.ssl_key_location),
    ):
        if value is not None:
            conf[key] = str(value)
    if settings.ssl_key_password is not None:
        conf["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
    return conf


def _error_cb(err: Any) -> None:
    _throttled_warning(f"kafka client: {err}")


_last_warn: dict[str, float] = {}


def _throttled_warning(msg: str, every: float = 30.0) -> None:
    key = msg[:80]
    now = time.monotonic()
    if now - _last_warn.get(key, -every) >= every:
        _last_warn[key] = now
        log.warning("%s", msg)


def admin_config(cluster: Cluster) -> dict[str, Any]:
    return {**_common(cluster.settings, cluster.bootstrap), "error_cb": _error_cb, **cluster.settings.extra}


def producer_config(cluster: Cluster, *, linger_ms: float = 5.0, **overrides: Any) -> dict[str, Any]:
    """confluent-kafka producer: acks=all, idempotent, murmur2 keys (co-partitioned with Faust tables)."""
    conf = {
        **_common(cluster.settings, cluster.bootstrap),
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
        "linger.ms": linger_ms,
        "error_cb": _error_cb,
        **cluster.settings.extra,
        **overrides,
    }
    return conf


def consumer_config(cluster: Cluster, group_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """confluent-kafka consumer. Without ``group_id`` it is for ``assign()`` only (no commits)."""
    conf: dict[str, Any] = {
        **_common(cluster.settings, cluster.bootstrap),
        "group.id": group_id or f"fleet2ban-nogroup-{os.getpid()}",
        "enable.auto.commit": group_id is not None,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "error_cb": _error_cb,
    }
    if cluster.embedded:
        conf.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "fetch.wait.max.ms": 10})
    else:
        conf["fetch.wait.max.ms"] = 100
    conf.update(cluster.settings.extra)
    conf.update(overrides)
    return conf


def aiokafka_kwargs(cluster: Cluster) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (security settings mirrored from the confluent ones)."""
    s = cluster.settings
    kw: dict[str, Any] = {"bootstrap_servers": cluster.bootstrap, "security_protocol": s.security_protocol}
    if s.sasl_mechanism:
        kw.update(
            sasl_mechanism=s.sasl_mechanism,
            sasl_plain_username=s.sasl_username,
            sasl_plain_password=s.sasl_password.get_secret_value() if s.sasl_password else None,
        )
    if s.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(
            cafile=str(s.ssl_ca_location) if s.ssl_ca_location else None,
            certfile=str(s.ssl_certificate_location) if s.ssl_certificate_location else None,
            keyfile=str(s.ssl_key_location) if s.ssl_key_location else None,
            password=s.ssl_key_password.get_secret_value() if s.ssl_key_password else None,
        )
    return kw


def faust_broker_settings(cluster: Cluster) -> dict[str, Any]:
    """Settings for ``faust.App`` that depend on the cluster (workarounds only for the embedded broker).

    Keys starting with ``fleet2ban_`` are not Faust settings: ``processor.app`` pops and applies them.
    """
    s = cluster.settings
    conf: dict[str, Any] = {
        "broker": ";".join(f"kafka://{b}" for b in cluster.bootstrap.split(",")),
        "topic_partitions": s.partitions,
        "topic_replication_factor": s.replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "producer_linger": 0.0,
    }
    if s.security_protocol != "PLAINTEXT":
        import faust

        kw = aiokafka_kwargs(cluster)
        if s.sasl_mechanism:
            conf["broker_credentials"] = faust.SASLCredentials(
                username=kw["sasl_plain_username"],
                password=kw["sasl_plain_password"],
                mechanism=s.sasl_mechanism,
                ssl_context=kw.get("ssl_context"),
            )
        else:
            conf["broker_credentials"] = faust.SSLCredentials(kw["ssl_context"])
    if cluster.embedded:
        conf.update(
            # tansu answers a JoinGroup after half the session timeout (Faust's default 60 s would put
            # a join at 30 s). 6 s: a join takes ~3 s, a worker restarted after kill -9 consumes ~13 s
            # later (it first joins a generation with the dead member, as on Kafka, until that
            # member's session expires), and heartbeats have 6 s of slack on a loaded 2-core box.
            # 3 s/0.5 s also works (restart ~4 s) but mostly skips the dead-member generation.
            broker_session_timeout=6.0,
            broker_heartbeat_interval=1.0,
            broker_rebalance_timeout=10.0,
            producer_max_batch_size=1,  # exact changelog recovery despite tansu's wrong end offsets
            # Not a Faust setting (processor.app pops it): Faust hard-codes fetch_max_wait_ms=1500 and
            # tansu holds an empty fetch for half of it without waking on new data.
            fleet2ban_fetch_max_wait_ms=10,
        )
    return conf


# ----------------------------------------------------------------------------------------------- topics


@dataclass
class TopicCheck:
    name: str
    status: str  # "created" | "ok" | "mismatch"
    detail: str = ""


def ensure_topics(cluster: Cluster, timeout: float = 15.0) -> list[TopicCheck]:
    """Create the fleet's topics when missing; report existing ones whose set-up differs. Idempotent."""
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
        have = len(existing[sp.name].partitions)
        if have != sp.partitions:
            problems.append(f"partitions {have} (want {sp.partitions})")
        try:
            res = ConfigResource(ConfigResource.Type.TOPIC, sp.name)
            configs = admin.describe_configs([res], request_timeout=timeout)[res].result(timeout)
            for key in ("cleanup.policy",):
                got = configs[key].value if key in configs else None
                if got is not None and set(got.split(",")) != set(sp.config[key].split(",")):
                    problems.append(f"{key}={got} (want {sp.config[key]})")
        except Exception as exc:  # describe_configs is optional on some brokers
            log.debug("describe_configs %s: %s", sp.name, exc)
        results.append(TopicCheck(sp.name, "mismatch" if problems else "ok", "; ".join(problems)))
    return results


def ensure_topics_quietly(cluster: Cluster) -> None:
    """Create missing topics before a long-running component starts; mismatches are warned about."""
    for check in ensure_topics(cluster):
        if check.status == "mismatch":
            log.warning("topic %s differs from the design: %s", check.name, check.detail)
        elif check.status == "created":
            log.info("created topic %s", check.name)


# --------------------------------------------------------------------------------------------- reading


def read_to_end(
    cluster: Cluster,
    topic: str,
    *,
    timeout: float = 30.0,
    on_record: Callable[[Any], None] | None = None,
    start: Callable[[int], int] | None = None,
) -> Iterator[Any]:
    """Yield every record of ``topic`` from the beginning (or ``start(partition)``) up to its current end.

    No consumer group: every partition is assigned; the end is detected by partition EOF, which is
    reliable on the embedded broker (its end offsets are not).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer(consumer_config(cluster))
    try:
        try:
            meta = consumer.list_topics(topic, timeout=min(timeout, 10.0))
        except KafkaException as exc:
            raise BrokerError(f"Kafka at {cluster.bootstrap} is unreachable: {_short(exc)}") from None
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            return
        parts = sorted(tmeta.partitions)
        consumer.assign([TopicPartition(topic, p, start(p) if start else OFFSET_BEGINNING) for p in parts])
        pending = set(parts)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} did not reach its end within {timeout:.0f}s")
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise BrokerError(f"reading {topic}: {err}")
                if on_record is not None:
                    on_record(msg)
                yield msg
    finally:
        consumer.close()
