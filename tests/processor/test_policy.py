"""The jail core: examples for each rule of DESIGN §3, and property tests against a brute-force reference."""

from __future__ import annotations

import importlib.util
import math
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from fleet2ban.contract import Decision, Event, auto_decision_id, from_epoch, rfc3339
from fleet2ban.settings import IncrementSettings, JailSettings
from processor.engine import Engine
from processor.policy import (
    DEFAULT_BAN_COUNT_RETENTION_S,
    FUTURE_HOSTS_MAX,
    Counters,
    JailState,
    Output,
    Policy,
    TargetState,
    decode_state,
    durable_part,
    encode_state,
)


def _load_reference() -> Any:
    # --import-mode=importlib: sibling modules are not importable by name; load it by path.
    name = "fleet2ban_tests_policy_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("policy_reference.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


Reference = _load_reference().Reference

BASE = 1_764_000_000.0  # 2025-11-24T16:00:00Z
IPS = ["10.0.0.1", "10.0.0.2", "2001:db8::7"]
HOSTS = ["h1", "h2", "h3"]


def ev(
    t: float,
    ip: str = "10.0.0.1",
    host: str = "h1",
    n: int | None = None,
    reason: str = "auth",
) -> Event:
    ident = f"{host}:f:{n if n is not None else int(t * 1000)}"
    return Event(
        host=host,
        ip=ip,
        id=ident,
        ts=from_epoch(BASE + t),
        port=40000,
        client="c",
        reason=reason,
        raw=f"raw {host} {t}",
    )


def run(policy: Policy, events: list[Event]) -> list[Output]:
    engine = Engine(policy)
    return engine.feed(events)


def bans(outs: list[Output]) -> list[Decision]:
    return [o.decision for o in outs if o.decision.action == "ban"]


