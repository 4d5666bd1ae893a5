"""Repeat offenders across jails (issue #18 §4): a jail with ``source: bans`` counts other jails' automatic
bans as its failures, through the same exact-window core. Plain functions: no Kafka."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from fleet2ban.contract import Decision, Event, EventBatch, Line, auto_decision_id, encode, from_epoch
from fleet2ban.settings import JailSettings, Settings, counted_jails
from processor.app import Processor
from processor.engine import Engine
from processor.policy import Output, Policy, TargetState, durable_part
from processor.rebuild import span_s

BASE = 1_764_000_000.0  # 2025-11-24T16:00:00Z
IP = "203.0.113.9"


def ev(t: float, n: int, ip: str = IP, host: str = "h1", reason: str = "auth") -> Event:
    return Event(
        host=host,
        ip=ip,
        id=f"{host}:f:{n}",
        ts=from_epoch(BASE + t),
        port=40000,
        client="c",
        reason=reason,
        raw=f"raw {host} {n}",
    )


def burst(
    t: float, k: int, n0: int, ip: str = IP, hosts: tuple[str, ...] = ("h1",), reason: str = "auth"
) -> list[Event]:
    """``k`` failures 0.1 s apart from ``t``, round-robin over ``hosts``; line ids from ``n0``."""
    return [ev(t + 0.1 * i, n0 + i, ip, hosts[i % len(hosts)], reason) for i in range(k)]


AMPS: dict[str, Any] = {"name": "amps", "maxretry": 3, "findtime": 10, "bantime": 5}
RECIDIVE: dict[str, Any] = {
    "name": "recidive",
    "source": "bans",
    "maxretry": 3,
    "findtime": 100,
    "bantime": 1000,
    "ports": [9007, 9008],
}


def policy(*jails: dict[str, Any]) -> Policy:
    return Policy.from_settings([JailSettings(**j) for j in jails], lateness=5.0)


def bans(outs: list[Output], jail: str | None = None) -> list[Decision]:
    return [o.decision for o in outs if o.decision.action == "ban" and jail in (None, o.decision.jail)]


def unbans(outs: list[Output], jail: str) -> list[Decision]:
    return [o.decision for o in outs if o.decision.action == "unban" and o.decision.jail == jail]


# ------------------------------------------------------------------------------------------- settings


def test_settings_default_source_and_which_jails_count() -> None:
    s = Settings(jails=[JailSettings(**AMPS), JailSettings(name="short"), JailSettings(**RECIDIVE)])
    assert s.jails[0].source == "events"
    # default: every jail that counts events
    assert counted_jails(s.jails) == {"recidive": ("amps", "short")}
    s = Settings(
        jails=[JailSettings(**AMPS), JailSettings(name="short"), JailSettings(**RECIDIVE, jails=["short"])]
    )
    assert counted_jails(s.jails) == {"recidive": ("short",)}


@pytest.mark.parametrize(
    ("jails", "message"),
    [
        ([AMPS, {**RECIDIVE, "jails": ["nope"]}], "unknown jails: nope"),
        ([AMPS, {**RECIDIVE, "jails": ["recidive"]}], "cannot count its own bans"),
        ([{**AMPS, "jails": ["recidive"]}, RECIDIVE], "source: bans only"),
        (
            [AMPS, {**RECIDIVE, "jails": ["r2"]}, {**RECIDIVE, "name": "r2", "jails": ["recidive"]}],
            "cycle: recidive <- r2 <- recidive",
        ),
    ],
)
def test_settings_refuse_unknown_own_and_cyclic_counting(jails: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(jails=jails)


# ----------------------------------------------------------------------------------------------- core


def test_the_maxretry_th_ban_within_findtime_bans_in_the_recidive_jail() -> None:
    p = policy(AMPS, RECIDIVE)
    out = Engine(p).feed(
        [*burst(0, 3, 0, hosts=("h1", "h2")), *burst(20, 3, 10, hosts=("h3",)), *burst(40, 3, 20)]
    )
    a1, a2, a3 = bans(out, "amps")
    (r,) = bans(out, "recidive")
    assert r.at == a3.at and r.expires_at == a3.at + timedelta(seconds=1000)
    assert r.id == auto_decision_id("recidive", IP, a3.id)
    assert (r.failures, r.first_failure_at, r.last_failure_at) == (3, a1.at, a3.at)
    assert r.hosts == ["h1", "h2", "h3"] and r.ports == [9007, 9008] and r.ban_count == 1
    # the evidence names the bans that counted, in order
    assert [e.split()[1] for e in r.evidence] == [a1.id, a2.id, a3.id]
    assert all(" jail=amps " in e for e in r.evidence)
    # the triggering ban comes first, then the recidive one
    order = [o.decision for o in out]
    assert order.index(a3) + 1 == order.index(r)
    assert p.counters.bans_counted == 3


def test_the_window_is_exact_a_ban_findtime_old_does_not_count() -> None:
    p = policy(AMPS, {**RECIDIVE, "findtime": 40})
    # bans at 0.2, 20.2, 40.2: the first is exactly findtime old at the third -> not counted
    out = Engine(p).feed([*burst(0, 3, 0), *burst(20, 3, 10), *burst(40, 3, 20)])
    assert len(bans(out, "amps")) == 3 and bans(out, "recidive") == []
    # one more ban inside the window of the last two bans
    out = Engine(p).feed([*burst(0, 3, 0), *burst(20, 3, 10), *burst(40, 3, 20), *burst(59, 3, 30)])
    (r,) = bans(out, "recidive")
    assert r.failures == 3 and r.first_failure_at == from_epoch(BASE + 20.2)


def test_which_jails_count_and_manual_bans_do_not() -> None:
    short = {"name": "short", "reasons": ["name in use"], "maxretry": 2, "findtime": 10, "bantime": 5}
    p = policy(AMPS, short, {**RECIDIVE, "jails": ["short"]})
    engine = Engine(p)
    out = engine.feed([*burst(0, 3, 0), *burst(20, 3, 10), *burst(40, 3, 20)])  # three amps bans
    assert len(bans(out, "amps")) == 3 and bans(out, "recidive") == []
    manual = Decision(
        id="m-1",
        action="ban",
        ip=IP,
        jail="short",
        at=from_epoch(BASE + 41),
        expires_at=from_epoch(BASE + 42),
        origin="manual",
        by="op",
    )
    engine.manual(manual, out)
    assert p.counters.bans_counted == 0
    out = engine.feed([*burst(50, 2, 40, reason="name in use"), *burst(60, 2, 50, reason="name in use")])
    assert len(bans(out, "short")) == 2 and bans(out, "recidive") == []
    out = engine.feed(burst(70, 2, 60, reason="name in use"))
    (r,) = bans(out, "recidive")
    assert all(" jail=short " in e for e in r.evidence) and r.failures == 3


def test_a_recidive_ban_does_not_count_towards_itself_and_counting_restarts_after_it_expires() -> None:
    p = policy(AMPS, {**RECIDIVE, "bantime": 100})
    engine = Engine(p)
    out = engine.feed([*burst(0, 3, 0), *burst(20, 3, 10), *burst(40, 3, 20)])
    (r,) = bans(out, "recidive")
    # amps keeps banning while the recidive ban is in force: evidence only, no second recidive ban
    out = engine.feed([*burst(60, 3, 30), *burst(80, 3, 40), *burst(100, 3, 50)])
    assert len(bans(out, "amps")) == 3 and bans(out, "recidive") == []
    js = engine.states[IP].jails["recidive"]
    assert js.ban is not None and js.ban.evidence == 3
    # the recidive ban expires on the clock (at + bantime), like any ban
    out = engine.advance(BASE + 140.2)
    (u,) = unbans(out, "recidive")
    assert u.at == r.at + timedelta(seconds=100) and u.reason == "expired"
    assert u.id == auto_decision_id("recidive", IP, r.id, "unban")
    # bans before the expiry never count again: two new bans do not ban, the third does
    out = engine.feed([*burst(150, 3, 60), *burst(170, 3, 70)])
    assert bans(out, "recidive") == []
    out = engine.feed(burst(190, 3, 80))
    (r2,) = bans(out, "recidive")
    assert r2.ban_count == 2 and r2.first_failure_at == from_epoch(BASE + 150.2)


def test_bantime_increment_lengthens_the_next_recidive_ban() -> None:
    inc = {"enabled": True, "factor": 1}
    p = policy(AMPS, {**RECIDIVE, "bantime": 50, "bantime_increment": inc})
    # amps bans every 20 s; the second recidive ban counts the three after the first one expired
    out = Engine(p).feed([e for k in range(8) for e in burst(20 * k, 3, 10 * k)])
    r1, r2 = bans(out, "recidive")
    assert r1.expires_at - r1.at == timedelta(seconds=50)  # type: ignore[operator]
    assert r2.expires_at - r2.at == timedelta(seconds=100)  # type: ignore[operator]  # 50 * 2**1
    assert r2.ban_count == 2


def test_overalljails_counts_recidive_bans_too() -> None:
    """As fail2ban's bantime.overalljails: the ban count is over every jail, recidive included."""
    amps = {**AMPS, "bantime_increment": {"enabled": True, "overalljails": True}}
    p = policy(amps, RECIDIVE)
    out = Engine(p).feed([e for k in range(4) for e in burst(30 * k, 3, 10 * k)])
    a = bans(out, "amps")
    assert [d.ban_count for d in a] == [1, 2, 3, 5]  # the 4th amps ban follows 3 amps + 1 recidive


