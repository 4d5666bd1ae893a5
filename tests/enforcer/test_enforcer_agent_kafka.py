"""The agent's Kafka loop against the local Kafka cluster, with the dryrun backend (no root needed)."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from enforcer_helpers import BansWriter, ReportsReader, ban_record, wait_for

from enforcer.agent import Agent
from enforcer.backends.dryrun import DryRunBackend
from enforcer.metrics import DELAY_SECONDS, RECEIVE_SECONDS
from enforcer.plan import JailSpec, KernelEntry
from fleet2ban.contract import Heartbeat
from fleet2ban.kafka import Cluster
from fleet2ban.kafka.local import free_port
from fleet2ban.metrics import MetricsServer
from fleet2ban.settings import EnforcerSettings, JailSettings, MetricsSettings, Settings

pytestmark = pytest.mark.kafka


@pytest.fixture
def agent(cluster: Cluster) -> Iterator[Agent]:
    settings = Settings(
        kafka=cluster.settings,
        jails=[JailSettings(name="amps", ignoreip=["192.0.2.0/24"])],
        enforcer=EnforcerSettings(backend="dryrun", host="h-test", reconcile_interval_s=1.0),
        metrics=MetricsSettings(heartbeat_interval_s=0.5),
    )
    backend = DryRunBackend([JailSpec("amps", (9007,))], settings.enforcer)
    a = Agent(settings, cluster, backend)
    yield a
    a.stop_event.set()


def test_agent_reads_to_end_applies_reports_and_follows_live(agent: Agent, cluster: Cluster) -> None:
    writer = BansWriter(cluster)
    # expires on the enforcer's own clock, no tombstone; long enough to be applied first however slowly the
    # agent starts on a loaded machine (1.5 s was seen to run out before the agent had read bans)
    writer.ban("203.0.113.9", expires_in=8)
    writer.ban("2001:db8::9", expires_in=None)
    writer.ban("127.0.0.1")
    writer.ban("192.0.2.7")  # ignoreip
    writer.ban("0.0.0.0/0")
    writer.raw(b"amps|203.0.113.66", b"garbage")
    writer.ban("198.51.100.1", expires_in=-5)  # already expired before the enforcer starts
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    reader = ReportsReader(cluster)
    try:
        reader.wait(
            ("applied", "203.0.113.9"),
            ("applied", "2001:db8::9"),
            ("skipped", "127.0.0.1"),
            ("skipped", "192.0.2.7"),
            ("skipped", "0.0.0.0/0"),
            ("skipped", "203.0.113.66"),
        )
        assert agent.synced
        backend = agent.backend
        assert isinstance(backend, DryRunBackend)
        assert ("amps", "198.51.100.1") not in backend.entries
        reader.wait(("removed", "203.0.113.9"), timeout=30)
        removed = next(r for r in reader.reports if r.kind == "removed")
        assert removed.detail == "expired" and removed.host == "h-test" and removed.backend == "dryrun"
        # Live: a new ban, then a tombstone.
        before = DELAY_SECONDS._sum.get()
        received = RECEIVE_SECONDS._sum.get()
        writer.ban("203.0.113.20")
        reader.wait(("applied", "203.0.113.20"))
        assert DELAY_SECONDS._sum.get() > before
        assert RECEIVE_SECONDS._sum.get() > received  # the live record's Kafka hop was measured
        writer.lift("2001:db8::9")
        reader.wait(("removed", "2001:db8::9"))
        assert set(backend.entries) == {("amps", "203.0.113.20")}

        def heartbeats() -> list[Heartbeat]:
            reader.poll()
            return reader.heartbeats

        wait_for(heartbeats, what="a heartbeat")
        hb = reader.heartbeats[-1]
        assert hb.role == "enforcer" and hb.host == "h-test" and hb.counters["invalid"] == 1
        wait_for(
            lambda: heartbeats()[-1].applied == ["amps|203.0.113.20"],
            what="a heartbeat listing the applied ban",
        )
        ok, detail = agent.health()
        assert ok and detail["synced"]
        server = MetricsServer(free_port(), "127.0.0.1", agent.health).start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
                assert resp.status == 200 and json.load(resp)["synced"] is True
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            for name in (
                "fleet2ban_enforcer_active_bans",
                "fleet2ban_enforcer_apply_batch_seconds_bucket",
                "fleet2ban_enforcer_decision_to_applied_seconds_bucket",
                "fleet2ban_enforcer_bans_receive_seconds_bucket",
                "fleet2ban_enforcer_reconcile_corrections_total",
                'fleet2ban_enforcer_actions_total{kind="skipped"}',
            ):
                assert name in text
        finally:
            server.stop()
        skipped = {r.ip: r.detail for r in reader.reports if r.kind == "skipped"}
        assert "loopback" in (skipped["127.0.0.1"] or "")
        assert "protected" in (skipped["192.0.2.7"] or "")
        assert "invalid record" in (skipped["203.0.113.66"] or "")
    finally:
        agent.stop_event.set()
        thread.join(10)
        reader.close()
    assert not thread.is_alive()


class FlakyBackend(DryRunBackend):
    failures = 1

    def list(self) -> dict[tuple[str, str], KernelEntry]:
        if self.failures:
            self.failures -= 1
            raise OSError("kernel says no")
        return super().list()


def test_a_failing_backend_never_kills_the_agent(cluster: Cluster) -> None:
    settings = Settings(kafka=cluster.settings, enforcer=EnforcerSettings(backend="dryrun", host="h-test"))
    agent = Agent(settings, cluster, FlakyBackend([JailSpec("amps", (9007,))], settings.enforcer))
    agent.enforcer.ingest(*ban_record("203.0.113.9"))
    agent.synced = True
    assert agent._reconcile(full=True) is False
    assert "kernel says no" in (agent.health()[1]["last_error"] or "")
    assert agent._reconcile(full=True) is True
    assert agent.health()[1]["last_error"] is None
    assert ("amps", "203.0.113.9") in agent.enforcer.applied


def test_heartbeat_digest_lets_bans_list_skip_the_reports(
    agent: Agent, cluster: Cluster, no_fallback: list[int]
) -> None:
    """1,200 bans (more than a heartbeat lists): the agent's heartbeat carries the digest of its applied
    set and its ``bans`` offsets, and `bans list` finds the host covering every ban from that alone."""
    from confluent_kafka import Producer

    from fleet2ban.audit import bans_in_force
    from fleet2ban.audit.reader import load_coverage_view
    from fleet2ban.contract import utcnow
    from fleet2ban.kafka import producer_config

    producer = Producer({**producer_config(cluster, linger_ms=5), "log_level": 0})
    ends: dict[int, int] = {}

    def delivered(err: object, msg: Any) -> None:
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for i in range(1200):
        key, value = ban_record(f"198.18.{i // 250}.{i % 250}", 600)
        producer.produce(cluster.topics.bans, key=key, value=value, on_delivery=delivered)
    assert producer.flush(10) == 0
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    reports = ReportsReader(cluster)
    try:

        def full_heartbeat() -> bool:
            reports.poll()
            return any(hb.applied_total == 1200 for hb in reports.heartbeats)

        wait_for(full_heartbeat, 30, "a heartbeat with all 1,200 bans applied")
        hb = next(hb for hb in reports.heartbeats if hb.applied_total == 1200)
        assert hb.bans_offsets == ends and (hb.applied_digest or "").startswith("1200:")
        got = bans_in_force(load_coverage_view(cluster, utcnow()), utcnow())
        assert len(got) == 1200 and all(b.coverage.applied == ["h-test"] for b in got)
        assert no_fallback == []
    finally:
        agent.stop_event.set()
        thread.join(10)
        reports.close()
