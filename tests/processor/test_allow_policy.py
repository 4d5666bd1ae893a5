"""The allow-list in the processor's core and record handling, without Kafka (a dict is the table)."""

from __future__ import annotations

from datetime import timedelta

from fleet2ban.allowlist import AllowList
from fleet2ban.contract import (
    AllowEntry,
    Decision,
    Event,
    EventBatch,
    Line,
    allow_key,
    auto_decision_id,
    encode,
    from_epoch,
)
from fleet2ban.settings import JailSettings
from processor.app import Processor
from processor.policy import Output, Policy, TargetState

BASE = 1_764_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = BASE

    def __call__(self) -> float:
        return self.now


def batch(ip: str, n: int, t: float = 0.0, start: int = 0) -> bytes:
    lines = [
        Line(id=f"h1:{start + i}", ts=from_epoch(BASE + t + 0.01 * i), port=1, client="c", reason="auth")
        for i in range(n)
    ]
    return encode(EventBatch(host="h1", ip=ip, lines=lines))


def allow_record(network: str, ttl: float | None = None, jail: str = "*") -> tuple[bytes, bytes]:
    e = AllowEntry(
        id=f"al-{network}",
        network=network,
        at=from_epoch(BASE),
        jail=jail,
        expires_at=None if ttl is None else from_epoch(BASE + ttl),
        by="alice",
        reason="partner",
    )
    return allow_key(jail, network).encode(), encode(e)


def make(clock: Clock) -> Processor:
    policy = Policy.from_settings([JailSettings(maxretry=3, bantime=600)], 5.0, clock=clock)
    return Processor(policy, {})


def everything(_key: bytes) -> bool:
    return True


def test_allowed_failures_are_evidence_only_until_the_entry_expires() -> None:
    clock = Clock()
    p = make(clock)
    out: list[Output] = []
    p.on_allow_record(*allow_record("198.51.100.0/24", ttl=30), clock.now, everything, out)
    p.on_events_record(b"198.51.100.7", batch("198.51.100.7", 10), out)
    assert out == [] and p.policy.counters.allowed == 10 and p.policy.counters.failures == 0
    # the entry expires by the processor's clock: the next tick routes afresh and failures count again
    clock.now = BASE + 31
    p.tick(clock.now, everything, out)
    p.on_events_record(b"198.51.100.7", batch("198.51.100.7", 3, t=31, start=10), out)
    assert [o.decision.action for o in out] == ["ban"]


def test_new_entry_lifts_bans_it_covers_with_a_decision_that_says_why() -> None:
    clock = Clock()
    p = make(clock)
    out: list[Output] = []
    p.on_events_record(b"198.51.100.7", batch("198.51.100.7", 3), out)
    p.on_events_record(b"203.0.113.9", batch("203.0.113.9", 3), out)
    assert [o.decision.action for o in out] == ["ban", "ban"]
    out.clear()
    clock.now = BASE + 5
    p.on_allow_record(*allow_record("198.51.100.0/24"), clock.now, everything, out)
    (o,) = out
    d = o.decision
    assert o.publish and (d.action, d.ip, d.jail, d.origin, d.by) == (
        "unban",
        "198.51.100.7",
        "amps",
        "auto",
        "alice",
    )
    assert d.reason is not None and "allow-list entry 198.51.100.0/24" in d.reason and "partner" in d.reason
    assert p.policy.jails[0].name == "amps" and p.live["198.51.100.7"].jails["amps"].ban is None
    # failures from before the lift never count again; new ones are allowed (evidence only)
    out.clear()
    p.on_events_record(b"198.51.100.7", batch("198.51.100.7", 5, t=6, start=3), out)
    assert out == []
    # a manual ban of an allowed address is refused too
    manual = Decision(
        id="m-1", action="ban", ip="198.51.100.8", jail="amps", at=from_epoch(BASE + 5), origin="manual",
        by="bob", reason="x", expires_at=from_epoch(BASE + 600),
    )  # fmt: skip
    p.on_decision_record(encode(manual), out)
    assert out == []


def test_lift_only_on_owned_targets_and_the_sweep_lifts_the_rest() -> None:
    clock = Clock()
    p = make(clock)
    out: list[Output] = []
    p.on_events_record(b"198.51.100.7", batch("198.51.100.7", 3), out)
    out.clear()
    p.on_allow_record(*allow_record("198.51.100.7"), clock.now, lambda _k: False, out)
    assert out == []  # not owned (a rebalance): the sweep after the assignment does it
    p.sweep(clock.now + timedelta(seconds=1).total_seconds(), everything, out)
    assert [(o.decision.action, o.decision.ip) for o in out] == [("unban", "198.51.100.7")]
    # the allow-list audit records on decisions are not manual decisions to apply
    out.clear()
    audit = Decision(
        id="al-x", action="allow", ip="203.0.113.0/24", jail="*", at=from_epoch(BASE), origin="manual"
    )
    p.on_decision_record(encode(audit), out)
    assert out == []