def test_a_second_tier_counts_the_first_tier_s_bans() -> None:
    r2 = {
        "name": "recidive2",
        "source": "bans",
        "jails": ["recidive"],
        "maxretry": 2,
        "findtime": 10_000,
        "bantime": -1,
    }
    p = policy(AMPS, {**RECIDIVE, "bantime": 10}, r2)
    out = Engine(p).feed([e for k in range(6) for e in burst(20 * k, 3, 10 * k)])
    assert len(bans(out, "recidive")) == 2
    (top,) = bans(out, "recidive2")
    assert top.expires_at is None and all(" jail=recidive " in e for e in top.evidence)


def test_ignoreip_of_the_recidive_jail_and_events_never_reach_it() -> None:
    p = policy(AMPS, {**RECIDIVE, "ignoreip": ["203.0.113.0/24"]})
    out = Engine(p).feed([*burst(0, 3, 0), *burst(20, 3, 10), *burst(40, 3, 20)])
    assert len(bans(out, "amps")) == 3 and bans(out, "recidive") == []
    # a line whose reason would match the recidive jail's (default) reasons is not its failure
    p = policy({**AMPS, "reasons": ["other"]}, RECIDIVE)
    engine = Engine(p)
    assert engine.feed(burst(0, 30, 0)) == [] and engine.states == {}
    assert p.route(IP).targets == {IP: (p.jails[0],)}


