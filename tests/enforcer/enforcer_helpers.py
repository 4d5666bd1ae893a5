"""Shared helpers of the enforcer tests: a test fleet (protected host, attacker, legit client), probes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from fleet2ban import waiting
from fleet2ban.contract import Heartbeat, Report
from fleet2ban.dev.netns import Fleet, Host, TcpListener, cleanup_stale, try_connect
from fleet2ban.kafka import Cluster

T = TypeVar("T")
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A settable clock for an Enforcer (``clock``) and its agent's monotonic time (``mono``)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def mono(self) -> float:
        return (self.now - T0).total_seconds()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


PORT = 9007
OTHER_PORT = 9008


@dataclass
class FwFleet:
    fleet: Fleet
    h1: Host
    att: Host
    leg: Host

    def blocked(self, src: Host, family: int, port: int = PORT) -> bool:
        """Whether h1 refuses ``src`` (our tests use REJECT: a refusal is immediate and unambiguous)."""
        return try_connect(src.ns, self.h1.addr(family), port, timeout=2.0) == "refused"

    def dropped(self, src: Host, family: int, port: int = PORT) -> bool:
        """Whether ``src``'s connect times out (the DROP target)."""
        return try_connect(src.ns, self.h1.addr(family), port, timeout=0.5) == "timeout"

    def connects(self, src: Host, family: int, port: int = PORT, attempts: int = 3) -> bool:
        """Whether ``src`` connects to h1 (a few attempts: a loaded machine may lose a SYN)."""
        return any(
            try_connect(src.ns, self.h1.addr(family), port, timeout=2.0) is None for _ in range(attempts)
        )

    def legacy(self, family: int, *args: str) -> str:
        exe = "iptables-legacy" if family == 4 else "ip6tables-legacy"
        out = self.h1.run([exe, *args], capture_output=True, text=True)
        return str(out.stdout)

    def ipset(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.h1.run(["ipset", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def fw() -> Iterator[FwFleet]:
    """h1 (listeners on 9007 and 9008), att and leg, on one bridge; torn down at module end."""
    cleanup_stale("fenf")  # namespaces of an earlier run that was killed before its teardown
    with Fleet(tag="fenf") as fleet:
        h1, att, leg = fleet.add_host("h1"), fleet.add_host("att"), fleet.add_host("leg")
        with TcpListener(h1.ns, PORT), TcpListener(h1.ns, OTHER_PORT):
            yield FwFleet(fleet, h1, att, leg)


def wait_for(cond: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``cond`` until it returns something truthy (bounded)."""
    return waiting.wait_for(cond, timeout, what)


# ------------------------------------------------------------------------------------------ Kafka


def ban_record(
    ip: str, expires_in: float | None = 60, jail: str = "amps", did: str | None = None
) -> tuple[bytes, bytes]:
    from datetime import timedelta

    from fleet2ban.contract import BanState, ban_key, encode, utcnow

    now = utcnow()
    ban = BanState(
        decision_id=did or f"b-{ip}-{time.monotonic_ns()}",
        ip=ip,
        jail=jail,
        at=now,
        expires_at=None if expires_in is None else now + timedelta(seconds=expires_in),
    )
    return ban_key(jail, ip).encode(), encode(ban)


class BansWriter:
    """Writes ``bans`` records the way the processor does (compacted topic, key JAIL|IP)."""

    def __init__(self, cluster: Cluster) -> None:
        from confluent_kafka import Producer

        from fleet2ban.kafka import producer_config

        self.topic = cluster.topics.bans
        self.producer = Producer(producer_config(cluster, linger_ms=0))

    def ban(self, ip: str, expires_in: float | None = 60, jail: str = "amps", did: str | None = None) -> None:
        key, value = ban_record(ip, expires_in, jail, did)
        self.raw(key, value)

    def lift(self, ip: str, jail: str = "amps") -> None:
        self.raw(f"{jail}|{ip}".encode(), None)

    def raw(self, key: bytes | None, value: bytes | None) -> None:
        self.producer.produce(self.topic, key=key, value=value)
        self.producer.flush(10)


class ReportsReader:
    """Accumulates every ``reports`` record from the beginning."""

    def __init__(self, cluster: Cluster) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from fleet2ban.kafka import consumer_config

        topic = cluster.topics.reports
        self.consumer = Consumer(consumer_config(cluster))
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.reports: list[Report] = []
        self.heartbeats: list[Heartbeat] = []

    def poll(self) -> None:
        from fleet2ban.contract import decode_report

        for msg in self.consumer.consume(500, 0.1):
            if msg.error() is not None:
                continue
            rec = decode_report(msg.value())
            (self.reports if isinstance(rec, Report) else self.heartbeats).append(rec)  # type: ignore[arg-type]

    def kinds(self) -> set[tuple[str, str]]:
        return {(r.kind, r.ip) for r in self.reports}

    def wait(self, *expected: tuple[str, str], timeout: float = 15.0) -> None:
        def seen() -> bool:
            self.poll()
            return set(expected) <= self.kinds()

        try:
            wait_for(seen, timeout, f"reports {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; missing {sorted(set(expected) - self.kinds())}") from None

    def close(self) -> None:
        self.consumer.close()
