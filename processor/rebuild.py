"""Rebuilding window state by re-reading the recent events of a partition (the thin I/O part).

The processor keeps failure windows in memory only: a worker that is assigned an events partition (at
start, after a restart, after a rebalance) re-reads that partition's records from ``span`` seconds
before the first record it is about to process, up to that record, and feeds them through the same core.
Records of either ``events`` shape are fed as they are (``Processor.on_events_record``: v2 records hold
the lines of many addresses of the partition, v1 ones of one address). Only what the events cannot give
back (bans in force, ban counts, floors) is in the changelogged table
(``processor.policy.durable_part``). This saves a changelog write per events record, which is most of a
Faust worker's cost with many distinct addresses (issue #5; figures in bench/bench_processor_worker.py).

The span is the longest findtime plus the lateness bound plus a margin: every failure that can still
count with the records to come has an event time inside it, and a record's timestamp (the shipper's
produce time) is never earlier than the event time of its lines.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fleet2ban.exceptions import BrokerError
from fleet2ban.kafka import Cluster, Source, TopicReader, consumer_config
from fleet2ban.kafka.reader import RecordHeaders, offsets_for_time
from processor.exceptions import ProcessorError
from processor.policy import Policy

log = logging.getLogger("fleet2ban.processor")

MARGIN_S = 10.0
"""Read this much more than findtime + lateness (clock skew between shippers and the broker)."""


class RebuildError(ProcessorError):
    """The recent events of a partition could not be read back."""


def span_s(policy: Policy, margin_s: float = MARGIN_S) -> float:
    """How far back (record time) a rebuild reads: the longest findtime + lateness + a margin.

    Only jails that count events matter: a ``source: bans`` jail's window (whose findtime is typically a
    day) is in the changelogged table, not rebuilt from events."""
    longest = max((j.findtime for j in policy.event_jails), default=0.0)
    return longest + policy.lateness + margin_s


@dataclass(frozen=True)
class Span:
    """The records of one partition read back for a rebuild, in offset order."""

    records: Sequence[tuple[int, bytes | None, bytes | None]]
    """(offset, key, value)"""
    first_offset: int
    end_offset: int
    partition: int | None = None
    """The partition read (the processor refuses lines whose addresses hash to another one)."""
    headers: Mapping[int, RecordHeaders] = field(default_factory=dict)
    """offset -> the record's headers, for the records that have any (host signatures)."""


def read_span(
    cluster: Cluster,
    topic: str,
    partition: int,
    since_ms: int,
    end_offset: int,
    timeout_s: float = 30.0,
    start_offset: int | None = None,
    keep_from: int | None = None,
) -> Span:
    """The records of ``topic``/``partition`` with a timestamp at or after ``since_ms`` and an offset
    before ``end_offset``; also, whatever their timestamp, those at or after ``keep_from`` (records the
    stream should have delivered but did not).

    ``start_offset``: read from there instead of looking ``since_ms`` up (``offsets_for_times``).
    Raises RebuildError when the records cannot be read within ``timeout_s``."""
    if end_offset <= 0:
        return Span((), end_offset, end_offset, partition)
    try:
        if start_offset is None:
            since = datetime.fromtimestamp(since_ms / 1000.0, UTC)
            start = offsets_for_time(cluster, topic, [partition], since)[partition]
        else:
            start = start_offset
        if keep_from is not None and 0 <= keep_from < end_offset and (start < 0 or keep_from < start):
            start = keep_from
        if start < 0 or start >= end_offset:
            return Span((), end_offset, end_offset, partition)
        out: list[tuple[int, bytes | None, bytes | None]] = []
        headers: dict[int, RecordHeaders] = {}
        keep = end_offset if keep_from is None else keep_from
        reader: TopicReader

        def take(_kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
            offset = reader.position[1]
            if offset >= keep or ts is None or round(ts.timestamp() * 1000) >= since_ms:
                out.append((offset, key, value))
                if reader.headers:
                    headers[offset] = reader.headers

        src = Source(
            "events", topic, partitions=(partition,), start={partition: start}, stop={partition: end_offset}
        )
        with TopicReader(cluster, [src], take, track_positions=True, track_headers=True) as reader:
            reader.catch_up(timeout_s)
    except BrokerError as exc:
        raise RebuildError(
            f"could not read {topic}[{partition}] offsets {start_offset}..{end_offset}: {exc}"
        ) from exc
    return Span(out, start, end_offset, partition, headers)


def deleted_unprocessed(
    cluster: Cluster, topic: str, partition: int, group_id: str, timeout_s: float = 10.0
) -> tuple[int, int] | None:
    """(the group's committed offset, the partition's first offset) when the broker deleted records
    (retention) that ``group_id`` had not processed yet: offsets ``committed..first - 1``; else None.

    Asked of the broker, not of Faust's consumer (which has no committed offset to tell once its position
    was reset to the partition's start)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    conf = consumer_config(cluster, group_id=group_id, **{"enable.auto.commit": False, "log_level": 0})
    try:
        c = Consumer(conf)  # never subscribes: it only asks, it does not join the group
        try:
            (tp,) = c.committed([TopicPartition(topic, partition)], timeout=timeout_s)
            low, _high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        finally:
            c.close()
    except KafkaException as exc:
        raise RebuildError(f"the committed offset and start of {topic}[{partition}]: {exc}") from None
    if tp.offset < 0 or low <= tp.offset:
        return None
    return int(tp.offset), int(low)
