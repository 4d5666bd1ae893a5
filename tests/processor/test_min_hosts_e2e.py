"""``min_hosts: 2`` end to end on the real broker: a processor worker and three enforcers (dryrun backend,
their own Kafka loops). One host's failures ban only on that host; a second host's failures make the ban
fleet-wide; the audit views see a scoped ban as complete, not missing elsewhere."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from enforcer.agent import Agent
from enforcer.backends.dryrun import DryRunBackend
from enforcer.plan import JailSpec
from fleet2ban.audit import queries
from fleet2ban.audit.reader import load_coverage_view, load_trail, load_view
from fleet2ban.contract import ban_key, utcnow
from fleet2ban.settings import EnforcerSettings, JailSettings, MetricsSettings, Settings

FLEET_JAIL_CHANGES = {"amps": {"maxretry": 3, "findtime": 600, "bantime": 600, "min_hosts": 2}}
HOSTS = ("h1", "h2", "h3")


@pytest.fixture
def enforcers(fleet: Any) -> Iterator[dict[str, Agent]]:
    agents: dict[str, Agent] = {}
    threads = []
    for host in HOSTS:
        settings = Settings(
            kafka=fleet.kafka,
            jails=[JailSettings(name="amps"), JailSettings(name="short")],
            enforcer=EnforcerSettings(backend="dryrun", host=host, reconcile_interval_s=1.0),
            metrics=MetricsSettings(heartbeat_interval_s=0.5),
        )
        backend = DryRunBackend([JailSpec("amps", (9007,)), JailSpec("short", (9007,))], settings.enforcer)
        agents[host] = a = Agent(settings, fleet.cluster, backend)
        t = threading.Thread(target=a.run, daemon=True, name=f"enforcer-{host}")
        t.start()
        threads.append(t)
    yield agents
    for a in agents.values():
        a.stop_event.set()
    for t in threads:
        t.join(10)


def _has(agent: Agent, ip: str) -> bool:
    backend = agent.backend
    assert isinstance(backend, DryRunBackend)
    return ("amps", ip) in backend.entries


def test_one_host_bans_on_itself_until_a_second_host_corroborates(
    fleet: Any, enforcers: dict[str, Agent], caplog: pytest.LogCaptureFixture
) -> None:
    ip = "198.51.100.77"
    fleet.fail(ip, 3, host="h1")
    (scoped,) = fleet.wait_decision(ip)
    assert scoped.scope == ["h1"] and scoped.hosts == ["h1"]
    fleet.wait_for("h1's enforcer to apply the scoped ban", lambda: _has(enforcers["h1"], ip))
    # h2 and h3 read it and left it alone
    for host in ("h2", "h3"):
        fleet.wait_for(
            f"{host}'s enforcer to read the scoped ban",
            lambda h=host: enforcers[h].enforcer.counters["out_of_scope"],
        )
        assert not _has(enforcers[host], ip)

    # the audit views: complete on its scope, nothing missing elsewhere
    def view_sees_all() -> Any:
        now = utcnow()
        view = load_view(fleet.cluster, now)
        return view if len(view.live_enforcers(now)) == 3 and ban_key("amps", ip) in view.bans else None

    view = fleet.wait_for("the three enforcers' heartbeats", view_sees_all)
    now = utcnow()
    (b,) = [b for b in queries.bans_in_force(view, now) if b.ban.ip == ip]
    assert b.coverage.scope == ["h1"] and b.coverage.missing == []
    result = queries.verify(
        view, load_trail(fleet.cluster, view, now, timedelta(hours=1)), now, timedelta(seconds=30)
    )
    assert [d for d in result.discrepancies if ip in d.detail] == []

    # bans list's fast path: every enforcer's applied digest matches the bans in force its scope reaches
    # (h2's and h3's leave the scoped ban out), so the coverage comes from heartbeats, not per-ban reports
    def from_digests() -> Any:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fleet2ban.audit.reader"):
            cview = load_coverage_view(fleet.cluster, utcnow(), heartbeat_interval_s=0.5)
        if any("reading the reports" in r.getMessage() for r in caplog.records):
            return None
        return cview

    cview = fleet.wait_for("coverage from the enforcers' digests", from_digests)
    (b,) = [b for b in queries.bans_in_force(cview, utcnow()) if b.ban.ip == ip]
    assert b.coverage.applied == ["h1"] and b.coverage.missing == [] and b.coverage.scope == ["h1"]

    # one failure seen by h2, within findtime of h1's: fleet-wide, on every host
    fleet.fail(ip, 1, host="h2")
    bans = fleet.wait_decision(ip, count=2)
    assert bans[1].scope is None and bans[1].hosts == ["h1", "h2"] and bans[1].ban_count == scoped.ban_count
    for host in HOSTS:
        fleet.wait_for(
            f"{host}'s enforcer to apply the fleet-wide ban", lambda h=host: _has(enforcers[h], ip)
        )
