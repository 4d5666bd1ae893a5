"""Client configurations for confluent-kafka (shipper, enforcer, CLI, audit) and aiokafka/Faust
(processor), built from :class:`KafkaSettings` in one place, so TLS/SASL settings and ``kafka.extra``
reach every client the same way.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from fleet2ban.contract import Topics
from fleet2ban.exceptions import BrokerError
from fleet2ban.settings import KafkaSettings, ProcessorSettings

log = logging.getLogger(__name__)

librdkafka_log = logging.getLogger("fleet2ban.librdkafka")


@dataclass(frozen=True)
class Cluster:
    """A resolved connection: the settings and the bootstrap they point at."""

    settings: KafkaSettings
    bootstrap: str

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.topic_prefix)


def resolve(settings: KafkaSettings, bootstrap: str | None = None) -> Cluster:
    """Pin down the bootstrap (``bootstrap`` overrides the setting, e.g. a local cluster just started)."""
    boot = bootstrap or settings.bootstrap_servers
    if not boot:
        raise BrokerError(
            "no Kafka bootstrap: set kafka.bootstrap_servers (FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS)"
            " or run a command that starts the local Kafka (fleet2ban broker, fleet2ban dev)"
        )
    return Cluster(settings, boot)


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
        # a fetch at the end of a partition is answered as soon as a record arrives; the wait only
        # bounds how long an idle fetch is held (and so how quickly a reader notices a new assignment)
        "fetch.wait.max.ms": 100,
        "error_cb": _error_cb,
    }
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


def faust_broker_settings(cluster: Cluster, processor: ProcessorSettings | None = None) -> dict[str, Any]:
    """Settings for ``faust.App``: the brokers, credentials, and the group timings of ``processor``.

    Faust's defaults (60 s session, 60 s rebalance) leave the partitions of a worker killed with
    ``kill -9`` unprocessed for a minute; ``processor.session_timeout_s`` bounds that instead.
    """
    s = cluster.settings
    p = processor or ProcessorSettings()
    conf: dict[str, Any] = {
        "broker": ";".join(f"kafka://{b}" for b in cluster.bootstrap.split(",")),
        "broker_client_id": s.client_id or f"fleet2ban-processor-{socket.gethostname()}",
        "topic_partitions": s.partitions,
        "topic_replication_factor": s.replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "producer_linger": 0.0,
        "broker_session_timeout": p.session_timeout_s,
        "broker_heartbeat_interval": p.heartbeat_interval_s,
        "broker_rebalance_timeout": p.rebalance_timeout_s,
        "broker_max_poll_records": p.max_poll_records,
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
    return conf
