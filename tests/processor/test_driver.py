"""Engine (replay, benchmarks) and Processor (the worker) are one driver (processor.driver.Driver): the
same records and operators' decisions through either give the same decisions and expiries."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fleet2ban.contract import Decision, EventBatch, Line, decode_events, encode, from_epoch, utcnow
from fleet2ban.settings import JailSettings
from processor.driver import Driver, Processor, StateStore
from processor.engine import Engine
from processor.policy import Output, Policy

BASE = 1_764_000_000.0


def policy() -> Policy:
    return Policy.from_settings([JailSettings(maxretry=3, findtime=60, bantime=600)], 5.0)


def record(ip: str, first: int, n: int) -> bytes:
    lines = [
        Line(id=f"h1:{i}", ts=from_epoch(BASE + i), port=1, client="c", reason="auth")
        for i in range(first, first + n)
    ]
    return encode(EventBatch(host="h1", ip=ip, lines=lines))


def summary(out: list[Output]) -> list[tuple[str, str, str, int | None, str]]:
    return [
        (o.decision.action, o.decision.ip, o.decision.jail, o.decision.failures, o.decision.origin)
        for o in out
    ]


def test_the_driver_is_abstract_and_both_drivers_are_one() -> None:
    with pytest.raises(TypeError):
        Driver(policy())  # type: ignore[abstract]
    store: StateStore = {}
    assert isinstance(Engine(policy()), Driver) and isinstance(Processor(policy(), store), Driver)


def test_engine_and_processor_decide_the_same() -> None:
    engine, proc = Engine(policy()), Processor(policy(), {})
    now = utcnow()
    manual = Decision(
        id="m-1",
        action="ban",
        ip="10.0.0.9",
        jail="amps",
        at=now,
        expires_at=now + timedelta(hours=1),
        origin="manual",
        by="alice",
    )
    by_engine: list[Output] = []
    by_proc: list[Output] = []
    for ip, first, n in (("10.0.0.1", 0, 2), ("10.0.0.2", 0, 3), ("10.0.0.1", 2, 2)):
        value = record(ip, first, n)
        engine.feed_record(decode_events(value), by_engine)
        proc.on_events_record(ip.encode(), value, by_proc)
    engine.manual(manual, by_engine)
    proc.on_decision_record(encode(manual), by_proc)
    assert summary(by_engine) == summary(by_proc)
    assert [a for a, *_ in summary(by_proc)] == ["ban", "ban", "ban"]
    # each noted its bans' expiries, by target (the worker's by table key)
    assert sorted((t, k.decode()) for t, k in proc.expiries) == sorted(engine._expiries)
