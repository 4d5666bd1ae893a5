"""A worker stopped for longer than the ``events`` retention resumes without crashing and says what it
skipped: the records its group had not processed when the broker deleted them.

The events topic is given a small ``retention.ms`` (and ``segment.ms``: only rolled segments are deleted)
while the worker is down; the local broker checks retention every 5 s. Then the retention is put back,
and a new worker starts where its group left off, which is now below the partition's start.
"""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from fleet2ban.kafka import consumer_config, end_offsets
from processor.app import murmur2_partition

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _in_partition(part: int, base: str, skip: frozenset[str] = frozenset()) -> str:
    return next(
        ip
        for n in range(1, 250)
        if (ip := f"{base}.{n}") not in skip and murmur2_partition(ip.encode(), 3) == part
    )


def _committed(fleet: Any, part: int) -> int:
    group = f"{fleet.prefix}fleet2ban-processor"
    c = Consumer(consumer_config(fleet.cluster, group_id=group, **{"enable.auto.commit": False}))
    try:
        (tp,) = c.committed([TopicPartition(fleet.topics.events, part)], timeout=10)
        return int(tp.offset)
    finally:
        c.close()


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)} (\S+)", text, re.M))


def test_worker_stopped_longer_than_retention_resumes_and_says_what_it_skipped(
    fleet: Any, topic_configs: Any
) -> None:
    lost = "198.51.104.1"
    part = murmur2_partition(lost.encode(), 3)
    fleet.fail(_in_partition(part, "198.51.104", frozenset({lost})), 10)  # processed before the stop
    fleet.wait_for(
        "the first records committed",
        lambda: _committed(fleet, part) >= end_offsets(fleet.cluster, fleet.topics.events)[part][1],
        30,
        every=0.2,
    )
    committed = _committed(fleet, part)
    worker = fleet.workers[-1]
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)

    events = fleet.topics.events
    topic_configs(fleet.cluster, events, {"retention.ms": "1000", "segment.ms": "200"})
    fleet.fail(lost, 10)  # never processed: deleted by retention while the worker is down

    def deleted() -> int | None:
        # a line that no jail counts rolls the segment (segment.ms), so retention can delete the one before
        fleet.fail(_in_partition(part, "198.51.105", frozenset()), 1, reason="connection closed")
        low = end_offsets(fleet.cluster, events)[part][0]
        return low if low > committed + 1 else None

    fleet.wait_for("retention to delete unprocessed records", deleted, 40, every=0.5)
    topic_configs(
        fleet.cluster, events, {"retention.ms": str(7 * 24 * 3600 * 1000), "segment.ms": "604800000"}
    )

    fleet.start_worker()
    fleet.ready(timeout=60)
    # the worker goes on counting in that partition
    fleet.fail(lost, 20, host="h2")
    (d,) = fleet.wait_decision(lost)
    assert d.failures == 20 and d.hosts == ["h2"], d
    log = (fleet.tmp / f"worker{len(fleet.workers) - 1}.log").read_text()
    found = re.search(
        rf"events partition {part}: offsets (\d+)\.\.(\d+) were deleted \(retention\) before they were processed",
        log,
    )
    assert found, log[-3000:]
    assert int(found[1]) == committed
    skipped = _metric(fleet.metrics(), 'fleet2ban_processor_skipped_records_total{reason="retention"}')
    assert skipped == int(found[2]) - committed + 1
