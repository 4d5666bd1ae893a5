"""The rebalance handler (processor.rebalance.Rebalancer) and the events agent without Faust or Kafka: a
fake reader of records read back, fake committed offsets, a plain dict as the state store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from prometheus_client import REGISTRY

from fleet2ban.contract import EventBatch, Line, encode, from_epoch
from fleet2ban.settings import JailSettings
from processor.agents import Agents
from processor.driver import Processor
from processor.policy import Output, Policy
from processor.rebalance import Rebalancer
from processor.rebuild import RebuildError, Span

BASE = 1_764_000_000.0
SPAN = 30.0


def record(ip: str, i: int, host: str = "h1") -> bytes:
    """One events record (v1) of one failure, line id ``host:i``, ``i`` hundredths of a second in."""
    line = Line(id=f"{host}:{i}", ts=from_epoch(BASE + 0.01 * i), port=1, client="c", reason="auth")
    return encode(EventBatch(host=host, ip=ip, lines=[line]))


@dataclass
class FakeReader:
    """The events partitions' records by offset; every read and retention check is noted."""

    records: dict[int, list[tuple[int, bytes | None, bytes | None]]] = field(default_factory=dict)
    reads: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False
    lost: tuple[int, int] | None = None

    async def read(
        self,
        partition: int,
        end: int,
        *,
        since_ms: int,
        start_offset: int | None = None,
        keep_from: int | None = None,
    ) -> Span:
        self.reads.append(
            {
                "partition": partition,
                "end": end,
                "since_ms": since_ms,
                "start": start_offset,
                "keep": keep_from,
            }
        )
        if self.fail:
            raise RebuildError("broker gone")
        start = start_offset if start_offset is not None else 0
        got = [r for r in self.records.get(partition, []) if start <= r[0] < end]
        return Span(got, got[0][0] if got else end, end, partition)

    async def lost_to_retention(self, partition: int) -> tuple[int, int] | None:
        return self.lost


@dataclass
class FakeOffsets:
    committed_offsets: dict[int, int] = field(default_factory=dict)
    broken: bool = False

    def committed(self, partition: int) -> int | None:
        if self.broken:
            raise RuntimeError("no consumer yet")
        return self.committed_offsets.get(partition)


@dataclass
class Published:
    outs: list[Output] = field(default_factory=list)

    async def __call__(self, outs: list[Output]) -> None:
        self.outs.extend(outs)


def setup(
    maxretry: int = 5, partitions: int = 1, **reader: Any
) -> tuple[Rebalancer, FakeReader, FakeOffsets, Published, dict[bytes, bytes]]:
    store: dict[bytes, bytes] = {}
    policy = Policy.from_settings([JailSettings(maxretry=maxretry, findtime=60, bantime=600)], 5.0)
    proc = Processor(policy, store, partitions=partitions)
    fake, offsets, published = FakeReader(**reader), FakeOffsets(), Published()
    return Rebalancer(proc, fake, offsets, published, SPAN), fake, offsets, published, store


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_first_record_rebuilds_the_window_from_the_records_before_it() -> None:
    rb, reader, _offsets, published, _store = setup(maxretry=5)
    ip = "10.0.0.1"
    reader.records[0] = [(i, ip.encode(), record(ip, i)) for i in range(4)]
    ok = metric("fleet2ban_processor_rebuilds_total", outcome="ok")
    run(rb.before(0, 4, BASE + 1))
    # four failures replayed (no decision: they were processed before), the fifth live one bans
    assert reader.reads == [
        {"partition": 0, "end": 4, "since_ms": int((BASE + 1 - SPAN) * 1000), "start": None, "keep": None}
    ]
    assert published.outs == [] and 0 in rb.rebuilt and rb.progress.next_offset == {0: 5}
    assert metric("fleet2ban_processor_rebuilds_total", outcome="ok") == ok + 1
    out: list[Output] = []
    rb.processor.on_events_record(ip.encode(), record(ip, 4), out, partition=0)
    assert [o.decision.action for o in out] == ["ban"]
    # a second record of the partition is not rebuilt again
    run(rb.before(0, 5, BASE + 2))
    assert len(reader.reads) == 1 and rb.progress.next_offset == {0: 6}


def test_rebuild_processes_records_from_the_committed_offset_the_stream_skipped() -> None:
    rb, reader, offsets, published, _store = setup(maxretry=5)
    ip = "10.0.0.2"
    reader.records[0] = [(i, ip.encode(), record(ip, i)) for i in range(6)]
    offsets.committed_offsets[0] = 2  # the stream resumed at 6: offsets 2..5 were never processed
    gaps = metric("fleet2ban_processor_stream_gaps_total")
    run(rb.before(0, 6, BASE + 1))
    assert reader.reads[0]["keep"] == 2
    # 0..1 replayed, 2..5 processed: the fifth failure (offset 4) bans, and the decision goes out
    assert [o.decision.action for o in published.outs] == ["ban"]
    assert metric("fleet2ban_processor_stream_gaps_total") == gaps + 1


