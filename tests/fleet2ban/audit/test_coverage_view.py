"""`bans list` coverage from heartbeat digests (load_coverage_view) against the local Kafka cluster.

Enforcers above 1,000 bans send truncated heartbeat lists; their digest (over every ban in force they
have applied, as of the ``bans`` offsets they had read) lets the lister skip their per-ban reports. These
tests check that the answer stays exactly the one the per-ban reports give, in particular that a host
missing one ban among many is named.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from audit_helpers import Writer, applied, ban, key, state
from confluent_kafka import Producer

from fleet2ban.audit import bans_in_force
from fleet2ban.audit.model import BanView
from fleet2ban.audit.partition import partition_for
from fleet2ban.audit.reader import load_coverage_view, load_view
from fleet2ban.contract import Decision, Heartbeat, applied_digest, digest_item, encode, utcnow
from fleet2ban.kafka import Cluster, producer_config

pytestmark = pytest.mark.kafka


class Fleet:
    """Bans on the ``bans`` topic (their end offsets tracked) and enforcer heartbeats with digests."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.w = Writer(cluster)
        self.p = Producer({**producer_config(cluster, linger_ms=5), "log_level": 0})
        self.ends: dict[int, int] = {}
        self.decisions: dict[str, Decision] = {}

    def _delivered(self, err: Any, msg: Any) -> None:
        assert err is None
        self.ends[msg.partition()] = max(self.ends.get(msg.partition(), 0), msg.offset() + 1)

    def ban(self, d: Decision) -> None:
        self.decisions[key(d)] = d
        self.p.produce(
            self.cluster.topics.bans, key=key(d).encode(), value=encode(state(d)), on_delivery=self._delivered
        )

    def lift(self, k: str) -> None:
        del self.decisions[k]
        self.p.produce(self.cluster.topics.bans, key=k.encode(), value=None, on_delivery=self._delivered)

    def flush(self) -> dict[int, int]:
        """Flush; the offsets an enforcer that read everything so far would report."""
        assert self.p.flush(10) == 0
        self.w.flush()
        return dict(self.ends)

    def heartbeat(
        self, host: str, at: datetime, keys: list[str], offsets: dict[int, int] | None, digest: bool = True
    ) -> Heartbeat:
        hb = Heartbeat(
            host=host,
            role="enforcer",
            at=at,
            interval_s=5.0,
            applied=sorted(keys)[:1000],
            applied_total=len(keys) if len(keys) > 1000 else None,
            applied_digest=applied_digest(digest_item(k, self.decisions[k].expires_at) for k in keys)
            if digest
            else None,
            bans_offsets=offsets if digest else None,
        )
        self.w.report(hb, host)
        return hb


def _coverage(bans: list[BanView]) -> dict[str, tuple[list[str], list[str]]]:
    return {b.key: (b.coverage.applied, b.coverage.missing) for b in bans}


def _many(fleet: Fleet, n: int, now: datetime) -> list[str]:
    for i in range(n):
        fleet.ban(ban(f"10.20.{i // 250}.{i % 250}", now - timedelta(seconds=300 - i * 0.1), secs=3600))
    return list(fleet.decisions)


def test_digests_cover_every_ban_without_a_single_applied_report(
    cluster: Cluster, no_fallback: list[int]
) -> None:
    """1,500 bans, two enforcers whose heartbeats list only 1,000 keys and send no applied report at all:
    the digests alone prove both have every ban (the reports path would call 500 of them missing)."""
    now = utcnow()
    fleet = Fleet(cluster)
    keys = _many(fleet, 1500, now)
    offsets = fleet.flush()
    fleet.heartbeat("e1", now - timedelta(seconds=2), keys, offsets)
    fleet.heartbeat("e2", now - timedelta(seconds=1), keys, offsets)
    fleet.flush()
    got = bans_in_force(load_coverage_view(cluster, utcnow()), utcnow())
    assert len(got) == 1500 and all(b.coverage.applied == ["e1", "e2"] and b.coverage.complete for b in got)
    assert no_fallback == []
    slow = bans_in_force(load_view(cluster, utcnow()), utcnow())
    assert sum(1 for b in slow if b.coverage.missing) == 500  # what the truncated lists alone would say


