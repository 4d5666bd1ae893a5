"""The Enforcer (active set + reconcile + reports) against the dryrun backend: no Kafka, no kernel."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from enforcer_helpers import T0, Clock

from enforcer.backends.dryrun import DryRunBackend
from enforcer.core import Enforcer
from enforcer.plan import JailSpec, Rails
from fleet2ban.contract import BanState, ban_key, encode
from fleet2ban.settings import EnforcerSettings, JailSettings

JAILS = [JailSpec("amps", (9007,))]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> DryRunBackend:
    return DryRunBackend(JAILS, EnforcerSettings(backend="dryrun"), clock=clock.mono)


def make(backend: DryRunBackend, clock: Clock) -> Enforcer:
    rails = Rails.build(EnforcerSettings(), [JailSettings()], own=["10.231.0.1"])
    return Enforcer(backend, rails, JAILS, "h1", clock=clock)


def record(
    ip: str, expires_in: float | None = 60, did: str | None = None, at: datetime = T0
) -> tuple[bytes, bytes]:
    ban = BanState(
        decision_id=did or f"b-{ip}",
        ip=ip,
        jail="amps",
        at=at,
        expires_at=None if expires_in is None else at + timedelta(seconds=expires_in),
    )
    return ban_key("amps", ip).encode(), encode(ban)


def kinds(e: Enforcer) -> list[tuple[str, str]]:
    return [(r.kind, r.ip) for r in e.take_reports()]


def test_apply_then_lift_by_tombstone(backend: DryRunBackend, clock: Clock) -> None:
    e = make(backend, clock)
    e.ingest(*record("203.0.113.9"))
    e.ingest(*record("2001:db8::9", expires_in=None))
    e.reconcile(full=True)
    assert set(backend.entries) == {("amps", "203.0.113.9"), ("amps", "2001:db8::9")}
    assert sorted(kinds(e)) == [("applied", "2001:db8::9"), ("applied", "203.0.113.9")]
    # Nothing to do: no commit, no reports.
    commits = backend.commits
    assert not e.reconcile(full=False).changes
    assert backend.commits == commits and not e.take_reports()
    e.ingest(b"amps|203.0.113.9", None)
    e.reconcile(full=False)
    assert set(backend.entries) == {("amps", "2001:db8::9")}
    reports = e.take_reports()
    assert [(r.kind, r.ip, r.detail, r.decision_id) for r in reports] == [
        ("removed", "203.0.113.9", "lifted", "b-203.0.113.9")
    ]


def test_expires_on_its_own_clock(backend: DryRunBackend, clock: Clock) -> None:
    e = make(backend, clock)
    e.ingest(*record("203.0.113.9", expires_in=30))
    e.reconcile(full=True)
    assert e.due() == T0 + timedelta(seconds=30)
    clock.advance(31)
    e.take_reports()
    e.reconcile(full=False)
    assert not backend.entries
    assert [(r.kind, r.detail) for r in e.take_reports()] == [("removed", "expired")]


def test_refused_bans_are_reported_once_and_never_applied(backend: DryRunBackend, clock: Clock) -> None:
    e = make(backend, clock)
    for ip in ("127.0.0.1", "::1", "10.231.0.1", "0.0.0.0/0"):
        e.ingest(*record(ip))
    e.ingest(b"amps|203.0.113.1", b"{not json")
    e.ingest(b"no-separator", encode(BanState(decision_id="x", ip="203.0.113.2", jail="amps", at=T0)))
    e.reconcile(full=True)
    e.reconcile(full=True)
    assert not backend.entries
    reports = e.take_reports()
    assert sorted((r.kind, r.ip) for r in reports) == sorted(
        [
            ("skipped", "0.0.0.0/0"),
            ("skipped", "10.231.0.1"),
            ("skipped", "127.0.0.1"),
            ("skipped", "::1"),
            ("skipped", "?"),
            ("skipped", "203.0.113.1"),
        ]
    )
    assert all(r.detail for r in reports)
    assert e.counters["invalid"] == 2


def test_key_value_mismatch_is_invalid(backend: DryRunBackend, clock: Clock) -> None:
    e = make(backend, clock)
    key, _ = record("203.0.113.1")
    _, value = record("203.0.113.2")
    e.ingest(key, value)
    assert not e.bans and e.counters["invalid"] == 1


def test_failed_apply_is_reported_once(backend: DryRunBackend, clock: Clock) -> None:
    backend.fail.add("203.0.113.9")
    e = make(backend, clock)
    e.ingest(*record("203.0.113.9"))
    e.reconcile(full=True)
    e.reconcile(full=False)
    reports = e.take_reports()
    assert [(r.kind, r.ip) for r in reports] == [("failed", "203.0.113.9")]
    assert "refused on purpose" in (reports[0].detail or "")
    backend.fail.clear()
    e.reconcile(full=False)
    assert kinds(e) == [("applied", "203.0.113.9")]


def test_full_reconcile_repairs_drift(backend: DryRunBackend, clock: Clock) -> None:
    e = make(backend, clock)
    e.ingest(*record("203.0.113.9"))
    e.ingest(*record("203.0.113.10"))
    e.reconcile(full=True)
    e.take_reports()
    del backend.entries[("amps", "203.0.113.9")]  # someone deleted an entry
    backend.entries[("amps", "198.51.100.7")] = None  # a stray entry
    out = e.reconcile(full=True)
    assert out.corrections["missing"] == 1 and out.corrections["stray"] == 1
    assert set(backend.entries) == {("amps", "203.0.113.9"), ("amps", "203.0.113.10")}
    assert not e.take_reports()  # a re-added entry of the same decision is not a new "applied"


def test_extension_renews_and_reports_the_new_decision(backend: DryRunBackend, clock: Clock) -> None:
    e = make(backend, clock)
    e.ingest(*record("203.0.113.9", expires_in=30, did="d1"))
    e.reconcile(full=True)
    e.take_reports()
    clock.advance(10)
    e.ingest(*record("203.0.113.9", expires_in=600, did="d2", at=clock.now))
    out = e.reconcile(full=False)
    assert [a.renew for a in out.changes.adds] == [True]
    assert [(r.kind, r.decision_id) for r in e.take_reports()] == [("applied", "d2")]
    assert backend.list()[("amps", "203.0.113.9")].timeout == 600


def test_restart_with_entries_already_in_the_kernel(backend: DryRunBackend, clock: Clock) -> None:
    first = make(backend, clock)
    first.ingest(*record("203.0.113.9"))
    first.reconcile(full=True)
    second = make(backend, clock)  # a restarted enforcer: the kernel kept the entry
    second.ingest(*record("203.0.113.9"))
    out = second.reconcile(full=True)
    assert not out.changes and not out.corrections
    assert not second.take_reports()


def test_restart_with_an_empty_kernel_brings_bans_back(backend: DryRunBackend, clock: Clock) -> None:
    first = make(backend, clock)
    first.ingest(*record("203.0.113.9"))
    first.reconcile(full=True)
    backend.entries.clear()  # reboot
    second = make(backend, clock)
    second.ingest(*record("203.0.113.9"))
    second.reconcile(full=True)
    assert set(backend.entries) == {("amps", "203.0.113.9")}
    assert kinds(second) == [("applied", "203.0.113.9")]


def test_cap_refuses_beyond_max(backend: DryRunBackend, clock: Clock) -> None:
    rails = Rails.build(EnforcerSettings(max_bans=2), [JailSettings()])
    e = Enforcer(backend, rails, JAILS, "h1", clock=clock)
    for i in range(1, 5):
        e.ingest(*record(f"203.0.113.{i}", at=T0 + timedelta(seconds=i)))
    e.reconcile(full=True)
    assert set(backend.entries) == {("amps", "203.0.113.1"), ("amps", "203.0.113.2")}
    skipped = [r for r in e.take_reports() if r.kind == "skipped"]
    assert len(skipped) == 2 and all("max_bans" in (r.detail or "") for r in skipped)


def test_entry_the_kernel_expired_itself_is_reported_removed(backend: DryRunBackend, clock: Clock) -> None:
    e = make(backend, clock)
    e.ingest(*record("203.0.113.9", expires_in=30))
    e.reconcile(full=True)
    e.take_reports()
    clock.advance(40)  # the kernel's timeout ran out before the enforcer looked
    out = e.reconcile(full=True)
    assert not out.changes and not backend.entries
    assert [(r.kind, r.detail) for r in e.take_reports()] == [("removed", "expired")]


def test_applied_digest_matches_the_listers_and_drops_with_a_missing_ban(
    backend: DryRunBackend, clock: Clock
) -> None:
    """The heartbeat digest is the one `bans list` computes from ``bans`` when every ban in force is
    applied; a ban refused by the rails (never applied) or lifted from the kernel makes them differ."""
    from fleet2ban.audit import digests
    from fleet2ban.audit.view import FleetView

    enf = make(backend, clock)
    view = FleetView()
    records = [record(f"198.51.100.{i}", expires_in=None if i % 7 == 0 else 60 + i) for i in range(120)]
    records.append(record("203.0.113.1", expires_in=5))  # expires before the heartbeat
    for k, v in records:
        enf.ingest(k, v)
        assert view.add_raw("bans", k, v, T0)
    enf.reconcile(full=True)
    clock.advance(10)
    lister, keys = digests.in_force_digest(view.bans, {}, clock.now, {})
    assert len(keys) == 120 and enf.applied_digest(clock.now) == lister
    # the kernel loses one entry (someone deleted it): until the next reconcile the digest says so
    backend.entries.pop(("amps", "198.51.100.3"))
    enf.applied.pop(("amps", "198.51.100.3"))
    assert enf.applied_digest(clock.now) != lister
    enf.reconcile(full=True)
    assert enf.applied_digest(clock.now) == lister
    # a ban the rails refuse (the host's own address) is in force but never applied
    k, v = record("10.231.0.1")
    enf.ingest(k, v)
    view.add_raw("bans", k, v, T0)
    enf.reconcile(full=False)
    assert enf.applied_digest(clock.now) != digests.in_force_digest(view.bans, {}, clock.now, {})[0]


def test_a_scope_id_record_is_skipped_and_never_blocks_the_others(
    backend: DryRunBackend, clock: Clock
) -> None:
    """Issue 20: ``2001:db8::1%1 timeout 5\\nadd ...`` on bans never reaches a backend; the legitimate ban
    in the same batch is applied."""
    e = make(backend, clock)
    hostile = "2001:db8::1%1 timeout 5\nadd f2b-amps-4 10.0.0.1"
    _, value = record("203.0.113.7")
    e.ingest(
        ban_key("amps", hostile).encode(),
        value.replace(b"203.0.113.7", hostile.encode().replace(b"\n", b"\\n")),
    )
    e.ingest(*record("203.0.113.9"))
    e.reconcile(full=True)
    assert set(backend.entries) == {("amps", "203.0.113.9")}
    reports = e.take_reports()
    assert ("applied", "203.0.113.9") in [(r.kind, r.ip) for r in reports]
    assert any(r.kind == "skipped" and "invalid" in (r.detail or "") for r in reports)