def test_a_committed_offset_past_the_record_or_unknown_reads_the_span_alone() -> None:
    rb, reader, offsets, _published, _store = setup()
    offsets.committed_offsets[0] = 9
    run(rb.before(0, 4, BASE))
    offsets.broken = True
    rb.on_rebalance(set(), {0}, set())
    rb.on_rebalance({0}, set(), {0})
    run(rb.before(0, 7, BASE))
    assert [r["keep"] for r in reader.reads] == [None, None]


def test_a_failed_rebuild_counts_from_the_record_on_and_is_not_retried() -> None:
    rb, _reader, _offsets, published, _store = setup(fail=True)
    failed = metric("fleet2ban_processor_rebuilds_total", outcome="failed")
    run(rb.before(0, 10, BASE))
    assert metric("fleet2ban_processor_rebuilds_total", outcome="failed") == failed + 1
    assert 0 in rb.rebuilt and rb.progress.next_offset == {0: 11} and published.outs == []


def test_records_lost_to_retention_are_reported() -> None:
    rb, _reader, _offsets, _published, _store = setup(lost=(3, 10))
    skipped = metric("fleet2ban_processor_skipped_records_total", reason="retention")
    run(rb.before(0, 12, BASE))
    assert metric("fleet2ban_processor_skipped_records_total", reason="retention") == skipped + 7


def test_a_jump_past_the_expected_offset_is_read_back_and_processed() -> None:
    rb, reader, _offsets, published, _store = setup(maxretry=3)
    ip = "10.0.0.3"
    run(rb.before(0, 0, BASE))  # nothing before offset 0
    reader.records[0] = [(i, ip.encode(), record(ip, i)) for i in range(1, 4)]
    run(rb.before(0, 4, BASE))  # expected 1: offsets 1..3 skipped by the stream
    assert reader.reads[-1] == {"partition": 0, "end": 4, "since_ms": 0, "start": 1, "keep": None}
    assert [o.decision.action for o in published.outs] == ["ban"] and rb.progress.next_offset[0] == 5


def test_on_rebalance_drops_revoked_state_and_keeps_kept_partitions_offsets() -> None:
    rb, _reader, _offsets, _published, _store = setup(partitions=2)
    proc = rb.processor
    a = "10.0.0.1"
    pa = proc.partition_of(a)
    b = next(ip for i in range(2, 50) if proc.partition_of(ip := f"10.0.0.{i}") != pa)
    pb = proc.partition_of(b)
    run(rb.on_partitions_assigned({pa, pb}))
    for p, ip in ((pa, a), (pb, b)):
        run(rb.before(p, 0, BASE))
        proc.on_events_record(ip.encode(), record(ip, 0), [], partition=p)
    assert set(proc.live) == {a, b}
    proc.sweep_due = False
    run(rb.on_partitions_assigned({pa}))  # pb revoked
    assert set(proc.live) == {a} and rb.assigned == {pa} and rb.rebuilt == {pa}
    assert rb.progress.next_offset == {pa: 1} and rb.progress.progress_at == {} and proc.sweep_due
    run(rb.on_partitions_assigned({pa, pb}))  # pb back: rebuilt before its next record
    assert rb.rebuilt == {pa}


@dataclass
class FakeStream:
    messages: Iterable[SimpleNamespace]

    async def events(self) -> Any:
        for msg in self.messages:
            yield SimpleNamespace(message=msg)


def test_the_events_agent_rebuilds_fills_gaps_and_publishes() -> None:
    rb, reader, _offsets, published, _store = setup(maxretry=5)
    ip = "10.0.0.5"
    reader.records[0] = [(i, ip.encode(), record(ip, i)) for i in range(6)]

    def msg(offset: int) -> SimpleNamespace:
        return SimpleNamespace(
            partition=0,
            offset=offset,
            timestamp=BASE,
            key=ip.encode(),
            value=record(ip, offset),
            headers=None,
        )

    # offset 3's record arrives first (0..2 replayed), then 5 (4 skipped by the stream: read back, the
    # fifth failure: the ban)
    run(Agents(rb.processor, rb, published).events(FakeStream([msg(3), msg(5)])))
    assert [r["start"] for r in reader.reads] == [None, 4]
    assert [o.decision.action for o in published.outs] == ["ban"]
    assert rb.progress.next_offset == {0: 6}
