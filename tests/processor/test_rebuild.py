"""Reading back the recent records of an events partition (processor.rebuild) on the local Kafka cluster."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from fleet2ban.kafka import Cluster, producer_config
from fleet2ban.settings import JailSettings
from processor.policy import Policy
from processor.rebuild import read_span, span_s

pytestmark = [pytest.mark.kafka]


def _produce(cluster: Cluster, values: list[bytes], ts_ms: list[int]) -> None:
    p = Producer(producer_config(cluster, linger_ms=0))
    for v, t in zip(values, ts_ms, strict=True):
        p.produce(cluster.topics.events, key=b"10.0.0.1", value=v, partition=0, timestamp=t)
        p.flush(10)
    assert p.flush(10) == 0


def test_span_is_the_longest_findtime_plus_lateness_plus_margin() -> None:
    policy = Policy.from_settings([JailSettings(findtime=10), JailSettings(name="b", findtime=60)], 5.0)
    assert span_s(policy, margin_s=10.0) == 75.0


def test_read_span_by_time_and_by_offset(cluster: Cluster) -> None:
    now = int(time.time() * 1000)
    stamps = [now - 120_000, now - 90_000, now - 20_000, now - 10_000, now - 5_000, now]
    _produce(cluster, [f"r{i}".encode() for i in range(6)], stamps)
    topic = cluster.topics.events
    # the records of the last 30 s before offset 5 (the record at 5 itself excluded)
    got = read_span(cluster, topic, 0, now - 30_000, 5)
    assert [(o, v) for o, _, v in got.records] == [(2, b"r2"), (3, b"r3"), (4, b"r4")]
    assert got.end_offset == 5
    # the same, plus records the stream skipped from its committed offset on, however old
    got = read_span(cluster, topic, 0, now - 30_000, 5, keep_from=1)
    assert [v for _, _, v in got.records] == [b"r1", b"r2", b"r3", b"r4"]
    # a gap by offsets, whatever the times
    got = read_span(cluster, topic, 0, 0, 4, start_offset=1)
    assert [v for _, _, v in got.records] == [b"r1", b"r2", b"r3"]
    # nothing before the first record
    assert read_span(cluster, topic, 0, now - 30_000, 0).records == ()
