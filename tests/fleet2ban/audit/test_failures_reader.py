"""One address's failures (the console's per-address timeline) read from ``events`` records of both
shapes: v2 records holding many addresses of a partition, and v1 records of one address (issue 21)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from confluent_kafka import Producer

from fleet2ban.audit.failures import read_failures
from fleet2ban.contract import AddressLine, EventBatch, EventsRecord, Line, encode, partition_for, utcnow
from fleet2ban.kafka import Cluster, producer_config

pytestmark = pytest.mark.kafka


def test_an_address_failures_from_v2_records_of_many_addresses_and_from_v1_records(cluster: Cluster) -> None:
    n = cluster.settings.partitions
    target = "198.51.100.20"
    part = partition_for(target, n)
    neighbours = [
        ip for i in range(100) if partition_for(ip := f"198.51.100.{i}", n) == part and ip != target
    ]
    # 198.51.100.2 is a prefix of the target's text: a record holding it must not give its lines away
    other = "198.51.100.2" if partition_for("198.51.100.2", n) == part else neighbours[0]
    now = utcnow()
    p = Producer(producer_config(cluster, linger_ms=0))
    v2 = EventsRecord(
        host="h1",
        lines=[
            AddressLine(other, "h1:f:0", now - timedelta(seconds=3), 1, "c", "auth"),
            AddressLine(target, "h1:f:1", now - timedelta(seconds=2), 1, "c", "auth"),
            AddressLine(other, "h1:f:2", now - timedelta(seconds=2), 1, "c", "auth"),
            AddressLine(target, "h1:f:3", now - timedelta(seconds=1), 1, "c", "name in use"),
        ],
    )
    p.produce(cluster.topics.events, key=v2.key(), value=encode(v2))
    v1 = EventBatch(host="h2", ip=target, lines=[Line("h2:f:9", now, 1, "c", "auth")])
    p.produce(cluster.topics.events, key=target.encode(), value=encode(v1))
    p.flush(10)
    got = read_failures(cluster, target, now - timedelta(minutes=1))
    assert [(e.host, e.id, e.reason) for e in got] == [
        ("h1", "h1:f:1", "auth"),
        ("h1", "h1:f:3", "name in use"),
        ("h2", "h2:f:9", "auth"),
    ]
    assert {e.ip for e in read_failures(cluster, other, now - timedelta(minutes=1))} == {other}
