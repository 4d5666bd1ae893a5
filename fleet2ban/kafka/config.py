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
from fleet2ban.exceptions import BrokerError, ConfigError
from fleet2ban.settings import KafkaSettings, ProcessorSettings

log = logging.getLogger(__name__)

librdkafka_log = logging.getLogger("fleet2ban.librdkafka")


class KafkaAuthorizationError(BrokerError):
    """The principal lacks an ACL: the message names it. A command exits 1; a long-running component
    keeps retrying with backoff (healthy, waiting) until an operator grants it."""

    exit_code = 1


class KafkaSecurityError(ConfigError):
    """Wrong credentials or a TLS failure (unknown CA, host name mismatch, expired certificate): a
    configuration error, one line naming the setting; exit 2 at start."""


@dataclass(frozen=True)
class Cluster:
    """A resolved connection: the settings and the bootstrap they point at."""

    settings: KafkaSettings
    bootstrap: str

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.topic_prefix)

    @property
    def principal(self) -> str:
        """Who the brokers see (for messages): ``User:<sasl_username>``, or what TLS/PLAINTEXT give."""
        s = self.settings
        if s.sasl_mechanism and s.sasl_username:
            return f"User:{s.sasl_username}"
        if s.ssl_certificate_location:
            return f"the principal of the certificate {s.ssl_certificate_location}"
        return "User:ANONYMOUS"


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
        # TCP_NODELAY, as the brokers, the Java clients and asyncio (aiokafka: the processor) have it: with
        # librdkafka's default (Nagle on) a small request written while an earlier one is unacknowledged
        # waits for the broker's delayed ACK (up to 40 ms). librdkafka batches records itself (linger,
        # batch size), so Nagle saves nothing here; a ban's record, its applied report, a shipper's lone
        # line and every fetch are small requests that wait on each other
        "socket.nagle.disable": True,
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


_AIOKAFKA_EXTRA: dict[str, tuple[str, Any]] = {
    # librdkafka property -> (aiokafka keyword, conversion)
    "request.timeout.ms": ("request_timeout_ms", int),
    "metadata.max.age.ms": ("metadata_max_age_ms", int),
    "connections.max.idle.ms": ("connections_max_idle_ms", int),
    "reconnect.backoff.ms": ("retry_backoff_ms", int),
    "retry.backoff.ms": ("retry_backoff_ms", int),
    "sasl.kerberos.service.name": ("sasl_kerberos_service_name", str),
}
_TLS_EXTRA = ("ssl.endpoint.identification.algorithm", "enable.ssl.certificate.verification")
_CONFLUENT_ONLY = ("log_level", "debug", "statistics.interval.ms", "socket.keepalive.enable")
_warned_extra: set[str] = set()


def _aiokafka_extra(extra: dict[str, str]) -> dict[str, Any]:
    """The ``kafka.extra`` properties that aiokafka (the processor) has an equivalent for; the others
    are named once in a warning, so a TLS or timeout fix is never silently lost for the processor."""
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if key in _AIOKAFKA_EXTRA:
            name, conv = _AIOKAFKA_EXTRA[key]
            out[name] = conv(value)
        elif key not in _TLS_EXTRA and key not in _CONFLUENT_ONLY and key not in _warned_extra:
            _warned_extra.add(key)
            log.warning("kafka.extra %s has no aiokafka equivalent: the processor ignores it", key)
    return out


