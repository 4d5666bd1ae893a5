"""A jail's ``min_hosts`` (issue 16, the blast radius of one host), without Kafka: the core scopes a ban to
the hosts that saw its failures until ``min_hosts`` hosts corroborate; the enforcer applies a ban only
where its scope reaches; coverage and ``audit verify`` do not call a scoped ban missing elsewhere; records
written before scopes existed read as fleet-wide."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from enforcer.backends.dryrun import DryRunBackend
from enforcer.core import Enforcer
from enforcer.plan import JailSpec
from fleet2ban.audit import queries
from fleet2ban.audit.view import FleetView
from fleet2ban.contract import (
    BanState,
    Decision,
    Event,
    Heartbeat,
    ban_key,
    decode_ban,
    decode_decision,
    encode,
    from_epoch,
)
from fleet2ban.rails import Rails
from fleet2ban.settings import EnforcerSettings, IncrementSettings, JailSettings
from processor.engine import Engine
from processor.policy import Output, Policy, TargetState, decode_state, durable_part, encode_state

BASE = 1_764_000_000.0
IP = "10.0.0.1"


def ev(t: float, host: str, n: int) -> Event:
    return Event(host, IP, f"{host}:f:{n}", from_epoch(BASE + t), 40000, "c", "auth", f"raw {host} {n}")


def policy(min_hosts: int, **jail: object) -> Policy:
    j = JailSettings(maxretry=3, findtime=10, bantime=60, min_hosts=min_hosts, **jail)  # type: ignore[arg-type]
    return Policy.from_settings([j], 5.0, max_future_s=float("inf"))


def feed(p: Policy, state: TargetState | None, *events: Event) -> tuple[TargetState | None, list[Output]]:
    out: list[Output] = []
    return p.apply(state, IP, events, out), out


def test_one_host_bans_on_itself_a_second_host_makes_it_fleet_wide() -> None:
    p = policy(2)
    state, out = feed(p, None, ev(0, "h1", 0), ev(1, "h1", 1), ev(2, "h1", 2))
    (o,) = out
    assert o.decision.scope == ["h1"] and o.decision.hosts == ["h1"] and o.decision.ban_count == 1
    scoped_id = o.decision.id
    # more of h1's failures: the scoped ban covers them already
    state, out = feed(p, state, ev(3, "h1", 3), ev(4, "h1", 4))
    assert out == []
    # one failure seen by h2 within findtime: the window's failures come from 2 hosts
    state, out = feed(p, state, ev(5, "h2", 0))
    (o,) = out
    d = o.decision
    assert d.action == "ban" and d.scope is None and d.id != scoped_id
    assert d.hosts == ["h1", "h2"] and d.ban_count == 1  # the same offence: no repeat
    assert d.expires_at == from_epoch(BASE + 5 + 60)
    # fleet-wide: failures are evidence only, and the window is cleared as before
    state, out = feed(p, state, ev(6, "h3", 0), ev(7, "h2", 1), ev(8, "h2", 2))
    assert out == []
    assert state is not None and state.jails["amps"].window == []
    assert state.jails["amps"].ban is not None and state.jails["amps"].ban.evidence == 3


def test_scopes_widen_until_min_hosts_and_survive_the_changelog() -> None:
    p = policy(3)
    state, out = feed(p, None, *(ev(i, "h1", i) for i in range(3)))
    assert [o.decision.scope for o in out] == [["h1"]]
    # h1's failures aged out of findtime; h2 alone reaches maxretry: two hosts saw it, scope widens
    state, out = feed(p, state, *(ev(30 + i, "h2", i) for i in range(3)))
    assert [o.decision.scope for o in out] == [["h1", "h2"]]
    assert out[0].decision.hosts == ["h2"]
    # the scoped ban is kept in the changelog with its scope (a restarted worker recovers it)
    assert state is not None
    durable = durable_part(state)
    assert durable is not None
    back = decode_state(encode_state(durable))
    assert back.jails["amps"].ban is not None and back.jails["amps"].ban.scope == ["h1", "h2"]
    state, out = feed(p, state, ev(40, "h3", 0), ev(40.5, "h2", 3), ev(41, "h2", 4))
    assert [o.decision.scope for o in out] == [None]


def test_default_min_hosts_is_fleet_wide_and_expiry_ends_a_scoped_ban() -> None:
    state, out = feed(policy(1), None, *(ev(i, "h1", i) for i in range(3)))
    assert [o.decision.scope for o in out] == [None]
    p = policy(2, bantime_increment=IncrementSettings(enabled=True, factor=2))
    state, out = feed(p, None, *(ev(i, "h1", i) for i in range(3)))
    (o,) = out
    assert o.decision.scope == ["h1"]
    expires = o.decision.expires_at
    assert expires is not None
    out = []
    state = p.tick(state, IP, expires.timestamp(), out)
    assert [x.decision.action for x in out] == ["unban"]
    # after the expiry counting starts afresh; the next scoped ban is a repeat offence (longer)
    t0 = expires.timestamp() - BASE + 1
    state, out = feed(p, state, *(ev(t0 + i, "h1", 10 + i) for i in range(3)))
    (o,) = out
    assert o.decision.scope == ["h1"] and o.decision.ban_count == 2


def test_engine_fast_path_scopes_too() -> None:
    eng = Engine(policy(2))
    out = eng.feed([ev(i, "h1", i) for i in range(3)] + [ev(3, "h2", 0)])
    assert [(o.decision.action, o.decision.scope) for o in out] == [("ban", ["h1"]), ("ban", None)]


def test_records_without_a_scope_read_as_fleet_wide() -> None:
    old = b'{"decision_id":"d","ip":"10.0.0.1","jail":"amps","at":"2026-01-01T00:00:00Z","v":1}'
    assert decode_ban(old).scope is None and decode_ban(old).applies_on("any")
    old_d = b'{"id":"d","action":"ban","ip":"10.0.0.1","jail":"amps","at":"2026-01-01T00:00:00Z","v":1}'
    assert decode_decision(old_d).scope is None
    d = Decision(id="d", action="ban", ip=IP, jail="amps", at=from_epoch(BASE), scope=["h1"])
    assert decode_decision(encode(d)).scope == ["h1"]
    assert BanState.from_decision(d).scope == ["h1"] and not BanState.from_decision(d).applies_on("h2")


def _enforcer(host: str) -> Enforcer:
    jails = [JailSpec("amps", (9007,))]
    settings = EnforcerSettings(host=host, backend="dryrun")
    return Enforcer(DryRunBackend(jails, settings), Rails.build(settings, [JailSettings()]), jails, host)


def test_enforcers_apply_a_ban_only_where_its_scope_reaches() -> None:
    at = from_epoch(BASE)
    scoped = BanState("d1", IP, "amps", at, expires_at=at + timedelta(days=3650), scope=["h1"])
    wide = BanState("d2", IP, "amps", at, expires_at=at + timedelta(days=3650))
    e1, e2 = _enforcer("h1"), _enforcer("h2")
    for e in (e1, e2):
        e.ingest(b"amps|10.0.0.1", encode(scoped))
        e.reconcile(full=True)
    assert ("amps", IP) in e1.backend.entries  # type: ignore[attr-defined]
    assert ("amps", IP) not in e2.backend.entries  # type: ignore[attr-defined]
    assert not [r for r in e2.take_reports() if r.ip == IP]  # nothing to report: not its ban
    for e in (e1, e2):
        e.ingest(b"amps|10.0.0.1", encode(wide))
        e.reconcile(full=False)
    assert ("amps", IP) in e1.backend.entries and ("amps", IP) in e2.backend.entries  # type: ignore[attr-defined]


def test_coverage_and_verify_understand_scope() -> None:
    now = from_epoch(BASE + 100)
    k = ban_key("amps", IP)
    view = FleetView()
    scoped = BanState("d1", IP, "amps", from_epoch(BASE), expires_at=now + timedelta(hours=1), scope=["h1"])
    view.add_ban(k, scoped, from_epoch(BASE))
    view.add_report(Heartbeat(host="h1", role="enforcer", at=now, interval_s=5.0, applied=[k]))
    view.add_report(Heartbeat(host="h2", role="enforcer", at=now, interval_s=5.0, applied=[]))
    (b,) = queries.bans_in_force(view, now, None)
    assert b.coverage.applied == ["h1"] and b.coverage.missing == [] and b.coverage.complete
    assert b.coverage.text() == "1/1 (scope h1)"
    decision = Decision(id="d1", action="ban", ip=IP, jail="amps", at=from_epoch(BASE), scope=["h1"])
    assert queries.verify(view, [decision], now, timedelta(seconds=5)).discrepancies == []
    # fleet-wide now (superseded): h2 not having it is missing
    wide = BanState("d2", IP, "amps", from_epoch(BASE), expires_at=now + timedelta(hours=1))
    view.add_ban(k, wide, from_epoch(BASE))
    (b,) = queries.bans_in_force(view, now, None)
    assert b.coverage.missing == ["h2"] and b.coverage.live == 2
    found = queries.verify(view, [decision], now, timedelta(seconds=5)).discrepancies
    assert [(d.kind, d.host) for d in found] == [("missing", "h2")]


def test_notifications_say_a_ban_is_scoped() -> None:
    from fleet2ban.notify.render import line

    d = Decision(id="d", action="ban", ip=IP, jail="amps", at=from_epoch(BASE), failures=3, hosts=["h1"])
    assert line(d).endswith("(3 failures on h1)")
    assert line(msgspec.structs.replace(d, scope=["h1"])).endswith("(3 failures on h1), only on h1")
