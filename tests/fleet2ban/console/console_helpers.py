"""Record builders, a producer of real contract records, and browser helpers for the console tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from confluent_kafka import Producer

from fleet2ban import waiting
from fleet2ban.contract import (
    BanState,
    Decision,
    EventBatch,
    Heartbeat,
    Line,
    Report,
    ban_key,
    encode,
    utcnow,
)
from fleet2ban.kafka import Cluster, producer_config

T = TypeVar("T")

CHROMIUM = os.environ.get("FLEET2BAN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FLEET2BAN_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def browser_unavailable() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing: install Debian's chromium and chromium-driver (scripts/setup)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
"""A client name that is HTML and JS: the console must show it as text and run nothing."""


def decision(
    ip: str,
    *,
    at: datetime | None = None,
    jail: str = "amps",
    secs: float | None = 600.0,
    origin: str = "auto",
    by: str | None = None,
    reason: str | None = None,
    failures: int = 20,
    hosts: list[str] | None = None,
    evidence: list[str] | None = None,
    action: str = "ban",
    did: str | None = None,
) -> Decision:
    at = at or utcnow()
    return Decision(
        id=did or f"{action[0]}-{ip}-{at.timestamp():.3f}",
        action=action,  # type: ignore[arg-type]
        ip=ip,
        jail=jail,
        at=at,
        ports=[9007],
        expires_at=None if secs is None or action == "unban" else at + timedelta(seconds=secs),
        failures=failures,
        first_failure_at=at - timedelta(seconds=5),
        last_failure_at=at,
        hosts=hosts or ["amps1"],
        ban_count=1,
        origin=origin,  # type: ignore[arg-type]
        by=by,
        reason=reason,
        evidence=evidence
        if evidence is not None
        else [f"2026-11-25T08:00:00.0000000Z [26] info: 07-0013 client[x]({ip}:1234) disconnected: auth."],
    )


def heartbeat(host: str, *, keys: list[str] | None = None, role: str = "enforcer", at: datetime | None = None,
              counters: dict[str, float] | None = None, lag: float | None = None) -> Heartbeat:  # fmt: skip
    return Heartbeat(
        host=host,
        role=role,  # type: ignore[arg-type]
        at=at or utcnow(),
        interval_s=5.0,
        version="0.1.0",
        applied=keys or [],
        counters=counters or {},
        lag=lag,
    )


def report(host: str, d: Decision, kind: str = "applied", detail: str | None = None) -> Report:
    return Report(
        host=host, kind=kind, jail=d.jail, ip=d.ip, at=utcnow(), decision_id=d.id, detail=detail,  # type: ignore[arg-type]
        backend="dryrun",
    )  # fmt: skip


def failures(host: str, ip: str, clients: list[str], at: datetime | None = None) -> EventBatch:
    at = at or utcnow()
    lines = [
        Line(
            id=f"{host}:f1:{i}-{at.timestamp()}",
            ts=at - timedelta(seconds=len(clients) - i),
            port=40000 + i,
            client=c,
            reason="auth",
            raw=f"{at.isoformat()} [26] info: 07-0013 client[{c}]({ip}:{40000 + i}) disconnected: auth.",
        )
        for i, c in enumerate(clients)
    ]
    return EventBatch(host=host, ip=ip, lines=lines, instance="amps")


class Writer:
    """Produce contract records (encoded with contract.encode) to a cluster's topics."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.topics = cluster.topics
        self.producer = Producer({**producer_config(cluster, linger_ms=0), "log_level": 0})

    def _send(self, topic: str, key: str, value: msgspec.Struct | None, at: datetime | None = None) -> None:
        ts = int((at or datetime.now(UTC)).timestamp() * 1000)
        self.producer.produce(
            topic, key=key.encode(), value=None if value is None else encode(value), timestamp=ts
        )

    def decision(self, d: Decision) -> Decision:
        self._send(self.topics.decisions, d.ip, d)
        return d

    def ban(self, d: Decision) -> Decision:
        """The decision and its ``bans`` mirror (what the processor writes)."""
        self.decision(d)
        self._send(self.topics.bans, ban_key(d.jail, d.ip), BanState.from_decision(d))
        return d

    def report(self, r: Report | Heartbeat) -> None:
        self._send(self.topics.reports, r.host, r, at=r.at)

    def events(self, batch: EventBatch) -> None:
        self._send(self.topics.events, batch.ip, batch)

    def flush(self) -> None:
        assert self.producer.flush(10) == 0


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 10.0, every: float = 0.05) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` (and the last answer) after
    ``timeout``. An exception counts as a falsy answer: a stale element while the page refreshes."""
    last: list[Any] = [None]

    def check() -> T | None:
        try:
            last[0] = fn()
        except Exception as exc:
            last[0] = exc
            return None
        return last[0]

    try:
        return waiting.wait_for(check, timeout, what, every)
    except waiting.WaitTimeoutError as exc:
        raise AssertionError(f"{exc} (last: {last[0]!r})") from None
