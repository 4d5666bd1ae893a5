"""The allow-list as an enforcer's safety rail (dryrun backend, no Kafka): it wins over a stale ban,
and an expired entry stops applying by the enforcer's own clock."""

from __future__ import annotations

from datetime import timedelta

from enforcer_helpers import T0, Clock

from enforcer.backends.dryrun import DryRunBackend
from enforcer.core import Enforcer
from enforcer.plan import JailSpec, Rails
from fleet2ban.contract import AllowEntry, BanState, allow_key, ban_key, encode
from fleet2ban.settings import EnforcerSettings, JailSettings

JAILS = [JailSpec("amps", (9007,))]


def ban(ip: str, expires_in: float = 600) -> tuple[bytes, bytes]:
    state = BanState(
        decision_id=f"b-{ip}", ip=ip, jail="amps", at=T0, expires_at=T0 + timedelta(seconds=expires_in)
    )
    return ban_key("amps", ip).encode(), encode(state)


def allow(network: str, ttl: float | None) -> tuple[bytes, bytes]:
    e = AllowEntry(
        id="al-1",
        network=network,
        at=T0,
        expires_at=None if ttl is None else T0 + timedelta(seconds=ttl),
        by="alice",
        reason="partner",
    )
    return allow_key("*", network).encode(), encode(e)


def test_allowed_address_is_refused_and_lifted_then_applied_again_after_expiry() -> None:
    clock = Clock()
    backend = DryRunBackend(JAILS, EnforcerSettings(backend="dryrun"), clock=clock.mono)
    e = Enforcer(backend, Rails.build(EnforcerSettings(), [JailSettings()]), JAILS, "h1", clock=clock)
    e.ingest(*ban("198.51.100.7"))
    e.ingest(*ban("203.0.113.9"))
    e.reconcile(full=True)
    assert set(backend.entries) == {("amps", "198.51.100.7"), ("amps", "203.0.113.9")}
    e.take_reports()
    # an entry covering a ban in force (stale: the processor has not lifted it) wins at the next pass
    e.ingest_allow(*allow("198.51.100.0/24", ttl=60))
    e.reconcile(full=False)
    assert set(backend.entries) == {("amps", "203.0.113.9")}
    removed, skipped = e.take_reports()
    assert (removed.kind, skipped.kind) == (
        "removed",
        "skipped",
    ) and removed.ip == skipped.ip == "198.51.100.7"
    assert removed.detail is not None and "allow-list entry 198.51.100.0/24" in removed.detail
    assert e.due() == T0 + timedelta(seconds=60)  # the entry's expiry wakes the agent
    # a new ban of an allowed address is refused (skipped), never applied
    e.ingest(*ban("198.51.100.8"))
    e.reconcile(full=False)
    assert ("amps", "198.51.100.8") not in backend.entries
    assert [(r.kind, r.ip) for r in e.take_reports()] == [("skipped", "198.51.100.8")]
    # the entry expires by the enforcer's clock: the bans still in force apply again, nobody acted
    clock.advance(61)
    e.reconcile(full=False)
    assert set(backend.entries) == {
        ("amps", "198.51.100.7"),
        ("amps", "198.51.100.8"),
        ("amps", "203.0.113.9"),
    }


def test_removed_entry_stops_applying() -> None:
    clock = Clock()
    backend = DryRunBackend(JAILS, EnforcerSettings(backend="dryrun"), clock=clock.mono)
    e = Enforcer(backend, Rails.build(EnforcerSettings(), [JailSettings()]), JAILS, "h1", clock=clock)
    e.ingest_allow(*allow("198.51.100.7", ttl=None))
    e.ingest(*ban("198.51.100.7"))
    e.reconcile(full=True)
    assert not backend.entries
    e.ingest_allow(allow_key("*", "198.51.100.7").encode(), None)
    e.reconcile(full=False)
    assert set(backend.entries) == {("amps", "198.51.100.7")}
    e.ingest_allow(b"garbage", b"{")  # an invalid record is counted and skipped
    assert e.counters["invalid_allow"] == 1