def _ssl_context(s: KafkaSettings) -> Any:
    import ssl

    from aiokafka.helpers import create_ssl_context

    ctx = create_ssl_context(
        cafile=str(s.ssl_ca_location) if s.ssl_ca_location else None,
        certfile=str(s.ssl_certificate_location) if s.ssl_certificate_location else None,
        keyfile=str(s.ssl_key_location) if s.ssl_key_location else None,
        password=s.ssl_key_password.get_secret_value() if s.ssl_key_password else None,
    )
    if s.extra.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        ctx.check_hostname = False
    if s.extra.get("enable.ssl.certificate.verification", "true").lower() == "false":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def aiokafka_kwargs(cluster: Cluster) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients: security settings, ``client_id`` and the ``kafka.extra``
    properties that have an aiokafka equivalent, mirrored from the confluent ones."""
    s = cluster.settings
    kw: dict[str, Any] = {
        "bootstrap_servers": cluster.bootstrap,
        "security_protocol": s.security_protocol,
        "client_id": s.client_id or f"fleet2ban-{socket.gethostname()}",
        **_aiokafka_extra(s.extra),
    }
    if s.sasl_mechanism:
        kw.update(
            sasl_mechanism=s.sasl_mechanism,
            sasl_plain_username=s.sasl_username,
            sasl_plain_password=s.sasl_password.get_secret_value() if s.sasl_password else None,
        )
    if s.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = _ssl_context(s)
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
    extra = _aiokafka_extra(s.extra)
    if "request_timeout_ms" in extra:
        conf["broker_request_timeout"] = extra["request_timeout_ms"] / 1000.0
    if "metadata_max_age_ms" in extra:
        conf["consumer_metadata_max_age_ms"] = extra["metadata_max_age_ms"]
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


def diagnose_tls(settings: KafkaSettings, host: str, port: int, timeout: float = 5.0) -> str | None:
    """Why a TLS connection to ``host:port`` fails, as one line naming the setting (None when it
    works or the reason is not about certificates). librdkafka reports every verification failure the
    same way ("broker certificate could not be verified"); Python's ssl module says which it is."""
    import ssl

    ctx = ssl.create_default_context(
        cafile=str(settings.ssl_ca_location) if settings.ssl_ca_location else None
    )
    if settings.extra.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        ctx.check_hostname = False
    ca = f"kafka.ssl_ca_location={settings.ssl_ca_location}" if settings.ssl_ca_location else "the system CAs"
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        code, text = exc.verify_code, exc.verify_message
        if code in (9, 10):  # X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED
            return (
                f"TLS: the certificate of the broker {host}:{port} has expired or is not valid yet ({text});"
                " renew the brokers' certificates, or check this host's clock"
            )
        if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            return (
                f"TLS: the certificate of the broker {host}:{port} is not valid for the name {host}"
                " (kafka.bootstrap_servers): use a name or address the certificate holds"
            )
        if code in (2, 18, 19, 20, 21):  # unknown issuer / self-signed
            return f"TLS: the certificate of the broker {host}:{port} is not signed by a CA in {ca} ({text})"
        return f"TLS: the certificate of the broker {host}:{port} was refused: {text} ({ca})"
    except ssl.SSLError as exc:
        return f"TLS handshake with {host}:{port} failed: {exc.reason or exc} (kafka.security_protocol)"
    except OSError:
        return None


def check_connection(cluster: Cluster, timeout: float = 10.0) -> None:
    """One metadata request as this principal. Raises :class:`KafkaSecurityError` (one line naming the
    setting) for refused credentials and TLS failures, :class:`BrokerError` when nobody answers."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    s = cluster.settings
    errors: list[tuple[str, str]] = []
    conf = {
        **admin_config(cluster),
        "error_cb": lambda e: errors.append((e.name(), e.str())),
        "log_level": 0,
        "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000)),
    }
    conf.pop("logger", None)
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout
    failure: BaseException | None = None
    while time.monotonic() < deadline:
        # short slices: a refused login or a failed handshake is known within one, no need to wait out
        # the whole timeout (librdkafka keeps retrying them)
        try:
            admin.list_topics(timeout=min(0.5, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            failure = exc
        admin.poll(0)
        if any(n in ("_AUTHENTICATION", "_SSL") or "SSL handshake" in t for n, t in errors):
            break
    admin.poll(0.1)
    text = " ".join(t for _n, t in errors)
    if any(n == "_AUTHENTICATION" for n, _t in errors) and "SASL" in text:
        raise KafkaSecurityError(
            f"Kafka at {cluster.bootstrap} refused the SASL login of kafka.sasl_username={s.sasl_username}"
            f" ({s.sasl_mechanism}): wrong kafka.sasl_password, or no such user"
        )
    if s.security_protocol in ("SSL", "SASL_SSL") and ("SSL" in text or not errors):
        host, _, port = cluster.bootstrap.split(",")[0].rpartition(":")
        why = diagnose_tls(s, host.strip("[]"), int(port), timeout=min(timeout, 5.0))
        if why is not None:
            raise KafkaSecurityError(why)
    if any(n == "_AUTHENTICATION" for n, _t in errors):
        raise KafkaSecurityError(f"Kafka at {cluster.bootstrap}: {_short(Exception(errors[0][1]))}")
    detail = errors[0][1] if errors else str(failure)
    raise BrokerError(f"Kafka at {cluster.bootstrap} is unreachable: {_short(Exception(detail))}")
