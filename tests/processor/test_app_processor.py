"""The worker's record handling without Faust: a dict stands in for the table."""

from __future__ import annotations

import random
from datetime import timedelta

import msgspec
import pytest

from fleet2ban.contract import Decision, EventBatch, Line, encode, from_epoch, utcnow
from fleet2ban.settings import JailSettings
from processor.app import Processor, murmur2_partition, outputs_to_records
from processor.policy import NEG_INF, Output, Policy, decode_state, durable_part
from processor.rebuild import span_s

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
    # the window is in memory only: nothing to write to the changelog yet
    assert out == [] and len(p.live["10.0.0.1"].jails["amps"].window) == 2 and p.table == {}
    p.on_events_record(b"10.0.0.1", batch("10.0.0.1", 1, t=1, start=2), out)
    (o,) = out
    # the ban is what the events cannot give back: it is in the changelogged table
    durable = decode_state(p.table[b"10.0.0.1"]).jails["amps"]
    assert durable.ban is not None and durable.ban.decision_id == o.decision.id and durable.ban_count == 1
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
    assert "10.0.0.7" in p.live
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
    assert "10.0.0.8" not in p.live and "10.0.0.9" in p.live


def test_stall_detection_needs_waiting_records_and_no_progress() -> None:
    from processor.app import stalled

    assert stalled(highwater=5, next_offset=3, idle_s=12, bound_s=10)
    assert not stalled(highwater=5, next_offset=3, idle_s=4, bound_s=10)  # still making progress
    assert not stalled(highwater=3, next_offset=3, idle_s=60, bound_s=10)  # caught up: nothing waits
    assert not stalled(highwater=None, next_offset=3, idle_s=60, bound_s=10)  # no fetch answered yet
    assert not stalled(highwater=5, next_offset=None, idle_s=60, bound_s=10)  # position unknown


def test_durable_part_keeps_what_events_cannot_give_back() -> None:
    p = make(maxretry=3, bantime=10)
    out: list[Output] = []
    p.on_events_record(b"10.0.0.1", batch("10.0.0.1", 3), out)
    p.on_events_record(b"10.0.0.1", batch("10.0.0.1", 2, t=1, start=3), out)  # evidence while banned
    state = p.live["10.0.0.1"]
    assert state.jails["amps"].ban is not None and state.jails["amps"].ban.evidence == 2
    d = durable_part(state)
    assert d is not None
    js = d.jails["amps"]
    assert js.window == [] and js.watermark == NEG_INF and js.ban is not None and js.ban.evidence == 0
    assert (js.ban_count, js.last_ban_at) == (1, state.jails["amps"].last_ban_at)
    # evidence while banned does not rewrite the changelog
    raw = p.table[b"10.0.0.1"]
    p.on_events_record(b"10.0.0.1", batch("10.0.0.1", 2, t=2, start=5), out)
    assert p.table[b"10.0.0.1"] is raw
    # a window alone is not durable
    p.on_events_record(b"10.0.0.2", batch("10.0.0.2", 2), out)
    assert durable_part(p.live["10.0.0.2"]) is None and b"10.0.0.2" not in p.table


def _stream(seed: int, n: int) -> list[tuple[float, bytes, bytes]]:
    """(record time, key, value): a few attackers over three hosts, in bursts, with resent lines."""
    rng = random.Random(seed)
    ips = [f"10.1.0.{i}" for i in range(1, 7)]
    out = []
    t = 0.0
    sent: list[tuple[str, Line, str]] = []
    for k in range(n):
        t += rng.choice((0.05, 0.2, 0.5, 2.0, 9.0))
        ip = rng.choice(ips)
        host = rng.choice(("h1", "h2", "h3"))
        lines = [
            Line(id=f"{host}:{k}:{i}", ts=from_epoch(BASE + t + 0.01 * i), port=1, client="c", reason="auth")
            for i in range(rng.randint(1, 6))
        ]
        sent.extend((ip, ln, host) for ln in lines)
        if rng.random() < 0.1 and sent:  # a restarted shipper resends a line (same id)
            rip, rln, rhost = rng.choice(sent[-20:])
            out.append((t, rip.encode(), encode(EventBatch(host=rhost, ip=rip, lines=[rln]))))
        out.append((t + 0.06, ip.encode(), encode(EventBatch(host=host, ip=ip, lines=lines))))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_a_worker_rebuilt_from_durable_state_and_the_recent_events_decides_like_one_that_never_stopped(
    seed: int,
) -> None:
    """The recovery design of processor.rebuild: at any cut, a new worker given the changelogged table
    and a replay of the records of the last span decides exactly what the uninterrupted worker does."""
    jail = {"maxretry": 8, "findtime": 10, "bantime": 15}
    records = _stream(seed, 400)
    cut = len(records) // 2 + seed * 7
    a = make(**jail)
    out_a: list[Output] = []
    for _, key, value in records[:cut]:
        a.on_events_record(key, value, out_a)
    b = Processor(a.policy, dict(a.table))
    span = span_s(a.policy)
    cut_time = records[cut][0]
    replay_out: list[Output] = []
    for rt, key, value in records[:cut]:
        if rt >= cut_time - span:
            b.on_events_record(key, value, replay_out, replay=True)
    assert replay_out == []  # nothing the first worker had not already decided
    out_a.clear()
    out_b: list[Output] = []
    for _, key, value in records[cut:]:
        a.on_events_record(key, value, out_a)
        b.on_events_record(key, value, out_b)
    assert [o.decision for o in out_b] == [o.decision for o in out_a]
    assert any(o.decision.action == "ban" for o in out_a)
