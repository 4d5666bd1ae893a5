"""Record builders and a producer for the audit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from confluent_kafka import Producer

from fleet2ban.contract import BanState, Decision, Heartbeat, Report, ban_key, encode
from fleet2ban.kafka import Cluster, producer_config

T0 = datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)


def ban(
    ip: str,
    at: datetime,
    *,
    jail: str = "amps",
    did: str | None = None,
    secs: float | None = 120.0,
    origin: Any = "auto",
    by: str | None = None,
    failures: int = 20,
    hosts: list[str] | None = None,
    reason: str | None = None,
) -> Decision:
    return Decision(
        id=did or f"b-{ip}-{int(at.timestamp())}",
        action="ban",
        ip=ip,
        jail=jail,
        at=at,
        ports=[9007],
        expires_at=None if secs is None else at + timedelta(seconds=secs),
        failures=failures,
        hosts=hosts or ["amps1"],
        ban_count=1,
        origin=origin,
        by=by,
        reason=reason,
        evidence=[f"07-0013 client[x]({ip}:1234) disconnected: auth."],
    )


def unban(
    ip: str, at: datetime, *, jail: str = "amps", did: str | None = None, origin: Any = "auto"
) -> Decision:
    return Decision(
        id=did or f"u-{ip}-{int(at.timestamp())}", action="unban", ip=ip, jail=jail, at=at, origin=origin
    )


def state(d: Decision) -> BanState:
    return BanState.from_decision(d)


def applied(host: str, d: Decision, at: datetime, kind: Any = "applied", detail: str | None = None) -> Report:
    return Report(
        host=host,
        kind=kind,
        jail=d.jail,
        ip=d.ip,
        at=at,
        decision_id=d.id,
        detail=detail,
        backend="dryrun",
    )


def heartbeat(
    host: str,
    at: datetime,
    *,
    role: Any = "enforcer",
    keys: list[str] | None = None,
    interval: float = 5.0,
    counters: dict[str, float] | None = None,
    total: int | None = None,
    lag: float | None = None,
) -> Heartbeat:
    return Heartbeat(
        host=host,
        role=role,
        at=at,
        interval_s=interval,
        applied=keys or [],
        counters=counters or {},
        applied_total=total,
        lag=lag,
        version="0.1.0",
    )


def key(d: Decision) -> str:
    return ban_key(d.jail, d.ip)


class Writer:
    """Produce contract records to a test cluster's topics, with explicit record timestamps."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.producer = Producer({**producer_config(cluster, linger_ms=5), "log_level": 0})

    def _ts(self, at: datetime | None) -> int:
        return int((at or datetime.now(UTC)).timestamp() * 1000)

    def decision(self, d: Decision, ts: datetime | None = None) -> None:
        self.producer.produce(
            self.cluster.topics.decisions, key=d.ip.encode(), value=encode(d), timestamp=self._ts(ts or d.at)
        )

    def ban_state(self, d: Decision, ts: datetime | None = None) -> None:
        self.producer.produce(
            self.cluster.topics.bans,
            key=key(d).encode(),
            value=encode(state(d)),
            timestamp=self._ts(ts or d.at),
        )

    def tombstone(self, k: str, ts: datetime | None = None) -> None:
        self.producer.produce(self.cluster.topics.bans, key=k.encode(), value=None, timestamp=self._ts(ts))

    def report(self, r: msgspec.Struct, host: str, ts: datetime | None = None) -> None:
        self.producer.produce(
            self.cluster.topics.reports,
            key=host.encode(),
            value=encode(r),
            timestamp=self._ts(ts or getattr(r, "at", None)),
        )

    def raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.producer.produce(topic, key=key, value=value)

    def flush(self) -> None:
        assert self.producer.flush(10) == 0