# ------------------------------------------------------------------ the core's own allow-list rules (Policy)


def entry(network: str, jail: str = "*", expires: float | None = None, eid: str = "al-1") -> AllowEntry:
    return AllowEntry(
        id=eid,
        network=network,
        at=from_epoch(BASE),
        jail=jail,
        expires_at=None if expires is None else from_epoch(BASE + expires),
        by="alice",
        reason="partner",
    )


def failure(t: float, n: int, ip: str = "198.51.100.7", reason: str = "auth") -> Event:
    return Event(
        host="h1",
        ip=ip,
        id=f"h1:{n}",
        ts=from_epoch(BASE + t),
        port=1,
        client="c",
        reason=reason,
        raw=f"line {n}",
    )


def two_jail_policy(clock: Clock, *entries: AllowEntry) -> Policy:
    p = Policy.from_settings(
        [
            JailSettings(name="a", reasons=["auth"], maxretry=2, bantime=600, ports=[9007]),
            JailSettings(name="b", reasons=["auth"], maxretry=2, bantime=1200, ports=[9008, 9009]),
        ],
        5.0,
        clock=clock,
    )
    p.max_future_s = float("inf")
    p.allow = AllowList(entries)
    p.allow_changed()
    return p


def feed(p: Policy, state: TargetState | None, *events: Event) -> tuple[TargetState | None, list[Output]]:
    out: list[Output] = []
    return p.apply(state, "198.51.100.7", list(events), out), out


def test_lift_ends_only_the_bans_in_force_an_entry_covers_in_their_jail() -> None:
    clock = Clock()
    p = two_jail_policy(clock)
    state, out = feed(p, None, failure(1.0, 1), failure(2.0, 2))
    assert sorted(o.decision.jail for o in out) == ["a", "b"]
    ban_b = state.jails["b"].ban if state else None
    assert ban_b is not None
    unbans_before = p.counters.unbans
    # an entry for jail b only, in force at the lift's time but expired by the clock's
    p.allow = AllowList([entry("198.51.100.0/24", jail="b", expires=30)])
    clock.now = BASE + 40
    out = []
    state = p.lift(state, "198.51.100.7", BASE + 10, out)
    (o,) = out  # a's ban is not covered (and comes first): b's is still lifted
    assert o.publish and o.decision == Decision(
        id=auto_decision_id("b", "198.51.100.7", f"al-1|{ban_b.decision_id}", "unban"),
        action="unban",
        ip="198.51.100.7",
        jail="b",
        at=from_epoch(BASE + 10),
        ports=[9008, 9009],
        ban_count=1,
        origin="auto",
        by="alice",
        reason=o.decision.reason,
    )
    assert state is not None and state.jails["a"].ban is not None and state.jails["b"].ban is None
    assert p.counters.unbans == unbans_before + 1
    # a second lift finds nothing in force
    assert p.lift(state, "198.51.100.7", BASE + 11, []) is state and p.counters.unbans == unbans_before + 1


def test_lift_leaves_expired_bans_to_tick_and_skips_jails_without_a_ban() -> None:
    clock = Clock()
    p = two_jail_policy(clock, entry("198.51.100.0/24"))
    p.allow = None  # failures counted; the entry comes later
    state, _ = feed(p, None, failure(1.0, 1, reason="other"))  # a state with no ban in either jail
    out: list[Output] = []
    p.allow = AllowList([entry("198.51.100.0/24")])
    assert p.lift(state, "198.51.100.7", BASE + 2, out) is state and out == []
    p.allow = None
    state, _ = feed(p, state, failure(1.0, 1), failure(2.0, 2))  # banned: in a until 602, in b until 1202
    p.allow = AllowList([entry("198.51.100.0/24")])
    p.lift(state, "198.51.100.7", BASE + 602, out)
    assert [o.decision.jail for o in out] == ["b"]  # a's ended at 602: tick's (the next jail is still lifted)
    assert state is not None and state.jails["a"].ban is not None and state.jails["b"].ban is None