def default_policy(**jail: object) -> Policy:
    return Policy.from_settings([JailSettings(**jail)], lateness=5.0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- examples


def test_bans_at_the_maxretry_th_failure_within_findtime() -> None:
    p = default_policy()
    outs = run(p, [ev(i * 0.4, n=i) for i in range(25)])
    (b,) = bans(outs)
    assert b.at == from_epoch(BASE + 19 * 0.4)
    assert b.failures == 20
    assert b.expires_at == b.at + timedelta(seconds=120)
    assert b.ports == [9007] and b.jail == "amps" and b.ip == "10.0.0.1" and b.ban_count == 1
    assert b.first_failure_at == from_epoch(BASE)
    assert b.id == auto_decision_id("amps", "10.0.0.1", "h1:f:19")
    assert len(b.evidence) == 5 and b.evidence[-1] == f"raw h1 {19 * 0.4}"
    assert p.counters.evidence == 5  # the 5 failures after the ban


def test_window_is_exact_not_tumbling() -> None:
    # 19 failures at 0..9.0, then one at 10.5: the window (0.5, 10.5] holds only 18 (a tumbling 0-10/10-20
    # bucket would see 19 + 1 across two buckets, fail2ban's rate estimate might ban).
    p = default_policy()
    events = [ev(0.5 * i, n=i) for i in range(19)] + [ev(10.5, n=100)]
    assert bans(run(p, events)) == []
    p = default_policy()
    events = [ev(0.5 * i, n=i) for i in range(20)]  # 0 .. 9.5: 20 failures within 10 s
    assert len(bans(run(p, events))) == 1


def test_findtime_boundary_is_open_on_the_left() -> None:
    p = default_policy(maxretry=2, findtime=10.0)
    assert bans(run(p, [ev(0.0, n=1), ev(10.0, n=2)])) == []  # (0, 10] excludes 0
    p = default_policy(maxretry=2, findtime=10.0)
    assert len(bans(run(p, [ev(0.0, n=1), ev(9.999, n=2)]))) == 1


def test_fleet_wide_failures_over_three_hosts_ban() -> None:
    p = default_policy()
    events = [ev(i * 0.1, host=HOSTS[i % 3], n=i) for i in range(20)]
    (b,) = bans(run(p, events))
    assert b.hosts == ["h1", "h2", "h3"]


def test_duplicates_count_once() -> None:
    p = default_policy(maxretry=3)
    events = [ev(1.0, n=1), ev(1.0, n=1), ev(1.1, n=2), ev(1.1, n=2)]
    assert bans(run(p, events)) == []
    assert p.counters.duplicates == 2


def test_late_events_beyond_the_bound_are_not_counted() -> None:
    p = default_policy(maxretry=3)
    events = [ev(10.0, n=1), ev(11.0, n=2), ev(4.0, n=3)]  # 4.0 < 11 - 5
    assert bans(run(p, events)) == []
    assert p.counters.late == 1
    # within the bound it counts, and the ban is at the newest failure of the full window
    p = default_policy(maxretry=3)
    (b,) = bans(run(p, [ev(10.0, n=1), ev(11.0, n=2), ev(7.0, n=3)]))
    assert b.at == from_epoch(BASE + 11.0) and b.failures == 3


def test_a_late_failure_completes_an_earlier_window() -> None:
    # windows ending at 5.0 hold {4.5, 5.0}; at 9.0 only {9.0}. A late 4.0 makes (3, 5] hold 3.
    p = Policy.from_settings([JailSettings(maxretry=3, findtime=2.0)], lateness=30)
    (b,) = bans(run(p, [ev(4.5, n=1), ev(5.0, n=2), ev(9.0, n=3), ev(4.0, n=4)]))
    assert b.at == from_epoch(BASE + 5.0)
    assert b.id == auto_decision_id("amps", "10.0.0.1", "h1:f:2")


def test_ban_expiry_by_event_time_then_counting_afresh() -> None:
    p = default_policy(maxretry=2, findtime=10.0, bantime=5.0)
    events = [ev(0.0, n=1), ev(1.0, n=2), ev(3.0, n=3), ev(6.0, n=4), ev(6.5, n=5), ev(7.0, n=6)]
    outs = run(p, events)
    assert [(o.decision.action, o.decision.at) for o in outs] == [
        ("ban", from_epoch(BASE + 1.0)),
        ("unban", from_epoch(BASE + 6.0)),
        ("ban", from_epoch(BASE + 6.5)),
    ]
    assert outs[2].decision.failures == 2  # 3.0 was during the ban: evidence only


def test_timer_expiry_gives_the_same_unban_as_event_time() -> None:
    p1 = default_policy(maxretry=2, bantime=5.0)
    p2 = default_policy(maxretry=2, bantime=5.0)
    e = Engine(p1)
    e.feed([ev(0.0, n=1), ev(1.0, n=2)])
    timer = e.advance(BASE + 100)
    by_event = run(p2, [ev(0.0, n=1), ev(1.0, n=2), ev(50.0, n=3)])
    assert timer == [by_event[1]]
    assert timer[0].decision.at == from_epoch(BASE + 6.0)
    assert e.states["10.0.0.1"].jails["amps"].ban_count == 1  # kept for the retention horizon
    e.advance(BASE + 6.0 + 86400 + 10)
    assert e.states == {}  # then forgotten


def test_ignoreip_and_reasons() -> None:
    p = default_policy(maxretry=1, ignoreip=["10.0.0.0/24"])
    assert bans(run(p, [ev(1.0, ip="10.0.0.9", n=1)])) == []
    assert p.counters.ignored == 1
    p = default_policy(maxretry=1)
    assert bans(run(p, [ev(1.0, reason="timeout", n=1)])) == []
    assert p.counters.not_failure == 1


def test_ipv6_prefix_counts_and_bans_the_network() -> None:
    p = default_policy(maxretry=3, ban_prefix_v6=64)
    events = [ev(1.0 + i, ip=f"2001:db8:0:1::{i + 1}", n=i) for i in range(3)]
    (b,) = bans(run(p, events))
    assert b.ip == "2001:db8:0:1::/64"


def test_ipv4_mapped_is_ipv4() -> None:
    p = default_policy(maxretry=2)
    (b,) = bans(run(p, [ev(1.0, ip="::ffff:10.1.2.3", n=1), ev(2.0, ip="10.1.2.3", n=2)]))
    assert b.ip == "10.1.2.3"


def test_permanent_ban_never_expires() -> None:
    p = default_policy(maxretry=1, bantime=-1)
    e = Engine(p)
    (o,) = e.feed([ev(1.0, n=1)])
    assert o.decision.expires_at is None
    assert e.advance(BASE + 1e7) == []
    assert list(e.active_bans()) == [("amps", "10.0.0.1")]


def test_bantime_increment_follows_fail2ban_formula() -> None:
    inc = IncrementSettings(enabled=True, factor=1.0, maxtime=1000.0)
    p = default_policy(maxretry=1, bantime=10.0, bantime_increment=inc)
    outs = run(p, [ev(t, n=i) for i, t in enumerate((0.0, 20.0, 60.0, 200.0, 1000.0, 3000.0))])
    durations = [
        (o.decision.expires_at - o.decision.at).total_seconds()  # type: ignore[operator]
        for o in outs
        if o.decision.action == "ban"
    ]
    # fail2ban: Time * (1 << Count) * factor, capped by maxtime; the first ban is plain bantime
    assert durations == [10.0, 20.0, 40.0, 80.0, 160.0, 320.0]
    assert [b.ban_count for b in bans(outs)] == [1, 2, 3, 4, 5, 6]


def test_bantime_increment_multipliers() -> None:
    inc = IncrementSettings(enabled=True, multipliers=[1, 5, 30])
    p = default_policy(maxretry=1, bantime=10.0, bantime_increment=inc)
    outs = run(p, [ev(t, n=i) for i, t in enumerate((0.0, 20.0, 100.0, 1000.0))])
    durations = [(b.expires_at - b.at).total_seconds() for b in bans(outs)]  # type: ignore[operator]
    assert durations == [10.0, 50.0, 300.0, 300.0]


def test_manual_ban_is_mirrored_not_reissued_and_suppresses_counting() -> None:
    p = default_policy(maxretry=2)
    e = Engine(p)
    manual = Decision(
        id="m-1",
        action="ban",
        ip="10.0.0.1",
        jail="amps",
        at=from_epoch(BASE),
        expires_at=from_epoch(BASE + 100),
        origin="manual",
        by="alice",
        reason="test",
    )
    (o,) = e.manual(manual)
    assert o.publish is False and o.decision == manual
    assert e.manual(manual) == []  # redelivered: applied once
    assert e.feed([ev(1.0, n=1), ev(2.0, n=2)]) == []  # banned: evidence only
    unban = Decision(
        id="m-2", action="unban", ip="10.0.0.1", jail="amps", at=from_epoch(BASE), origin="manual"
    )
    (o,) = e.manual(unban)
    assert o.publish is False and o.decision.action == "unban"
    assert e.feed([ev(2.0, n=3)]) == []  # not newer than the watermark: cleared
    (b,) = bans(e.feed([ev(3.0, n=4), ev(4.0, n=5)]))
    assert b.failures == 2 and b.ban_count == 2


def test_state_roundtrips_through_the_table_codec() -> None:
    p = default_policy()
    e = Engine(p)
    e.feed([ev(i * 0.1, n=i) for i in range(10)])
    state = e.states["10.0.0.1"]
    assert decode_state(encode_state(state)) == state
    assert decode_state(encode_state(TargetState())) == TargetState()


def test_decision_wire_fields_for_replay() -> None:
    p = default_policy(maxretry=1)
    (o,) = run(p, [ev(1.0, n=1)])
    assert rfc3339(o.decision.at).endswith("Z")


# ----------------------------------------------------------------------------------- property tests


@st.composite
def streams(draw: st.DrawFn, disorder: float = 12.0) -> tuple[list[tuple[str, object]], JailSettings]:
    """A random multi-host stream: failures, other reasons, duplicates, manual decisions and ticks."""
    maxretry = draw(st.integers(1, 6))
    findtime = draw(st.sampled_from([1.0, 2.5, 10.0]))
    bantime = draw(st.sampled_from([0.5, 3.0, 20.0, -1.0]))
    jail = JailSettings(maxretry=maxretry, findtime=findtime, bantime=bantime)
    n = draw(st.integers(1, 80))
    steps: list[tuple[str, object]] = []
    sent: list[Event] = []
    clock = 0.0
    for i in range(n):
        kind = draw(st.sampled_from(["fail"] * 8 + ["other", "dup", "manual", "tick"]))
        if kind == "dup" and sent:
            steps.append(("event", draw(st.sampled_from(sent))))
            continue
        if kind == "tick":
            steps.append(("tick", BASE + clock + draw(st.sampled_from([0.0, 1.0, 30.0]))))
            continue
        ip = draw(st.sampled_from(IPS))
        if kind == "manual":
            action = draw(st.sampled_from(["ban", "unban"]))
            exp = draw(st.sampled_from([None, 2.0, 15.0]))
            steps.append(
                (
                    "manual",
                    Decision(
                        id=f"m-{i}",
                        action=action,
                        ip=ip,
                        jail="amps",
                        at=from_epoch(BASE + clock),
                        expires_at=None
                        if exp is None or action == "unban"
                        else from_epoch(BASE + clock + exp),
                        origin="manual",
                        by="op",
                    ),
                )
            )
            continue
        clock += draw(st.sampled_from([0.0, 0.1, 0.25, 1.0, 3.0]))
        t = clock - draw(st.sampled_from([0.0, 0.0, 0.0, 0.5, 2.0, disorder]))
        host = draw(st.sampled_from(HOSTS))
        reason = "auth" if kind == "fail" else "timeout"
        e = Event(
            host=host,
            ip=ip,
            id=f"{host}:f:{i}",
            ts=from_epoch(BASE + round(t, 2)),
            port=1,
            client="c",
            reason=reason,
            raw=f"line {i}",
        )
        sent.append(e)
        steps.append(("event", e))
    return steps, jail


def _run_both(
    steps: list[tuple[str, object]], jail: JailSettings, lateness: float, forget: bool
) -> tuple[list[tuple[Decision, bool]], list[tuple[Decision, bool]]]:
    policy = Policy.from_settings([jail], lateness=lateness)
    ref = Reference(jail, lateness)
    states: dict[str, TargetState] = {}
    got: list[tuple[Decision, bool]] = []
    want: list[tuple[Decision, bool]] = []

    def get(t: str) -> TargetState | None:
        return states.get(t)

    def put(t: str, s: TargetState | None) -> None:
        if s is None:
            states.pop(t, None)
        else:
            # through the table codec, as the Faust worker stores it
            states[t] = decode_state(encode_state(s))

    for kind, item in steps:
        out: list[Output] = []
        if kind == "event":
            assert isinstance(item, Event)
            policy.process(get, put, item.ip, [item], out)
            ref.event(item, want)
        elif kind == "manual":
            assert isinstance(item, Decision)
            put(item.ip, policy.manual(get(item.ip), item, out))
            ref.manual(item, want)
        else:
            assert isinstance(item, float)
            for target in sorted(states):
                put(target, policy.tick(states[target], target, item, out, forget=forget))
            ref.tick(item, want)
        got.extend((o.decision, o.publish) for o in out)
    return got, want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.sampled_from([0.0, 1.0, 5.0, 30.0]))
