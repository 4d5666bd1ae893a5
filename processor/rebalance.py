"""What a worker does when its events partitions change hands, and before each record it processes.

In the manner of Faust's own ``TableManager.on_rebalance(assigned, revoked, newly_assigned)``:
:meth:`Rebalancer.on_rebalance` drops the in-memory state of revoked partitions and marks the new ones to
be rebuilt; :meth:`Rebalancer.before` then, ahead of each record of the stream, rebuilds a partition's
windows before its first record (``processor.rebuild``) and reads back the records the stream skipped.

It sees Kafka through two plain interfaces, :class:`Reader` (records read back, records lost to
retention; :class:`KafkaReader` on the cluster) and :class:`Offsets` (the group's committed offset,
``processor.faust_adapter.TopicConsumer`` in the worker), so that it runs in tests with fakes of both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from fleet2ban.kafka import Cluster
from processor import metrics as m
from processor.driver import Processor
from processor.policy import Output
from processor.rebuild import RebuildError, Span, deleted_unprocessed, read_span

log = logging.getLogger("fleet2ban.processor")

Publish = Callable[[list[Output]], Awaitable[None]]


class Reader(Protocol):
    """Records of an events partition read back, outside the stream."""

    async def read(
        self,
        partition: int,
        end: int,
        *,
        since_ms: int,
        start_offset: int | None = None,
        keep_from: int | None = None,
    ) -> Span:
        """Records before offset ``end`` (``processor.rebuild.read_span``); RebuildError if unreadable."""
        ...

    async def lost_to_retention(self, partition: int) -> tuple[int, int] | None:
        """(committed, first offset) when the broker deleted records the group had not processed
        (``processor.rebuild.deleted_unprocessed``); RebuildError if it cannot tell."""
        ...


class Offsets(Protocol):
    def committed(self, partition: int) -> int | None:
        """The group's committed offset of an events partition this worker is assigned (its stream
        started there), or None."""
        ...


@dataclass
class KafkaReader:
    """:class:`Reader` on the cluster, each read in a thread so the event loop keeps running."""

    cluster: Cluster
    topic: str
    group_id: str

    async def read(
        self,
        partition: int,
        end: int,
        *,
        since_ms: int,
        start_offset: int | None = None,
        keep_from: int | None = None,
    ) -> Span:
        loop = asyncio.get_running_loop()
        read = partial(
            read_span,
            self.cluster,
            self.topic,
            partition,
            since_ms,
            end,
            start_offset=start_offset,
            keep_from=keep_from,
        )
        return await loop.run_in_executor(None, read)

    async def lost_to_retention(self, partition: int) -> tuple[int, int] | None:
        loop = asyncio.get_running_loop()
        find = partial(deleted_unprocessed, self.cluster, self.topic, partition, self.group_id)
        return await loop.run_in_executor(None, find)


@dataclass
class Progress:
    """Per events partition, the next offset to process and when the last one was processed: the gap
    check's expected offset and the stall watchdog's view (``processor.periodic``)."""

    next_offset: dict[int, int] = field(default_factory=dict)
    progress_at: dict[int, float] = field(default_factory=dict)


@dataclass
class Rebalancer:
    """Owns which events partitions this worker holds, which of them have their windows in memory, and
    the progress of each; drives the window rebuild and the gap fill."""

    processor: Processor
    reader: Reader
    offsets: Offsets
    publish: Publish
    span: float
    """Seconds of records (record time) a rebuild reads back (``processor.rebuild.span_s``)."""
    assigned: set[int] = field(default_factory=set)
    """Events partitions assigned to this worker since the last rebalance."""
    rebuilt: set[int] = field(default_factory=set)
    """Events partitions whose windows are in memory; any other is rebuilt before its first record."""
    progress: Progress = field(default_factory=Progress)
    clock: Callable[[], float] = time.monotonic

    async def on_partitions_assigned(self, assigned: set[int]) -> None:
        """The events partitions assigned after a rebalance (Faust's ``on_partitions_assigned``)."""
        self.on_rebalance(assigned, self.assigned - assigned, assigned - self.rebuilt)

    def on_rebalance(self, assigned: set[int], revoked: set[int], newly_assigned: set[int]) -> None:
        """``assigned``: every partition held now; ``revoked``: those held before and not now (another
        worker rebuilds their windows: their state here is dropped); ``newly_assigned``: those whose
        windows are not in memory (rebuilt before their first record, :meth:`before`). Kept partitions
        keep their expected offset: a jump past it is a gap the stream skipped."""
        if revoked:
            dropped = self.processor.forget_partitions(revoked)
            log.info("partitions revoked: events=%s (%d targets dropped)", sorted(revoked), dropped)
        self.rebuilt.intersection_update(assigned)
        self.rebuilt.difference_update(newly_assigned)
        self.assigned.clear()
        self.assigned.update(assigned)
        self.processor.sweep_due = True  # recovered bans need their expiry timers
        for p in revoked:
            self.progress.next_offset.pop(p, None)
        self.progress.progress_at.clear()
        log.info("partitions assigned: events=%s", sorted(assigned))

    async def before(self, partition: int, offset: int, timestamp: float | None) -> None:
        """Ahead of the stream's record at ``offset``: the partition's windows rebuilt if they are not
        in memory, else the records the stream skipped since the last one processed."""
        progress = self.progress
        expected = progress.next_offset.get(partition)
        if partition not in self.rebuilt:
            await self.rebuild(partition, offset, timestamp)
            self.rebuilt.add(partition)
        elif expected is not None and offset > expected:
            await self.fill_gap(partition, expected, offset)
        progress.next_offset[partition] = offset + 1
        progress.progress_at[partition] = self.clock()

    def _committed(self, partition: int) -> int | None:
        try:
            return self.offsets.committed(partition)
        except Exception as exc:  # best effort: the time span alone is read then
            log.debug("committed offset of events partition %d: %s", partition, exc)
            return None

    async def rebuild(self, partition: int, offset: int, timestamp: float | None) -> None:
        """Replay the partition's last ``span`` seconds before ``offset`` (see processor.rebuild), and
        process any record from the committed offset on that the stream skipped before ``offset``."""
        started = time.monotonic()
        since_ms = int(((timestamp or time.time()) - self.span) * 1000)
        await self.report_retention(partition)
        committed = self._committed(partition)
        keep_from = committed if committed is not None and committed < offset else None
        try:
            got = await self.reader.read(partition, offset, since_ms=since_ms, keep_from=keep_from)
        except RebuildError as exc:
            m.REBUILDS.labels("failed").inc()
            log.error(
                "could not rebuild the windows of events partition %d (counting restarts from here): %s",
                partition,
                exc,
            )
            return
        c = self.processor.policy.counters
        before = (c.events, c.failures, c.duplicates, c.late, c.evidence)
        if await self.feed_back(got, offset if keep_from is None else keep_from):
            m.GAPS.inc()
            log.warning(
                "events partition %d: the stream skipped offsets %d..%d after the assignment; processed them",
                partition,
                keep_from,
                offset - 1,
            )
        after = (c.events, c.failures, c.duplicates, c.late, c.evidence)
        counted = [now - then for now, then in zip(after, before, strict=True)]
        took = time.monotonic() - started
        m.REBUILDS.labels("ok").inc()
        m.REBUILD_SECONDS.observe(took)
        log.info(
            "rebuilt the windows of events partition %d from %d records (offsets %d..%d) in %.2fs: "
            "events=%d failures=%d duplicates=%d late=%d evidence=%d",
            partition,
            len(got.records),
            got.first_offset,
            got.end_offset,
            took,
            *counted,
        )

    async def fill_gap(self, partition: int, start: int, end: int) -> None:
        """Process records ``start..end-1`` that the stream skipped.

        Faust drops records that aiokafka fetched while a freshly assigned partition was not yet active
        (or while flow was stopped for a rebalance) and carries on after them: seen here right after a
        restart, 145 records skipped between two consecutive events. Offsets of the events topic are
        contiguous (no compaction, no transactions), so a jump is such a gap: read it back and process
        it before the record that revealed it."""
        m.GAPS.inc()
        log.warning(
            "events partition %d: the stream skipped offsets %d..%d; reading them back",
            partition,
            start,
            end - 1,
        )
        try:
            got = await self.reader.read(partition, end, since_ms=0, start_offset=start)
        except RebuildError as exc:
            log.error("could not read back the skipped offsets %d..%d: %s", start, end - 1, exc)
            return
        await self.feed_back(got, start)

    async def feed_back(self, got: Span, live_from: int) -> int:
        """Process records read back; those from offset ``live_from`` on were never processed (counted
        as consumed), the earlier ones are replayed. Returns how many were never processed."""
        out: list[Output] = []
        unprocessed = 0
        on_record = self.processor.on_events_record
        for at, key, value in got.records:
            unprocessed += at >= live_from
            on_record(
                key, value, out, replay=at < live_from, partition=got.partition, headers=got.headers.get(at)
            )
        if out:
            await self.publish(out)
        return unprocessed

    async def report_retention(self, partition: int) -> None:
        """Say (log line, metric) which records of an events partition the broker deleted (retention)
        before this group processed them: a worker stopped for longer than the retention resumes at the
        partition's start, past them."""
        try:
            gap = await self.reader.lost_to_retention(partition)
        except RebuildError as exc:
            log.warning(
                "events partition %d: could not check for records lost to retention: %s", partition, exc
            )
            return
        if gap is not None:
            committed, start = gap
            m.SKIPPED.labels("retention").inc(start - committed)
            log.warning(
                "events partition %d: offsets %d..%d were deleted (retention) before they were processed:"
                " %d records skipped",
                partition,
                committed,
                start - 1,
                start - committed,
            )