def test_failures_after_a_lift_count_only_from_the_later_of_its_time_and_the_watermark() -> None:
    clock = Clock()
    # the lift's time ahead of the failures seen: failures before it are forgiven
    p = two_jail_policy(clock)
    p.jails = p.event_jails = p.jails[:1]
    state, out = feed(p, None, failure(10.0, 1), failure(11.0, 2))
    assert [o.decision.action for o in out] == ["ban"]
    p.allow = AllowList([entry("198.51.100.7/32")])
    out = []
    state = p.lift(state, "198.51.100.7", BASE + 20, out)
    assert len(out) == 1
    p.allow = None
    state, out = feed(p, state, failure(15.0, 3), failure(16.0, 4))
    assert out == [] and p.counters.late == 2
    state, out = feed(p, state, failure(21.0, 5), failure(22.0, 6))
    assert [o.decision.action for o in out] == ["ban"]

    # the lift's time behind the failures seen (the watermark): every failure up to the watermark forgiven
    p = two_jail_policy(clock)
    p.jails = p.event_jails = p.jails[:1]
    state, out = feed(p, None, failure(10.0, 1), failure(11.0, 2))
    p.allow = AllowList([entry("198.51.100.7/32")])
    out = []
    state = p.lift(state, "198.51.100.7", BASE + 5, out)
    assert len(out) == 1
    p.allow = None
    state, out = feed(p, state, failure(11.0, 3), failure(10.5, 4))
    assert out == [] and p.counters.late == 2
    state, out = feed(p, state, failure(11.1, 5), failure(11.2, 6))
    assert [o.decision.action for o in out] == ["ban"]


def test_a_lift_never_lowers_the_floor_an_expiry_left() -> None:
    clock = Clock()
    p = two_jail_policy(clock)
    p.jails = p.event_jails = p.jails[:1]
    state, out = feed(p, None, failure(1.0, 1), failure(2.0, 2))  # banned until 602
    out = []
    state = p.tick(state, "198.51.100.7", BASE + 700, out, forget=False)  # expired: the floor is 602
    assert [o.decision.action for o in out] == ["unban"] and p.counters.unbans == 1
    manual = Decision(
        id="m-1", action="ban", ip="198.51.100.7", jail="a", at=from_epoch(BASE + 40), origin="manual",
        expires_at=from_epoch(BASE + 5000),
    )  # fmt: skip
    state = p.manual(state, manual, [])
    p.allow = AllowList([entry("198.51.100.7/32")])
    out = []
    state = p.lift(state, "198.51.100.7", BASE + 50, out)
    (o,) = out
    assert o.decision.ban_count == 2 and p.counters.unbans == 2
    p.allow = None
    state, out = feed(p, state, failure(60.0, 3), failure(61.0, 4))  # before the floor: not counted
    assert out == []
    state, out = feed(p, state, failure(603.0, 5), failure(604.0, 6))
    assert [o.decision.action for o in out] == ["ban"]


def test_a_manual_ban_of_an_allowed_target_is_not_applied_and_is_counted() -> None:
    clock = Clock()
    p = two_jail_policy(clock, entry("198.51.100.0/24", jail="a"))

    def manual(action: str, jail: str, n: int) -> list[Output]:
        d = Decision(
            id=f"m-{n}", action=action, ip="198.51.100.7", jail=jail, at=from_epoch(BASE), origin="manual",
            by="bob",
        )  # fmt: skip
        out: list[Output] = []
        p.manual(None, d, out)
        return out

    assert manual("ban", "a", 1) == [] and manual("ban", "a", 2) == []
    assert p.counters.allowed == 2 and p.counters.manual == 0
    # another jail, or an unban, is applied
    assert [o.decision.jail for o in manual("ban", "b", 3)] == ["b"]
    assert [o.decision.action for o in manual("unban", "a", 4)] == ["unban"]
    assert p.counters.allowed == 2 and p.counters.manual == 2


def test_routes_are_computed_afresh_once_the_entry_they_depend_on_has_expired() -> None:
    clock = Clock()
    p = two_jail_policy(clock, entry("198.51.100.0/24", expires=30))
    p.jails = p.event_jails = p.jails[:1]
    out: list[Output] = []
    p.process_events(lambda _t: None, lambda _t, _s: None, [failure(1.0, 1), failure(2.0, 2)], out)
    assert out == [] and p.counters.allowed == 2
    clock.now = BASE + 30  # the entry's expires_at: no longer in force
    p.allow_expiry(clock.now)
    states: dict[str, TargetState | None] = {}
    p.process_events(states.get, states.__setitem__, [failure(31.0, 3), failure(32.0, 4)], out)
    assert [o.decision.action for o in out] == ["ban"]
