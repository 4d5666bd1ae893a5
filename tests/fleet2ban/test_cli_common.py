"""Long-running components wait for an unreachable Kafka instead of exiting; one-shot commands fail fast."""

from __future__ import annotations

import threading

import pytest

from fleet2ban.cli.common import cluster_for
from fleet2ban.exceptions import BrokerError
from fleet2ban.kafka import Cluster
from fleet2ban.kafka.local import LocalKafka, free_port
from fleet2ban.settings import load_settings

pytestmark = pytest.mark.kafka


def test_one_shot_fails_fast_when_kafka_is_unreachable() -> None:
    settings = load_settings(None, {"kafka.bootstrap_servers": f"127.0.0.1:{free_port()}"})
    with pytest.raises(BrokerError, match="unreachable"), cluster_for(settings):
        pass


def test_long_running_component_waits_for_kafka_to_come_up() -> None:
    port = free_port()
    settings = load_settings(
        None, {"kafka.bootstrap_servers": f"127.0.0.1:{port}", "kafka.topic_prefix": "w."}
    )
    got: list[Cluster] = []
    errors: list[BaseException] = []

    def component() -> None:
        try:
            with cluster_for(settings, wait=True) as cluster:
                got.append(cluster)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=component, daemon=True)
    thread.start()
    thread.join(1.5)
    assert thread.is_alive() and not got and not errors, "it must keep waiting while Kafka is down"
    with LocalKafka(1, port=port):
        thread.join(60)
        assert not errors and len(got) == 1
        assert got[0].bootstrap == f"127.0.0.1:{port}" and got[0].topics.events == "w.events"