def test_a_host_missing_one_ban_among_many_is_named(cluster: Cluster, no_fallback: list[int]) -> None:
    """e2 lacks one ban of 1,500 (its digest and reports say so): the answer names e2 for that ban only,
    exactly as the per-ban reports do."""
    now = utcnow()
    fleet = Fleet(cluster)
    keys = _many(fleet, 1500, now)
    offsets = fleet.flush()
    lacking = keys[777]
    for host in ("e1", "e2"):
        for k in keys:
            if host == "e2" and k == lacking:
                continue
            fleet.w.report(applied(host, fleet.decisions[k], now - timedelta(seconds=60)), host)
    fleet.heartbeat("e1", now - timedelta(seconds=2), keys, offsets)
    fleet.heartbeat("e2", now - timedelta(seconds=1), [k for k in keys if k != lacking], offsets)
    fleet.flush()
    got = _coverage(bans_in_force(load_coverage_view(cluster, utcnow()), utcnow()))
    assert got[lacking] == (["e1"], ["e2"])
    assert all(cov == (["e1", "e2"], []) for k, cov in got.items() if k != lacking)
    assert no_fallback == [1]  # e2's digest did not match: the reports decided
    assert got == _coverage(bans_in_force(load_view(cluster, utcnow()), utcnow()))


def test_bans_after_the_heartbeat_and_lifts_after_it(cluster: Cluster, no_fallback: list[int]) -> None:
    """Changes to ``bans`` past the enforcers' offsets: a lifted ban does not spoil the digests (the
    lister puts it back for the check), a new ban counts where a later report says applied, and is named
    missing elsewhere."""
    now = utcnow()
    fleet = Fleet(cluster)
    keys = _many(fleet, 1200, now)
    offsets = fleet.flush()
    fleet.heartbeat("e1", now - timedelta(seconds=3), keys, offsets)
    fleet.heartbeat("e2", now - timedelta(seconds=3), keys, offsets)
    fleet.flush()
    fleet.lift(keys[5])
    fresh = ban("203.0.113.50", now - timedelta(seconds=1))
    fleet.ban(fresh)
    fleet.flush()
    fleet.w.report(applied("e1", fresh, now - timedelta(seconds=1)), "e1")
    fleet.flush()
    got = _coverage(bans_in_force(load_coverage_view(cluster, utcnow()), utcnow()))
    assert keys[5] not in got and len(got) == 1200
    assert got[key(fresh)] == (["e1"], ["e2"])
    assert all(cov == (["e1", "e2"], []) for k, cov in got.items() if k != key(fresh))
    assert no_fallback == []


def test_enforcers_without_digests_and_silent_ones(cluster: Cluster, no_fallback: list[int]) -> None:
    """An older enforcer (no digest) sends the lister back to the reports, with the same answer; a silent
    enforcer is not counted."""
    now = utcnow()
    fleet = Fleet(cluster)
    keys = _many(fleet, 30, now)
    offsets = fleet.flush()
    for k in keys[:-1]:
        fleet.w.report(applied("old", fleet.decisions[k], now - timedelta(seconds=60)), "old")
    fleet.heartbeat("old", now - timedelta(seconds=1), keys[:-1], offsets, digest=False)
    fleet.heartbeat("new", now - timedelta(seconds=1), keys, offsets)
    fleet.heartbeat("gone", now - timedelta(minutes=10), keys[:3], offsets)
    fleet.flush()
    got = _coverage(bans_in_force(load_coverage_view(cluster, utcnow()), utcnow()))
    assert no_fallback == [1]
    assert got[keys[-1]] == (["new"], ["old"])
    assert all(cov == (["new", "old"], []) for k, cov in got.items() if k != keys[-1])


def test_the_tail_read_reaches_a_heartbeat_behind_a_chatty_neighbour(
    cluster: Cluster, no_fallback: list[int]
) -> None:
    """Two hosts share a reports partition; after the quiet one's heartbeat the other writes 6,000
    records (three backward chunks): the quiet one's heartbeat is still found, and it still counts."""
    n = cluster.settings.partitions
    quiet = "q0"
    chatty = next(f"c{i}" for i in range(1000) if partition_for(f"c{i}", n) == partition_for(quiet, n))
    now = utcnow()
    fleet = Fleet(cluster)
    keys = _many(fleet, 20, now)
    offsets = fleet.flush()
    fleet.heartbeat(quiet, now - timedelta(seconds=4), keys, offsets)
    fleet.flush()
    noise = ban("198.51.100.200", now - timedelta(seconds=600), secs=1)  # long expired: not in force
    for i in range(6000):
        fleet.w.report(applied(chatty, noise, now - timedelta(seconds=3)), chatty)
        if i % 1000 == 999:
            fleet.flush()
    fleet.heartbeat(chatty, now - timedelta(seconds=1), keys, offsets)
    fleet.flush()
    got = bans_in_force(load_coverage_view(cluster, utcnow()), utcnow())
    assert len(got) == 20 and all(b.coverage.applied == [chatty, quiet] for b in got)
    assert no_fallback == []
