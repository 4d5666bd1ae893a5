"""The incremental reconcile: O(changes), and exactly what a reconcile over every ban would do.

No Kafka, no kernel: two Enforcers on dryrun backends and one fake clock, the one under test incremental,
the reference computing the desired state of every ban at every pass (``incremental=False``, the
behaviour before the incremental path existed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from enforcer_helpers import T0, Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import enforcer.plan as plan_mod
from enforcer.backends.dryrun import DryRunBackend
from enforcer.core import Enforcer, Outcome
from enforcer.plan import (
    MAX_KERNEL_TIMEOUT,
    JailSpec,
    Rails,
    desired_one,
    kernel_timeout,
    never_renews,
    renew_needed,
)
from fleet2ban.contract import BanState, ban_key, encode
from fleet2ban.settings import EnforcerSettings, JailSettings

JAILS = [JailSpec("amps", (9007,))]
OWN = "10.231.0.1"
TARGETS = [
    ("amps", "203.0.113.1"),
    ("amps", "203.0.113.2"),
    ("amps", "203.0.113.3"),
    ("amps", "203.0.113.4"),
    ("amps", "203.0.113.5"),
    ("amps", "203.0.113.6"),
    ("amps", "2001:db8::7"),
    ("amps", "198.51.100.0/25"),
    ("amps", "127.0.0.1"),  # refused: loopback
    ("amps", OWN),  # refused: the host's own address
    ("amps", "198.51.0.0/16"),  # refused: too wide a prefix
    ("other", "203.0.113.1"),  # refused: unknown jail
]
DAY = 86_400.0


def record(jail: str, target: str, did: str, at: datetime, expires_in: float | None) -> tuple[bytes, bytes]:
    ban = BanState(
        decision_id=did,
        ip=target,
        jail=jail,
        at=at,
        expires_at=None if expires_in is None else at + timedelta(seconds=expires_in),
    )
    return ban_key(jail, target).encode(), encode(ban)


def rails_for(max_bans: int = 100_000) -> Rails:
    return Rails.build(EnforcerSettings(max_bans=max_bans), [JailSettings()], own=[OWN])


@dataclass
class Pair:
    """The enforcer under test and its reference, fed the same records on the same clock."""

    clock: Clock
    inc: Enforcer
    ref: Enforcer

    @classmethod
    def make(cls, max_bans: int = 100_000) -> Pair:
        clock = Clock()
        enforcers = [
            Enforcer(
                DryRunBackend(JAILS, EnforcerSettings(backend="dryrun"), clock=clock.mono),
                rails_for(max_bans),
                JAILS,
                "h1",
                clock=clock,
                incremental=incremental,
            )
            for incremental in (True, False)
        ]
        return cls(clock, enforcers[0], enforcers[1])

    def both(self, fn: Callable[[Enforcer], Any]) -> None:
        fn(self.inc)
        fn(self.ref)

    def ingest(self, key: bytes, value: bytes | None) -> None:
        self.inc.ingest(key, value)
        self.ref.ingest(key, value)

    def backends(self) -> tuple[DryRunBackend, DryRunBackend]:
        a, b = self.inc.backend, self.ref.backend
        assert isinstance(a, DryRunBackend) and isinstance(b, DryRunBackend)
        return a, b

    def reconcile(self, full: bool) -> Outcome:
        got, want = self.inc.reconcile(full), self.ref.reconcile(full)
        assert got.changes == want.changes
        assert got.failed == want.failed and got.corrections == want.corrections
        self.check()
        return got

    def check(self) -> None:
        a, b = self.backends()
        assert a.entries == b.entries  # key -> kernel deadline (the timeout it was given)
        assert self.inc.applied == self.ref.applied
        reports = [
            [(r.kind, r.jail, r.ip, r.decision_id, r.detail, r.at) for r in e.take_reports()]
            for e in (self.inc, self.ref)
        ]
        assert reports[0] == reports[1]
        kept, full = self.inc.last_desired, self.ref.last_desired
        assert kept is not None and full is not None
        assert kept.wants == full.wants
        assert kept.alarm == full.alarm
        # the kept refusals may still hold bans that expired since (nothing reads those): compare the rest
        now = self.clock.now
        active = {
            k: r for k, r in kept.refused.items() if k in self.inc.bans and self.inc.bans[k].active_at(now)
        }
        assert active == full.refused
        assert self.inc.due() == self.ref.due()


# ----------------------------------------------------------------------------- the property

ADVANCES = [0.0, 0.4, 1.0, 4.6, 29.7, 61.0, 600.0, 3000.0, 13 * 3600.0, 13 * 3600.0, 2.95 * DAY, 5 * DAY]
EXPIRIES: list[float | None] = [
    None,
    1.0,
    5.0,
    30.0,
    59.5,
    90.0,
    3600.0,
    7200.0,
    3 * DAY,
    3 * DAY,
    40 * DAY,
    40 * DAY,
]

ban_op = st.tuples(
    st.just("ban"),
    st.integers(0, len(TARGETS) - 1),
    st.sampled_from(EXPIRIES),
    st.integers(0, 3),  # how long ago it was decided (the cap keeps the oldest)
    st.integers(0, 2),  # decision id
)
advance_op = st.tuples(st.just("advance"), st.sampled_from(ADVANCES))
burst_op = st.tuples(  # several bans in one batch (the allowed targets: enough to reach the cap)
    st.just("burst"),
    st.lists(st.integers(0, 7), min_size=2, max_size=6, unique=True),
    st.sampled_from(EXPIRIES),
    st.integers(0, 3),
)
op = st.one_of(
    ban_op,
    ban_op,
    burst_op,
    burst_op,
    advance_op,
    advance_op,
    st.tuples(st.just("lift"), st.integers(0, len(TARGETS) - 1)),
    st.tuples(st.just("fail"), st.integers(0, 6)),  # the backend refuses this target's adds from now on
    st.tuples(st.just("heal")),  # ... and accepts everything again
    st.tuples(st.just("drift"), st.integers(0, 6), st.sampled_from([-100.0, 3.0, 100.0, None])),
    st.tuples(st.just("full")),
    st.tuples(st.just("invalid")),
)


def step(pair: Pair, action: tuple[Any, ...]) -> None:
    kind = action[0]
    if kind == "ban":
        _, i, expires_in, ago, did = action
        jail, target = TARGETS[i]
        at = pair.clock.now - timedelta(seconds=ago)
        rec = record(jail, target, f"d{did}-{target}-{pair.clock.mono()}", at, expires_in)
        pair.ingest(*rec)
    elif kind == "burst":
        _, indexes, expires_in, ago = action
        for n, i in enumerate(indexes):
            jail, target = TARGETS[i]
            at = pair.clock.now - timedelta(seconds=ago + n)
            rec = record(jail, target, f"b-{target}-{pair.clock.mono()}", at, expires_in)
            pair.ingest(*rec)
    elif kind == "lift":
        jail, target = TARGETS[action[1]]
        pair.both(lambda e: e.ingest(ban_key(jail, target).encode(), None))
    elif kind == "advance":
        pair.clock.advance(action[1])
    elif kind == "fail":
        for b in pair.backends():
            b.fail.add(TARGETS[action[1]][1])
    elif kind == "heal":
        for b in pair.backends():
            b.fail.clear()
    elif kind == "drift":  # someone changes an entry in the kernel: only a full reconcile sees it
        key = TARGETS[action[1]]
        for b in pair.backends():
            if key in b.entries:
                if action[2] is None:
                    del b.entries[key]
                else:
                    deadline = b.entries[key]
                    b.entries[key] = None if deadline is None else deadline + action[2]
    elif kind == "invalid":
        pair.both(lambda e: e.ingest(b"amps|203.0.113.1", b"{not json"))
    pair.reconcile(full=kind == "full")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_bans=st.integers(2, 5), ops=st.lists(op, min_size=5, max_size=50))
def test_incremental_reconcile_matches_a_full_desired_state_recompute(
    max_bans: int, ops: list[tuple[Any, ...]]
) -> None:
    pair = Pair.make(max_bans)
    pair.reconcile(full=True)
    for action in ops:
        step(pair, action)


# ----------------------------------------------------------------------------- it is incremental


def test_one_more_ban_evaluates_only_that_ban(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    backend = DryRunBackend(JAILS, EnforcerSettings(backend="dryrun"), clock=clock.mono)
    e = Enforcer(backend, rails_for(), JAILS, "h1", clock=clock)
    for i in range(5000):
        e.ingest(*record("amps", f"198.18.{i // 250}.{i % 250 + 1}", f"d{i}", T0, 3600 + i))
    assert e.reconcile(full=True).keys is None
    assert len(backend.entries) == 5000
    e.take_reports()

    evaluated: list[tuple[str, str]] = []
    refusals: list[tuple[str, str]] = []
    real_one, real_refusal = desired_one, Rails.refusal

    def counting_one(key: tuple[str, str], *args: Any) -> Any:
        evaluated.append(key)
        return real_one(key, *args)

    def counting_refusal(self: Rails, jail: str, target: str) -> str | None:
        refusals.append((jail, target))
        return real_refusal(self, jail, target)

    monkeypatch.setattr(plan_mod, "desired_one", counting_one)
    monkeypatch.setattr(Rails, "refusal", counting_refusal)

    clock.advance(1)
    e.ingest(*record("amps", "203.0.113.9", "new", clock.now, 60))
    out = e.reconcile(full=False)
    assert out.keys == 1 and [a.target for a in out.changes.adds] == ["203.0.113.9"]
    assert evaluated == [("amps", "203.0.113.9")] and refusals == [("amps", "203.0.113.9")]
    assert [(r.kind, r.ip) for r in e.take_reports()] == [("applied", "203.0.113.9")]
    assert len(backend.entries) == 5001

    # its expiry is the next one due: that pass evaluates it alone, and lifts it
    assert e.due() == clock.now + timedelta(seconds=60)
    clock.advance(61)
    evaluated.clear()
    out = e.reconcile(full=False)
    assert out.keys == 1 and evaluated == [("amps", "203.0.113.9")]
    assert [(r.kind, r.ip, r.detail) for r in e.take_reports()] == [("removed", "203.0.113.9", "expired")]

    # nothing changed: nothing evaluated
    evaluated.clear()
    assert e.reconcile(full=False).keys == 0 and not evaluated


def test_the_cap_in_play_computes_every_ban() -> None:
    pair = Pair.make(max_bans=2)
    pair.reconcile(full=True)
    for i in (1, 2):
        rec = record("amps", f"203.0.113.{i}", f"d{i}", T0 + timedelta(seconds=i), 600)
        pair.ingest(*rec)
        assert pair.reconcile(full=False).keys == 1
    rec = record("amps", "203.0.113.3", "d3", T0 + timedelta(seconds=3), 600)
    pair.ingest(*rec)
    assert pair.reconcile(full=False).keys is None  # would exceed the cap
    pair.both(lambda e: e.ingest(b"amps|203.0.113.1", None))
    assert pair.reconcile(full=False).keys is None  # a ban refused by the cap: it may now fit
    assert set(pair.inc.backend.list()) == {("amps", "203.0.113.2"), ("amps", "203.0.113.3")}
    assert pair.reconcile(full=False).keys == 0  # the cap is no longer in play


def test_a_ban_longer_than_the_kernel_timeout_is_renewed_by_incremental_passes() -> None:
    pair = Pair.make()
    rec = record("amps", "203.0.113.1", "long", T0, 40 * DAY)
    pair.ingest(*rec)
    pair.reconcile(full=True)
    assert pair.inc.backend.list()[("amps", "203.0.113.1")].timeout == MAX_KERNEL_TIMEOUT
    pair.clock.advance(13 * 3600)  # more than 2% of the longest kernel timeout has run down
    out = pair.reconcile(full=False)
    assert [a.renew for a in out.changes.adds] == [True]
    assert out.keys == 1


def test_a_drifted_kernel_timeout_is_renewed_when_the_tolerance_shrinks() -> None:
    pair = Pair.make()
    rec = record("amps", "203.0.113.1", "d1", T0, 3 * DAY)
    pair.ingest(*rec)
    pair.reconcile(full=True)
    for b in pair.backends():  # someone re-added it with 100 s more: within 2% of 3 days, left alone
        b.entries[("amps", "203.0.113.1")] += 100  # type: ignore[operator]
    assert not pair.reconcile(full=True).changes
    pair.clock.advance(3 * DAY - 3000)  # 2% of what is left is less than 100 s now
    out = pair.reconcile(full=False)
    assert out.keys == 1 and [a.renew for a in out.changes.adds] == [True]


def test_a_failed_add_is_retried_by_the_next_incremental_pass() -> None:
    pair = Pair.make()
    pair.reconcile(full=True)
    for b in pair.backends():
        b.fail.add("203.0.113.1")
    rec = record("amps", "203.0.113.1", "d1", T0, 600)
    pair.ingest(*rec)
    assert pair.reconcile(full=False).failed == 1
    assert pair.reconcile(full=False).failed == 1  # tried again, reported once
    for b in pair.backends():
        b.fail.clear()
    out = pair.reconcile(full=False)
    assert out.keys == 1 and len(out.changes.adds) == 1
    assert ("amps", "203.0.113.1") in pair.inc.applied


def test_a_pass_that_raised_is_followed_by_a_full_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = Pair.make()
    pair.reconcile(full=True)
    rec = record("amps", "203.0.113.1", "d1", T0, 600)
    pair.ingest(*rec)

    def broken() -> list[Any]:
        raise RuntimeError("kernel says no")

    monkeypatch.setattr(pair.inc.backend, "commit", broken)
    with pytest.raises(RuntimeError):
        pair.inc.reconcile(full=False)
    pair.inc.backend._take_staged()  # what the failed commit left staged
    monkeypatch.undo()
    assert pair.reconcile(full=False).keys is None
    assert ("amps", "203.0.113.1") in pair.inc.applied


def test_new_rails_are_applied_to_every_ban() -> None:
    pair = Pair.make()
    rec = record("amps", "203.0.113.1", "d1", T0, 600)
    pair.ingest(*rec)
    pair.reconcile(full=True)
    for e in (pair.inc, pair.ref):  # what Agent does before a full reconcile; here before another one
        e.rails = Rails.build(EnforcerSettings(protect=["203.0.113.0/24"]), [JailSettings()])
    assert pair.reconcile(full=False).keys is None
    assert not pair.inc.applied


# ----------------------------------------------------------------------------- never_renews


@settings(max_examples=300, deadline=None)
@given(
    left=st.floats(0.01, 3 * MAX_KERNEL_TIMEOUT),
    delta=st.floats(-2.0, 2.0),
    before=st.lists(  # seconds before the ban expires (near the end the tolerance is smallest)
        st.one_of(st.floats(0.000001, 200.0), st.floats(0.0, 3 * MAX_KERNEL_TIMEOUT)), min_size=1, max_size=20
    ),
)
def test_never_renews_is_true_to_renew_needed(left: float, delta: float, before: list[float]) -> None:
    expires = T0 + timedelta(seconds=left)
    deadline = expires + timedelta(seconds=delta)
    assert never_renews(deadline, expires)
    for s in before:
        now = expires - timedelta(seconds=s)
        if now >= expires:
            continue
        assert not renew_needed(kernel_timeout(deadline, now), kernel_timeout(expires, now))


def test_never_renews_edges() -> None:
    assert never_renews(None, None)
    assert not never_renews(None, T0) and not never_renews(T0, None)
    assert not never_renews(T0 + timedelta(seconds=2.5), T0)
