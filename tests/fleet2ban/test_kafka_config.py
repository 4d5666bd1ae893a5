"""Client configurations (fleet2ban.kafka.config): kafka.extra and client_id reach aiokafka/Faust (the
processor) as well as confluent-kafka, TLS verification options included; the others are named once."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from fleet2ban.kafka import aiokafka_kwargs, faust_broker_settings, producer_config, resolve
from fleet2ban.kafka.security import CertificateAuthority
from fleet2ban.settings import KafkaSettings


def test_client_id_and_extra_reach_aiokafka_and_faust(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet2ban.kafka import config

    monkeypatch.setattr(config, "_warned_extra", set())  # each unknown key is named once per process
    s = KafkaSettings(
        bootstrap_servers="k1:9093",
        client_id="amps-processor-1",
        extra={"request.timeout.ms": "45000", "metadata.max.age.ms": "60000", "queue.buffering.max.ms": "7"},
    )
    cluster = resolve(s)
    with caplog.at_level(logging.WARNING, logger="fleet2ban.kafka.config"):
        kw = aiokafka_kwargs(cluster)
        conf = faust_broker_settings(cluster)
    assert kw["client_id"] == "amps-processor-1" and conf["broker_client_id"] == "amps-processor-1"
    assert kw["request_timeout_ms"] == 45000 and kw["metadata_max_age_ms"] == 60000
    assert conf["broker_request_timeout"] == 45.0 and conf["consumer_metadata_max_age_ms"] == 60000
    assert [r.getMessage() for r in caplog.records] == [
        "kafka.extra queue.buffering.max.ms has no aiokafka equivalent: the processor ignores it"
    ]
    assert producer_config(cluster)["queue.buffering.max.ms"] == "7"


def test_tls_verification_options_reach_the_processor(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CertificateAuthority.create().cert_pem)
    base = {
        "bootstrap_servers": "k1:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "fleet2ban-processor",
        "sasl_password": "pw",
        "ssl_ca_location": ca,
    }
    strict = aiokafka_kwargs(resolve(KafkaSettings(**base)))["ssl_context"]
    assert strict.check_hostname and strict.verify_mode == ssl.CERT_REQUIRED
    no_host = KafkaSettings(**base, extra={"ssl.endpoint.identification.algorithm": "none"})
    assert not aiokafka_kwargs(resolve(no_host))["ssl_context"].check_hostname
    creds = faust_broker_settings(resolve(no_host))["broker_credentials"]
    assert creds.username == "fleet2ban-processor" and not creds.ssl_context.check_hostname