def test_span_of_a_rebuild_ignores_the_recidive_findtime() -> None:
    p = policy(AMPS, {**RECIDIVE, "findtime": 86400})
    assert span_s(p, margin_s=10.0) == 10 + 5 + 10


@given(
    st.lists(st.tuples(st.floats(0, 400), st.integers(1, 4)), min_size=1, max_size=40),
    st.integers(2, 4),
    st.floats(20, 200),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_recidive_decides_what_an_events_jail_decides_over_the_bans(
    bursts: list[tuple[float, int]], maxretry: int, findtime: float
) -> None:
    """One definition of the rule: the recidive jail's bans are those of an ordinary jail with the same
    settings fed the amps bans as failures (id = ban id, time = ban time)."""
    rec = {**RECIDIVE, "maxretry": maxretry, "findtime": findtime, "bantime": 150}
    events: list[Event] = []
    for k, (t, n) in enumerate(sorted(bursts)):
        events += burst(t, n, 10 * k)
    events.sort(key=lambda e: e.ts)
    out = Engine(policy(AMPS, rec)).feed(events)
    amps = bans(out, "amps")
    as_events = [
        Event(host=d.hosts[0], ip=d.ip, id=d.id, ts=d.at, port=0, client="", reason="ban", raw="")
        for d in amps
    ]
    plain = {k: v for k, v in rec.items() if k not in ("source",)} | {"reasons": ["ban"]}
    ref = bans(Engine(policy(plain)).feed(as_events))
    got = bans(out, "recidive")
    assert [(d.at, d.expires_at, d.failures, d.first_failure_at) for d in got] == [
        (d.at, d.expires_at, d.failures, d.first_failure_at) for d in ref
    ]


# --------------------------------------------------------------------- durable state and a rebuilt worker


def _record(ip: str, t: float, n: int, k: int, host: str = "h1") -> bytes:
    lines = [
        Line(id=f"{host}:{k}:{i}", ts=from_epoch(BASE + t + 0.1 * i), port=1, client="c", reason="auth")
        for i in range(n)
    ]
    return encode(EventBatch(host=host, ip=ip, lines=lines))


def test_the_recidive_window_is_durable_and_a_new_worker_continues_it() -> None:
    p = policy(AMPS, RECIDIVE)
    a = Processor(p, {})
    out: list[Output] = []
    a.on_events_record(IP.encode(), _record(IP, 0, 3, 0), out)
    a.on_events_record(IP.encode(), _record(IP, 20, 3, 1), out)
    assert len(bans(out, "amps")) == 2
    stored = durable_part(a.live[IP], p.bans_jails)
    assert stored is not None and len(stored.jails["recidive"].window) == 2
    # without the recidive jail's name the window would not be kept
    plain = durable_part(a.live[IP])
    assert plain is not None and "recidive" not in plain.jails
    # a worker that takes over has the table (the changelog) and replays the last span of events only
    b = Processor(p, dict(a.table))
    replayed: list[Output] = []
    b.on_events_record(IP.encode(), _record(IP, 20, 3, 1), replayed, replay=True)
    assert replayed == []  # a replayed record decides nothing again
    out_b: list[Output] = []
    b.on_events_record(IP.encode(), _record(IP, 40, 3, 2), out_b)
    (r,) = bans(out_b, "recidive")
    assert r.failures == 3 and r.first_failure_at == from_epoch(BASE + 0.2)


def test_a_re_emitted_ban_counts_once() -> None:
    p = policy(AMPS, RECIDIVE)
    engine = Engine(p)
    out = engine.feed(burst(0, 3, 0))
    (a1,) = bans(out, "amps")
    state = engine.states[IP]
    p._count_ban(p.jails[1], state, IP, a1, out)  # the same ban again (a worker re-emitting it)
    assert len(state.jails["recidive"].window) == 1 and p.counters.duplicates == 1


@pytest.mark.parametrize("seed", range(6))
def test_a_worker_rebuilt_mid_stream_decides_recidive_like_one_that_never_stopped(seed: int) -> None:
    rng = random.Random(seed)
    ips = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    records: list[tuple[float, bytes, bytes]] = []
    t = 0.0
    for k in range(300):
        t += rng.choice((0.3, 1.0, 4.0, 12.0))
        ip = rng.choice(ips)
        records.append((t, ip.encode(), _record(ip, t, rng.randint(1, 3), k, rng.choice(("h1", "h2")))))
    p = policy(AMPS, {**RECIDIVE, "findtime": 300, "bantime": 60})
    a = Processor(p, {})
    out_a: list[Output] = []
    cut = 150 + seed * 10
    for _, key, value in records[:cut]:
        a.on_events_record(key, value, out_a)
    b = Processor(p, dict(a.table))
    span = span_s(p)
    replayed: list[Output] = []
    for rt, key, value in records[:cut]:
        if rt >= records[cut][0] - span:
            b.on_events_record(key, value, replayed, replay=True)
    assert replayed == []
    out_a.clear()
    out_b: list[Output] = []
    for _, key, value in records[cut:]:
        a.on_events_record(key, value, out_a)
        b.on_events_record(key, value, out_b)
    assert [o.decision for o in out_b] == [o.decision for o in out_a]
    assert any(o.decision.jail == "recidive" and o.decision.action == "ban" for o in out_a)


def test_hosts_of_the_counted_bans_whatever_their_names() -> None:
    """Host names are whatever shippers say: no name can split into others in the recidive decision."""
    odd = ["h1\x1fh2", 'h3","h4', "h,5"]
    p = policy(AMPS, RECIDIVE)
    out = Engine(p).feed(
        [
            *burst(0, 3, 0, hosts=(odd[0],)),
            *burst(20, 3, 10, hosts=(odd[1],)),
            *burst(40, 3, 20, hosts=(odd[2],)),
        ]
    )
    (r,) = bans(out, "recidive")
    assert r.hosts == sorted(odd)


def test_a_manual_unban_of_the_recidive_ban_lifts_it_and_forgives_the_bans_before() -> None:
    p = policy(AMPS, RECIDIVE)
    engine = Engine(p)
    out = engine.feed([*burst(0, 3, 0), *burst(20, 3, 10), *burst(40, 3, 20)])
    assert len(bans(out, "recidive")) == 1
    unban = Decision(
        id="m-u", action="unban", ip=IP, jail="recidive", at=from_epoch(BASE + 50), origin="manual", by="op"
    )
    (mirror,) = engine.manual(unban)
    assert mirror.decision.action == "unban" and not mirror.publish
    assert engine.states[IP].jails["recidive"].ban is None
    # counting starts afresh after the operator's unban: the three bans before it never count again
    out = engine.feed([*burst(60, 3, 30), *burst(80, 3, 40)])
    assert bans(out, "recidive") == []
    out = engine.feed(burst(100, 3, 50))
    (r2,) = bans(out, "recidive")
    assert r2.first_failure_at == from_epoch(BASE + 60.2) and r2.ban_count == 2


def test_the_recidive_ban_count_outlives_a_week_long_ban_as_in_fail2ban() -> None:
    """fail2ban keeps a ban for the increment until ``timeofban + 3 * bantime`` is ``dbpurgeage`` old: a
    repeat offender who comes back two days after a week-long recidive ban gets a longer one."""
    week, day = 7 * 86400.0, 86400.0
    rec = {**RECIDIVE, "findtime": day, "bantime": week, "bantime_increment": {"enabled": True}}
    p = policy(AMPS, rec)
    engine = Engine(p)
    out = engine.feed([e for k in range(3) for e in burst(20 * k, 3, 10 * k)])
    (r1,) = bans(out, "recidive")
    assert r1.expires_at is not None
    released = r1.expires_at.timestamp()
    out = engine.advance(released + 2 * day)
    assert unbans(out, "recidive") and engine.states[IP].jails["recidive"].ban_count == 1
    t = released + 2 * day - BASE
    out = engine.feed([e for k in range(3) for e in burst(t + 20 * k, 3, 100 + 10 * k)])
    (r2,) = bans(out, "recidive")
    assert r2.ban_count == 2 and r2.expires_at - r2.at == timedelta(seconds=2 * week)  # type: ignore[operator]
    # forgotten once 3 x its length plus the retention have passed since it began
    assert r2.expires_at is not None
    engine.advance(r2.at.timestamp() + 3 * 2 * week + day - 1)
    assert engine.states[IP].jails["recidive"].ban_count == 2
    engine.advance(r2.at.timestamp() + 3 * 2 * week + day + 60)
    assert "recidive" not in engine.states.get(IP, TargetState()).jails


def test_a_scoped_ban_widened_to_the_fleet_counts_once_for_recidive() -> None:
    # amps with min_hosts 2: h1 alone bans on h1 only; h2's failure in the window makes it fleet-wide
    # (the same offence, a new decision): the repeat-offender jail counts that offence once
    p = policy({**AMPS, "min_hosts": 2}, {**RECIDIVE, "maxretry": 2})
    engine = Engine(p)
    out = engine.feed([*burst(0, 3, 0, hosts=("h1",)), ev(1.0, 50, host="h2")])
    scoped, wide = bans(out, "amps")
    assert scoped.scope == ["h1"] and wide.scope is None
    assert bans(out, "recidive") == [] and p.counters.bans_counted == 1
    # a second offence after the ban ends is the second counted ban: recidive bans
    out = engine.feed(burst(20, 3, 100, hosts=("h1", "h2")))
    assert len(bans(out, "recidive")) == 1 and p.counters.bans_counted == 2


def test_the_recidive_jail_s_ignoreip_covers_its_own_range_only_and_counts_as_ignored() -> None:
    p = policy(AMPS, {**RECIDIVE, "ignoreip": ["203.0.113.0/24"]})
    Engine(p).feed([*burst(0, 3, 0), *burst(20, 3, 10), *burst(40, 3, 20)])
    # ignored by the jail's own ignoreip (not refused by the rails, which hold the same range)
    assert (p.counters.ignored, p.counters.refused, p.counters.bans_counted) == (3, 0, 0)
    # an ignoreip elsewhere in the family leaves this address counted
    p = policy(AMPS, {**RECIDIVE, "ignoreip": ["10.0.0.0/24"]})
    out = Engine(p).feed([*burst(0, 3, 0), *burst(20, 3, 10), *burst(40, 3, 20)])
    (r,) = bans(out, "recidive")
    assert r.ip == IP and (p.counters.ignored, p.counters.bans_counted) == (0, 3)
    # an IPv4 ignoreip never covers an IPv6 target
    v6 = "2001:db8::9"
    p = policy(AMPS, {**RECIDIVE, "ignoreip": ["10.0.0.0/24"]})
    out = Engine(p).feed([*burst(0, 3, 0, ip=v6), *burst(20, 3, 10, ip=v6), *burst(40, 3, 20, ip=v6)])
    assert [r.ip for r in bans(out, "recidive")] == [v6]


def test_the_evidence_of_a_recidive_ban_names_each_counted_ban_in_full() -> None:
    for bantime, until in ((5, "2025-11-24T16:00:05.100000Z"), (-1, "permanent")):
        p = policy({**AMPS, "maxretry": 2, "bantime": bantime}, {**RECIDIVE, "maxretry": 1})
        out = Engine(p).feed(burst(0, 2, 0, hosts=("h2", "h1")))
        (a,) = bans(out, "amps")
        (r,) = bans(out, "recidive")
        assert r.evidence == [
            f"ban {a.id} jail=amps at=2025-11-24T16:00:00.100000Z until={until} failures=2 hosts=h1,h2"
        ]


def test_a_ban_the_rails_refuse_in_the_recidive_jail_is_counted_as_refused_not_as_a_failure() -> None:
    # amps bans the /64 of an IPv6 address; the recidive jail's ignoreip holds one address of that /64:
    # not covering the /64 (not ignored), but a ban of the /64 would cover it, so the rails refuse it there
    v6 = "2001:db8::9"
    p = policy(
        {**AMPS, "maxretry": 1, "ban_prefix_v6": 64}, {**RECIDIVE, "maxretry": 1, "ignoreip": ["2001:db8::5"]}
    )
    out = Engine(p).feed([ev(0.0, 1, v6), ev(20.0, 2, v6)])
    assert [b.ip for b in bans(out, "amps")] == ["2001:db8::/64"] * 2 and bans(out, "recidive") == []
    assert (p.counters.ignored, p.counters.refused, p.counters.bans_counted) == (0, 2, 0)
    # the same ignoreip in amps only: the recidive jail counts amps' bans of the /64
    p = policy(
        {**AMPS, "maxretry": 1, "ban_prefix_v6": 64, "ignoreip": ["2001:db8::5"]}, {**RECIDIVE, "maxretry": 1}
    )
    out = Engine(p).feed([ev(0.0, 1, v6)])
    assert bans(out, "amps") == [] and p.counters.refused == 1