def test_core_matches_brute_force_reference(
    case: tuple[list[tuple[str, object]], JailSettings], lateness: float
) -> None:
    steps, jail = case
    got, want = _run_both(steps, jail, lateness, forget=False)
    assert got == want


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(disorder=1.0))
def test_forgetting_idle_state_changes_nothing(case: tuple[list[tuple[str, object]], JailSettings]) -> None:
    """With disorder within the lateness bound and the clock not ahead of event time, the timer may forget
    idle state without changing a decision."""
    steps, jail = case
    clock = -1e18
    bounded: list[tuple[str, object]] = []
    for kind, item in steps:
        if kind == "event":
            assert isinstance(item, Event)
            clock = max(clock, item.ts.timestamp())
        if kind == "tick":
            item = min(float(item), clock)  # type: ignore[arg-type]  # noqa: PLW2901
        if kind == "event" and item in [i for k, i in bounded if k == "event"]:
            continue  # duplicates older than the lateness bound would be forgotten ids
        bounded.append((kind, item))
    got, want = _run_both(bounded, jail, lateness=5.0, forget=True)
    assert got == want


@settings(max_examples=50, deadline=None)
@given(streams())
def test_batching_per_address_gives_the_same_decisions(
    case: tuple[list[tuple[str, object]], JailSettings],
) -> None:
    """One record per line or one record per run of same-address lines: same decisions."""
    steps, jail = case
    events = [e for k, e in steps if k == "event"]
    p1 = Policy.from_settings([jail], lateness=5.0)
    p2 = Policy.from_settings([jail], lateness=5.0)
    e1, e2 = Engine(p1), Engine(p2)
    out1: list[Output] = []
    out2: list[Output] = []
    for e in events:
        assert isinstance(e, Event)
        e1.feed_batch(e.ip, [e], out1)
    run_ip: str | None = None
    batch: list[Event] = []
    for e in events:
        assert isinstance(e, Event)
        if e.ip != run_ip and batch:
            e2.feed_batch(batch[0].ip, batch, out2)
            batch = []
        run_ip = e.ip
        batch.append(e)
    if batch:
        e2.feed_batch(batch[0].ip, batch, out2)
    assert out1 == out2


