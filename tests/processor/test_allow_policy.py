"""The allow-list in the processor's core and record handling, without Kafka (a dict is the table)."""

from __future__ import annotations

from datetime import timedelta

from fleet2ban.contract import AllowEntry, Decision, EventBatch, Line, allow_key, encode, from_epoch
from fleet2ban.settings import JailSettings
from processor.app import Processor
from processor.policy import Output, Policy

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
