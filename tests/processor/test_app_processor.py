"""The worker's record handling without Faust: a dict stands in for the table."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from fleet2ban.contract import Decision, EventBatch, Line, encode, from_epoch, utcnow
from fleet2ban.settings import JailSettings
from processor.app import Processor, murmur2_partition, outputs_to_records
from processor.policy import Output, Policy, decode_state

BASE = 1_764_000_000.0


def batch(ip: str, n: int, t: float = 0.0, host: str = "h1", start: int = 0) -> bytes:
    lines = [
        Line(id=f"{host}:{start + i}", ts=from_epoch(BASE + t + 0.01 * i), port=1, client="c", reason="auth")
        for i in range(n)
    ]
    return encode(EventBatch(host=host, ip=ip, lines=lines))


def make(**jail: object) -> Processor:
    return Processor(Policy.from_settings([JailSettings(**jail)], 5.0), {})  # type: ignore[arg-type]


def test_records_ban_and_map_to_decisions_and_bans_records() -> None:
    p = make(maxretry=3, bantime=10)
    out: list[Output] = []
    p.on_events_record(b"10.0.0.1", batch("10.0.0.1", 2), out)
    assert out == [] and len(decode_state(p.table[b"10.0.0.1"]).jails["amps"].window) == 2
    p.on_events_record(b"10.0.0.1", batch("10.0.0.1", 1, t=1, start=2), out)
    (o,) = out
    recs = outputs_to_records(out)
    assert [(k, key) for k, key, _ in recs] == [("decisions", b"10.0.0.1"), ("bans", b"amps|10.0.0.1")]
    assert p.expiries == [(o.decision.expires_at.timestamp(), b"10.0.0.1")]  # type: ignore[union-attr]


def test_bad_records_are_skipped() -> None:
    p = make()
    out: list[Output] = []
    for value in (
        None,
        b"",
        b"{",
        b'{"v":1}',
        b"x" * (5 * 1024 * 1024),
        encode(EventBatch(host="h", ip="nope", lines=[])),
    ):
        p.on_events_record(b"k", value, out)
    p.on_decision_record(b"garbage", out)
    assert out == [] and p.table == {}


def test_timer_expires_only_owned_keys_and_sweep_recovers_expiries() -> None:
    p = make(maxretry=1, bantime=10)
    out: list[Output] = []
    p.on_events_record(b"10.0.0.1", batch("10.0.0.1", 1), out)
    p.on_events_record(b"10.0.0.2", batch("10.0.0.2", 1), out)
    out.clear()
    mine = murmur2_partition(b"10.0.0.1", 3)
    owned = lambda key: murmur2_partition(key, 3) == mine  # noqa: E731
    assert murmur2_partition(b"10.0.0.2", 3) != mine
    p.tick(BASE + 20, owned, out)
    assert [(o.decision.action, o.decision.ip) for o in out] == [("unban", "10.0.0.1")]
    # a restarted worker: table recovered, heap empty -> the sweep after assignment finds the ban
    q = Processor(p.policy, dict(p.table))
    out.clear()
    q.tick(BASE + 20, lambda key: True, out)
    assert [(o.decision.action, o.decision.ip) for o in out] == [("unban", "10.0.0.2")]
    assert q.expiries == []


def test_manual_decisions_only() -> None:
    p = make()
    out: list[Output] = []
    auto = Decision(id="b-1", action="ban", ip="10.0.0.5", jail="amps", at=from_epoch(BASE))
    p.on_decision_record(encode(auto), out)
    assert out == [] and p.table == {}
    old = Decision(
        id="m-0",
        action="ban",
        ip="10.0.0.5",
        jail="amps",
        at=from_epoch(BASE),
        expires_at=from_epoch(BASE) + timedelta(seconds=5),
        origin="manual",
    )
    p.on_decision_record(encode(old), out)
    assert out == []  # long expired (read again from the start of the audit log): not mirrored again
    now = utcnow()
    manual = msgspec.structs.replace(old, id="m-1", at=now, expires_at=now + timedelta(seconds=5))
    p.on_decision_record(encode(manual), out)
    (o,) = out
    assert not o.publish and [r[0] for r in outputs_to_records(out)] == ["bans"]
    assert p.expiries == [((now + timedelta(seconds=5)).timestamp(), b"10.0.0.5")]


def test_idle_state_is_forgotten_by_event_time_read_not_by_the_wall_clock() -> None:
    """A worker catching up on a backlog (an outage, a restart) must not forget failures that later
    backlog events still count with: forgetting follows the newest event time read per partition."""
    p = make(maxretry=20, findtime=10)
    out: list[Output] = []
    p.on_events_record(b"10.0.0.7", batch("10.0.0.7", 10), out)
    # the wall clock is far ahead (the events are a backlog): nothing may be forgotten yet
    p.sweep(BASE + 3600, lambda key: True, out)
    assert b"10.0.0.7" in p.table
    p.on_events_record(b"10.0.0.7", batch("10.0.0.7", 10, t=5, start=10), out)
    (ban,) = out
    assert ban.decision.action == "ban" and ban.decision.failures == 20
    # once the partition's events have moved on past findtime + lateness, idle state goes
    out.clear()
    p.on_events_record(b"10.0.0.8", batch("10.0.0.8", 1), out)
    p.on_events_record(b"10.0.0.9", batch("10.0.0.9", 1, t=100), out)
    same = murmur2_partition(b"10.0.0.8", 1) == murmur2_partition(b"10.0.0.9", 1)
    assert same  # one partition in this test
    p.sweep(BASE + 3600, lambda key: True, out)
    assert b"10.0.0.8" not in p.table and b"10.0.0.9" in p.table


def test_stall_detection_needs_waiting_records_and_no_progress() -> None:
    from processor.app import stalled

    assert stalled(highwater=5, next_offset=3, idle_s=12, bound_s=10)
    assert not stalled(highwater=5, next_offset=3, idle_s=4, bound_s=10)  # still making progress
    assert not stalled(highwater=3, next_offset=3, idle_s=60, bound_s=10)  # caught up: nothing waits
    assert not stalled(highwater=None, next_offset=3, idle_s=60, bound_s=10)  # no fetch answered yet
    assert not stalled(highwater=5, next_offset=None, idle_s=60, bound_s=10)  # position unknown