@pytest.mark.parametrize("n", [0, 1])
def test_tick_on_nothing(n: int) -> None:
    p = default_policy()
    assert p.tick(None, "x", BASE, []) is None
    assert p.deadline(None) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.sampled_from([0.0, 5.0, 30.0]))
def test_engine_fast_path_matches_brute_force_reference(
    case: tuple[list[tuple[str, object]], JailSettings], lateness: float
) -> None:
    """``Engine.feed`` (replay's inlined fast path + clock-driven expiry) against the reference."""
    steps, jail = case
    events = [e for k, e in steps if k == "event"]
    engine = Engine(Policy.from_settings([jail], lateness), sweep_every=math.inf)
    ref = Reference(jail, lateness)
    clock = -math.inf
    for e in events:
        assert isinstance(e, Event)
        got = [(o.decision, o.publish) for o in engine.feed([e])]
        want: list[tuple[Decision, bool]] = []
        clock = max(clock, e.ts.timestamp())
        ref.tick(clock, want)
        ref.event(e, want)
        key = lambda x: (x[0].at, x[0].ip, x[0].action)  # noqa: E731
        assert sorted(got, key=key) == sorted(want, key=key)


# ------------------------------------------------------------- rules the mutation tests found unpinned


class Store:
    """The table as the Faust worker keeps it, for driving ``Policy.process`` and ``tick`` directly
    (``Engine.feed`` inlines its own hot path)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.states: dict[str, TargetState] = {}

    def put(self, target: str, state: TargetState | None) -> None:
        if state is None:
            self.states.pop(target, None)
        else:
            self.states[target] = decode_state(encode_state(state))

    def feed(self, events: list[Event]) -> list[Output]:
        out: list[Output] = []
        self.policy.process_events(self.states.get, self.put, events, out)
        return out

    def tick(self, now: float, forget: bool = True) -> list[Output]:
        out: list[Output] = []
        for target in sorted(self.states):
            self.put(target, self.policy.tick(self.states[target], target, now, out, forget=forget))
        return out

    def manual(self, decision: Decision) -> list[Output]:
        out: list[Output] = []
        self.put(decision.ip, self.policy.manual(self.states.get(decision.ip), decision, out))
        return out


def two_jails(first: dict[str, Any], second: dict[str, Any]) -> Policy:
    return Policy.from_settings([JailSettings(**first), JailSettings(**second)], lateness=5.0)


def test_ignoreip_covers_only_its_own_addresses_and_family() -> None:
    # an IPv4 ignoreip leaves other IPv4 addresses counted
    s = Store(default_policy(maxretry=1, ignoreip=["10.0.0.0/24"]))
    assert [b.ip for b in bans(s.feed([ev(1.0, ip="192.0.2.7", n=1)]))] == ["192.0.2.7"]
    assert s.feed([ev(2.0, ip="10.0.0.7", n=2)]) == []
    # ::a00:7 has the integer value of 10.0.0.7, but is an IPv6 address: not covered by 10.0.0.0/24
    s = Store(default_policy(maxretry=1, ignoreip=["10.0.0.0/24"]))
    assert [b.ip for b in bans(s.feed([ev(1.0, ip="::a00:7", n=1)]))] == ["::a00:7"]
    assert s.policy.counters.ignored == 0


def test_a_failure_of_a_reason_the_first_jail_does_not_count_reaches_the_second() -> None:
    p = two_jails(
        {"name": "first", "reasons": ["timeout"], "maxretry": 1},
        {"name": "second", "reasons": ["auth"], "maxretry": 2},
    )
    s = Store(p)
    (b,) = bans(s.feed([ev(1.0, n=1), ev(2.0, n=2)]))
    assert b.jail == "second" and b.failures == 2
    assert p.counters.not_failure == 2 and p.counters.failures == 2
    (b,) = bans(s.feed([ev(3.0, n=3, reason="timeout")]))
    assert b.jail == "first"


def test_tick_expires_a_jail_s_ban_behind_another_jail_s_ban_in_force() -> None:
    p = two_jails(
        {"name": "long", "maxretry": 1, "bantime": 1000}, {"name": "short", "maxretry": 1, "bantime": 5}
    )
    s = Store(p)
    assert sorted(b.jail for b in bans(s.feed([ev(1.0, n=1)]))) == ["long", "short"]
    (o,) = s.tick(BASE + 10.0)
    assert (o.decision.action, o.decision.jail, o.decision.at) == ("unban", "short", from_epoch(BASE + 6.0))
    assert s.states["10.0.0.1"].jails["long"].ban is not None


def test_overalljails_counts_the_bans_of_every_jail() -> None:
    def second_ban(overall: bool) -> Decision:
        inc = IncrementSettings(enabled=True, factor=1.0, overalljails=overall)
        p = two_jails(
            {"name": "a", "reasons": ["auth"], "maxretry": 1, "bantime": 10, "bantime_increment": inc},
            {"name": "b", "reasons": ["timeout"], "maxretry": 1, "bantime": 10, "bantime_increment": inc},
        )
        s = Store(p)
        (first,) = bans(s.feed([ev(1.0, n=1)]))
        assert first.jail == "a" and first.ban_count == 1
        (b,) = bans(s.feed([ev(2.0, n=2, reason="timeout")]))
        assert b.jail == "b"
        return b

    b = second_ban(overall=True)
    assert b.ban_count == 2 and b.expires_at == b.at + timedelta(seconds=20)
    b = second_ban(overall=False)
    assert b.ban_count == 1 and b.expires_at == b.at + timedelta(seconds=10)


def _manual_unban(at: float) -> Decision:
    return Decision(
        id="m-u", action="unban", ip="10.0.0.1", jail="amps", at=from_epoch(BASE + at), origin="manual"
    )


def test_a_manual_unban_dated_before_the_watermark_forgives_every_failure_seen() -> None:
    # failures up to 11.0 have been seen when an unban dated 5.0 arrives (the topics are read concurrently)
    s = Store(default_policy(maxretry=3))
    assert s.feed([ev(10.0, n=1), ev(11.0, n=2)]) == []
    (o,) = s.manual(_manual_unban(5.0))
    assert o.decision.action == "unban" and o.publish is False
    # failures from before the watermark, still within the lateness bound, do not count again
    assert s.feed([ev(10.5, n=3), ev(10.8, n=4), ev(11.0, n=5)]) == []
    assert s.policy.counters.late == 3
    (b,) = bans(s.feed([ev(11.1, n=6), ev(11.2, n=7), ev(11.3, n=8)]))
    assert b.failures == 3 and b.first_failure_at == from_epoch(BASE + 11.1)


def test_a_manual_unban_forgives_failures_up_to_its_own_time() -> None:
    s = Store(default_policy(maxretry=2))
    assert s.feed([ev(1.0, n=1)]) == []
    s.manual(_manual_unban(4.0))
    assert s.feed([ev(3.0, n=2), ev(4.0, n=3)]) == []  # up to and at the unban: forgiven
    (b,) = bans(s.feed([ev(4.001, n=4), ev(4.002, n=5)]))
    assert b.first_failure_at == from_epoch(BASE + 4.001)


def test_idle_state_is_kept_while_a_later_failure_could_still_complete_its_window() -> None:
    # findtime 10, lateness 5: failures at 0 and 1 matter until 1 + 10 (+ 5 for late arrivals)
    p = default_policy(maxretry=3, findtime=10.0)
    s = Store(p)
    assert s.feed([ev(0.0, n=1), ev(1.0, n=2)]) == []
    assert p.deadline(s.states["10.0.0.1"]) == BASE + 16.0
    assert s.tick(BASE + 15.9) == []
    assert "10.0.0.1" in s.states
    (b,) = bans(s.feed([ev(9.9, n=3)]))  # (-0.1, 9.9] holds 0, 1 and 9.9
    assert b.failures == 3 and b.first_failure_at == from_epoch(BASE)

    s = Store(default_policy(maxretry=3, findtime=10.0))
    s.feed([ev(0.0, n=1), ev(1.0, n=2)])
    s.tick(BASE + 16.0)
    assert s.states == {}
    assert s.policy.counters.expired_forgotten == 1


def test_durable_part_keeps_each_jail_s_lasting_state_whatever_the_others_hold() -> None:
    p = Policy.from_settings(
        [
            JailSettings(name="idle", reasons=["timeout"], maxretry=5),
            JailSettings(name="counted", reasons=["auth"], maxretry=5),
            JailSettings(name="banned", reasons=["auth"], maxretry=2),
        ],
        lateness=5.0,
    )
    s = Store(p)
    s.feed([ev(1.0, n=1), ev(1.5, n=2, reason="timeout"), ev(2.0, n=3)])
    state = s.states["10.0.0.1"]
    assert list(state.jails) == ["counted", "banned", "idle"]
    # "counted" has a window only (events give it back); "banned" has a ban that must be kept
    d = durable_part(state)
    assert d is not None and list(d.jails) == ["banned"] and d.jails["banned"].ban is not None
    # a jail kept whole comes first: the ones after it are still looked at
    d = durable_part(state, keep_windows=("counted",))
    assert d is not None and list(d.jails) == ["counted", "banned"]
    assert d.jails["counted"] == state.jails["counted"] and len(d.jails["counted"].window) == 2


def test_durable_part_keeps_the_last_manual_decision_so_a_redelivery_after_a_restart_is_not_reapplied() -> (
    None
):
    s = Store(default_policy(maxretry=2))
    unban = _manual_unban(3.0)
    assert len(s.manual(unban)) == 1
    d = durable_part(s.states["10.0.0.1"])
    assert d is not None and d.jails["amps"].last_manual == "m-u"
    restarted = Store(default_policy(maxretry=2))
    restarted.states["10.0.0.1"] = decode_state(encode_state(d))
    assert restarted.manual(unban) == []


def test_future_failures_are_counted_per_host_and_beyond_a_thousand_hosts_under_other() -> None:
    c = Counters()
    for i in range(FUTURE_HOSTS_MAX):
        c.note_future(f"h{i}")
    c.note_future("h0", 2)
    c.note_future("one too many", 3)
    c.note_future("another", 1)
    assert len(c.future_hosts) == FUTURE_HOSTS_MAX + 1 and c.future == FUTURE_HOSTS_MAX + 6
    assert c.future_hosts["h0"] == 3 and c.future_hosts["(other)"] == 4


def test_a_manual_decision_is_applied_up_to_max_future_s_ahead_and_counted_by_author_beyond() -> None:
    now = BASE + 100.0
    p = Policy.from_settings([JailSettings(maxretry=3)], lateness=5.0, max_future_s=5.0, clock=lambda: now)

    def ban(at: float, by: str | None, n: int) -> list[Output]:
        d = Decision(
            id=f"m-{n}", action="ban", ip="10.0.0.1", jail="amps", at=from_epoch(at), origin="manual", by=by,
            expires_at=from_epoch(at + 600),
        )  # fmt: skip
        out: list[Output] = []
        p.manual(None, d, out)
        return out

    assert len(ban(now + 5.0, "bob", 1)) == 1  # exactly max_future_s ahead: applied
    assert ban(now + 5.001, "bob", 2) == [] and ban(now + 60, None, 3) == []
    assert p.counters.future_hosts == {"manual by bob": 1, "manual by ?": 1}


def test_manual_decisions_refused_are_counted_each() -> None:
    p = default_policy(maxretry=3)
    for n, (jail, ip) in enumerate((("nope", "10.0.0.1"), ("amps", "127.0.0.1"), ("amps", "0.0.0.0"))):
        d = Decision(id=f"m-{n}", action="ban", ip=ip, jail=jail, at=from_epoch(BASE), origin="manual")
        assert p.manual(None, d, []) is None
    assert p.counters.refused == 3 and p.counters.manual == 0


def test_a_short_ban_s_count_is_kept_three_times_its_length_past_the_retention() -> None:
    # fail2ban keeps a ban's count 3 x its length beyond dbpurgeage: with a half-second ban, 1.5 s
    s = Store(default_policy(maxretry=1, bantime=0.5))
    assert len(bans(s.feed([ev(1.0, n=1)]))) == 1
    s.tick(BASE + 2.0, forget=False)  # the unban: the ban lasted 0.5 s
    state = s.states["10.0.0.1"]
    assert s.policy.deadline(state) == BASE + 1.0 + 3 * 0.5 + DEFAULT_BAN_COUNT_RETENTION_S


def test_the_state_of_a_jail_no_longer_configured_is_forgotten_after_the_lateness() -> None:
    # a state restored from the changelog can hold a jail since removed from the settings: its window
    # no longer completes a ban (no findtime), and it goes once the lateness bound has passed
    p = default_policy(maxretry=3)
    gone = JailState(window=[(BASE + 1.0, "h1:f:1", "h1", "raw")], watermark=BASE + 1.0)
    state = TargetState({"removed": gone})
    assert p.deadline(state) == BASE + 1.0 + 5.0
    assert p.tick(state, "10.0.0.1", BASE + 5.9, []) is state
    assert p.tick(state, "10.0.0.1", BASE + 6.0, []) is None


def test_a_record_of_several_addresses_reaches_each_address_s_state_in_order() -> None:
    s = Store(default_policy(maxretry=2))
    a, b, c = "10.0.0.1", "10.0.0.2", "10.0.0.3"
    out = s.feed(
        [ev(1.0, ip=a, n=1), ev(2.0, ip=b, n=2), ev(3.0, ip=b, n=3), ev(4.0, ip=a, n=4), ev(5.0, ip=c, n=5)]
    )
    assert [(d.ip, d.at, d.failures) for d in bans(out)] == [
        (b, from_epoch(BASE + 3.0), 2),
        (a, from_epoch(BASE + 4.0), 2),
    ]
    assert sorted(s.states) == [a, b, c] and len(s.states[c].jails["amps"].window) == 1
    assert s.policy.counters.events == 5 and s.policy.counters.failures == 5


def test_the_durable_part_of_a_ban_in_force_keeps_its_time_and_drops_its_running_evidence() -> None:
    s = Store(default_policy(maxretry=1, bantime=100))
    (b,) = bans(s.feed([ev(1.0, n=1)]))
    s.feed([ev(2.0, n=2), ev(3.0, n=3)])  # evidence while banned
    state = s.states["10.0.0.1"]
    js = state.jails["amps"]
    assert js.ban is not None and js.ban.evidence == 2
    d = durable_part(state)
    assert d is not None
    kept = d.jails["amps"]
    assert kept.ban is not None and kept.ban.evidence == 0 and kept.ban.decision_id == b.id
    assert kept.last_ban_at == BASE + 1.0 and kept.ban_count == 1 and kept.window == []
    assert s.policy.deadline(state) == BASE + 101.0 and s.policy.deadline(d) == BASE + 101.0


def test_a_manual_decision_is_mirrored_with_its_target_in_canonical_form() -> None:
    p = default_policy(maxretry=3)
    for sent, canonical in (("2001:DB8::7", "2001:db8::7"), ("10.0.0.5/24", "10.0.0.0/24")):
        d = Decision(
            id=f"m-{sent}", action="ban", ip=sent, jail="amps", at=from_epoch(BASE), origin="manual",
            expires_at=from_epoch(BASE + 60), ports=[9007],
        )  # fmt: skip
        out: list[Output] = []
        state = p.manual(None, d, out)
        (o,) = out
        assert o.publish is False and o.decision.ip == canonical
        assert msgspec.structs.replace(o.decision, ip=sent) == d
        assert state is not None and state.jails["amps"].ban is not None


def test_a_manual_unban_never_lowers_the_floor_an_expiry_left() -> None:
    s = Store(default_policy(maxretry=2, bantime=600))
    assert len(bans(s.feed([ev(1.0, n=1), ev(2.0, n=2)]))) == 1  # banned until 602
    assert [o.decision.action for o in s.tick(BASE + 700, forget=False)] == ["unban"]  # the floor: 602
    s.manual(_manual_unban(40.0))
    assert s.feed([ev(60.0, n=3), ev(61.0, n=4)]) == []  # before the floor: not counted
    assert len(bans(s.feed([ev(603.0, n=5), ev(604.0, n=6)]))) == 1


def test_every_repeat_offender_jail_counting_a_jail_counts_its_bans() -> None:
    p = Policy.from_settings(
        [
            JailSettings(name="amps", maxretry=1),
            JailSettings(name="r1", source="bans", maxretry=1, jails=["amps"]),
            JailSettings(name="r2", source="bans", maxretry=1, jails=["amps"]),
        ],
        lateness=5.0,
    )
    assert [j.name for j in p.recidive["amps"]] == ["r1", "r2"] and p.jails[0].counts == ()
    assert sorted(d.jail for d in bans(Store(p).feed([ev(1.0, n=1)]))) == ["amps", "r1", "r2"]


def test_a_resent_line_among_several_failures_of_the_same_time_counts_once() -> None:
    s = Store(default_policy(maxretry=5))
    s.feed([ev(1.0, n=1), ev(1.0, n=2), ev(1.0, n=3)])
    for n in (2, 1, 3):
        assert s.feed([ev(1.0, n=n)]) == []
    assert s.policy.counters.duplicates == 3 and s.policy.counters.failures == 3


def test_the_default_lateness_is_five_seconds() -> None:
    assert Policy.from_settings([JailSettings()]).lateness == 5.0


def test_a_late_failure_completing_an_earlier_window_bans_with_that_window_only() -> None:
    # findtime 1: 0.5 and 1.0 (line 9), then 2.0; line 3 arrives late dated 1.0: (0, 1] holds three failures
    p = Policy.from_settings(
        [JailSettings(maxretry=3, findtime=1), JailSettings(name="recidive", source="bans", maxretry=1)],
        lateness=5.0,
    )
    s = Store(p)
    assert s.feed([ev(0.5, n=1), ev(1.0, n=9), ev(2.0, n=4)]) == []
    amps, recidive = bans(s.feed([ev(1.0, n=3)]))
    # the trigger is the latest arrival among the failures of that time; the later failure is not counted
    assert amps.id == auto_decision_id("amps", "10.0.0.1", "h1:f:3") and amps.failures == 3
    assert amps.at == amps.last_failure_at == from_epoch(BASE + 1.0)
    assert amps.evidence == ["raw h1 0.5", "raw h1 1.0", "raw h1 1.0"] and recidive.jail == "recidive"


def test_failures_dated_up_to_max_future_s_ahead_are_counted_beyond_are_not() -> None:
    now = BASE + 100.0
    p = Policy.from_settings([JailSettings(maxretry=1)], lateness=5.0, max_future_s=5.0, clock=lambda: now)
    s = Store(p)
    out = s.feed([ev(105.0, n=1), ev(105.5, ip="10.0.0.2", n=2)])
    assert [d.ip for d in bans(out)] == ["10.0.0.1"] and p.counters.future == 1
