"""The worker's timers (processor.periodic.Periodic) without Faust: a fake consumer, a dict as the store."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import msgspec
from prometheus_client import REGISTRY

from fleet2ban.contract import Decision, encode, utcnow
from fleet2ban.settings import JailSettings
from processor.driver import Processor
from processor.periodic import STALL_S, Periodic
from processor.policy import Output, Policy
from processor.rebalance import Progress


@dataclass
class FakeConsumer:
    parts: list[int] = field(default_factory=lambda: [0])
    rebalancing: bool = False
    highwaters: dict[int, int] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)
    committed_offsets: dict[int, int] = field(default_factory=dict)
    earliest_offsets: dict[int, int] = field(default_factory=dict)
    seeks: list[tuple[int, int]] = field(default_factory=list)

    def busy(self) -> bool:
        return self.rebalancing

    def actives(self) -> list[int]:
        return list(self.parts)

    def committed(self, partition: int) -> int | None:
        return self.committed_offsets.get(partition)

    def position(self, partition: int) -> int | None:
        return self.positions.get(partition)

    def highwater(self, partition: int) -> int | None:
        return self.highwaters.get(partition)

    async def earliest(self, partition: int) -> int | None:
        return self.earliest_offsets.get(partition)

    async def seek(self, partition: int, offset: int) -> None:
        self.seeks.append((partition, offset))


@dataclass
class FakeSink:
    sent: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    broken: bool = False

    async def send(self, *, key: bytes, value: bytes | None) -> object:
        if self.broken:
            raise ConnectionError("no broker")
        self.sent.append((key, value))
        return None


@dataclass
class Published:
    outs: list[Output] = field(default_factory=list)

    async def __call__(self, outs: list[Output]) -> None:
        self.outs.extend(outs)


def setup(partitions: int = 1, **consumer: Any) -> tuple[Periodic, FakeConsumer, Published, FakeSink]:
    policy = Policy.from_settings([JailSettings(maxretry=3, findtime=60, bantime=600)], 5.0)
    proc = Processor(policy, {}, partitions=partitions)
    fake, published, sink = FakeConsumer(**consumer), Published(), FakeSink()
    timers = Periodic(proc, fake, published, Progress(), {0}, sink, "app-1", 5.0, host="w1")
    return timers, fake, published, sink


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def manual_ban(ip: str, seconds: float) -> Decision:
    now = utcnow()
    return Decision(
        id=f"m-{ip}",
        action="ban",
        ip=ip,
        jail="amps",
        at=now,
        expires_at=now + timedelta(seconds=seconds),
        origin="manual",
        by="alice",
    )


def test_watchdog_seeks_a_partition_stalled_behind_its_highwater() -> None:
    timers, consumer, _published, _sink = setup(highwaters={0: 10})
    timers.progress.next_offset[0] = 5
    timers.progress.progress_at[0] = time.monotonic() - STALL_S - 1
    stalls = metric("fleet2ban_processor_stalls_total")
    run(timers.watchdog())
    assert consumer.seeks == [(0, 5)] and metric("fleet2ban_processor_stalls_total") == stalls + 1
    run(timers.watchdog())  # progress_at moved on: not again at once
    assert consumer.seeks == [(0, 5)]


def test_watchdog_leaves_a_partition_alone_that_progresses_is_caught_up_or_rebalancing() -> None:
    timers, consumer, _published, _sink = setup(highwaters={0: 10})
    timers.progress.next_offset[0] = 5
    run(timers.watchdog())  # first seen now: idle 0
    timers.progress.next_offset[0] = 10
    timers.progress.progress_at[0] = time.monotonic() - STALL_S - 1
    run(timers.watchdog())  # nothing waits
    consumer.rebalancing = True
    timers.progress.next_offset[0] = 5
    run(timers.watchdog())
    assert consumer.seeks == []


def test_watchdog_starts_from_the_committed_offset_then_the_earliest() -> None:
    timers, consumer, _published, _sink = setup(parts=[0, 1], highwaters={0: 10, 1: 10})
    consumer.committed_offsets[0] = 7
    consumer.earliest_offsets[1] = 2
    long_ago = time.monotonic() - STALL_S - 1
    timers.progress.progress_at.update({0: long_ago, 1: long_ago})
    run(timers.watchdog())
    assert consumer.seeks == [(0, 7), (1, 2)]


def test_gauges_sum_the_lag_of_this_workers_partitions() -> None:
    timers, _consumer, _published, _sink = setup(
        parts=[0, 1, 2], highwaters={0: 10, 1: 5, 2: 3}, positions={0: 4, 2: 9}
    )
    run(timers.gauges())
    # 10 - 5, 5 - 0 (nothing read yet), 0 (read past the highwater)
    assert timers.lag == 10.0 and metric("fleet2ban_processor_consumer_lag") == 10.0


def test_expire_lifts_due_bans_of_owned_partitions_only_and_not_while_busy(monkeypatch: Any) -> None:
    timers, consumer, published, _sink = setup(partitions=2)
    proc = timers.processor
    mine = "10.0.0.1"
    other = next(
        ip for i in range(2, 50) if proc.partition_of(ip := f"10.0.0.{i}") != proc.partition_of(mine)
    )
    consumer.parts = [proc.partition_of(mine)]
    for ip in (mine, other):
        proc.on_decision_record(encode(manual_ban(ip, 60)), [])
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)  # the manual bans' expiry is behind us
    consumer.rebalancing = True
    run(timers.expire())
    assert published.outs == []
    consumer.rebalancing = False
    run(timers.expire())
    assert [(o.decision.action, o.decision.ip) for o in published.outs] == [("unban", mine)]


def test_heartbeat_reports_partitions_and_lag_is_best_effort_and_quiet_while_busy() -> None:
    timers, consumer, _published, sink = setup()
    timers.lag = 42.0
    run(timers.heartbeat())
    ((key, value),) = sink.sent
    hb = msgspec.json.decode(value or b"")
    assert key == b"w1" and hb["role"] == "processor" and hb["instance"] == "app-1" and hb["lag"] == 42.0
    assert hb["counters"]["partitions"] == 1.0
    consumer.rebalancing = True
    run(timers.heartbeat())
    assert len(sink.sent) == 1
    consumer.rebalancing = False
    sink.broken = True
    run(timers.heartbeat())  # logged, never raised
