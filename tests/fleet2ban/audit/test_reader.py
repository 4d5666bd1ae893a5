"""The Kafka side of the audit layer: time seeks (lower bounds refined), following live, coverage reads."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from audit_helpers import Writer, applied, ban, heartbeat, key
from confluent_kafka import Producer

from fleet2ban.audit import FleetView, bans_in_force
from fleet2ban.audit.partition import partition_for
from fleet2ban.audit.reader import Source, TopicReader, into_view, load_view, read_decisions
from fleet2ban.contract import utcnow
from fleet2ban.kafka import Cluster, producer_config

pytestmark = pytest.mark.kafka


def test_history_seeks_instead_of_scanning(cluster: Cluster) -> None:
    """3,000 old decisions (days ago, written in several batches) then 10 recent ones: a one-hour read
    consumes a small part of the topic and finds exactly the recent ones."""
    now = utcnow()
    w = Writer(cluster)
    old = [
        ban(f"10.2.{i // 250}.{i % 250}", now - timedelta(days=3) + timedelta(seconds=60 * i))
        for i in range(3000)
    ]
    for i, d in enumerate(old):
        w.decision(d)
        if i % 250 == 249:
            w.flush()
    recent = [ban(f"10.3.0.{i}", now - timedelta(minutes=30) + timedelta(seconds=i)) for i in range(10)]
    for d in recent:
        w.decision(d)
    w.flush()
    consumed: list[int] = []
    got = read_decisions(cluster, now - timedelta(hours=1), now, progress=lambda _t, n: consumed.append(n))
    assert sorted(d.id for d in got) == sorted(d.id for d in recent)
    assert consumed and consumed[-1] < 2000, consumed  # not a scan of the 3,010 records
    # a range in the middle of the old ones, and one in the future
    mid = old[1500].at
    got = read_decisions(cluster, mid, mid + timedelta(minutes=10), slack=timedelta(0))
    assert sorted(d.id for d in got) == sorted(d.id for d in old[1500:1511])
    assert read_decisions(cluster, now + timedelta(hours=1), now + timedelta(hours=2)) == []


def test_reader_follows_live_records(cluster: Cluster) -> None:
    now = utcnow()
    w = Writer(cluster)
    d1 = ban("203.0.113.10", now - timedelta(seconds=30))
    w.ban_state(d1)
    w.report(heartbeat("e1", now - timedelta(seconds=1), keys=[key(d1)]), "e1")
    w.flush()
    view = FleetView()
    sources = [
        Source("bans", cluster.topics.bans),
        Source("reports", cluster.topics.reports, since=now - timedelta(minutes=5)),
        Source("decisions", cluster.topics.decisions, since=now - timedelta(minutes=5)),
    ]
    with TopicReader(cluster, sources, into_view(view)) as reader:
        reader.catch_up(30)
        assert reader.caught_up and set(view.bans) == {key(d1)}
        d2 = ban("203.0.113.11", utcnow())
        w.decision(d2)
        w.ban_state(d2)
        w.report(applied("e1", d2, utcnow()), "e1")
        w.tombstone(key(d1))
        w.flush()
        deadline = time.monotonic() + 20
        while not (  # each topic (and partition) arrives in its own time: wait for all three records
            key(d2) in view.enforcers["e1"].applied
            and key(d2) in view.bans
            and key(d1) not in view.bans
            and view.recent_decisions
        ):
            assert time.monotonic() < deadline, "live records did not arrive"
            reader.poll(0.2)
    assert [b.ban.ip for b in bans_in_force(view, utcnow())] == ["203.0.113.11"]
    assert view.recent_decisions[-1].id == d2.id


def test_truncated_heartbeats_read_reports_since_start(cluster: Cluster) -> None:
    """An enforcer with more bans than its heartbeat lists: its applied reports from before the window
    still count, because the reader goes back to the enforcer's start."""
    now = utcnow()
    w = Writer(cluster)
    started = now - timedelta(hours=3)
    bans = [ban(f"198.51.100.{i}", started + timedelta(seconds=i), secs=None) for i in range(5)]
    for d in bans:
        w.ban_state(d, ts=d.at)
        w.report(applied("e1", d, d.at + timedelta(seconds=1)), "e1", ts=d.at + timedelta(seconds=1))
    hb = heartbeat("e1", now - timedelta(seconds=1), keys=[key(bans[0])], total=5)
    hb = type(hb)(**{**{f: getattr(hb, f) for f in hb.__struct_fields__}, "started_at": started})
    w.report(hb, "e1")
    w.flush()
    view = load_view(cluster, utcnow(), reports_window=timedelta(minutes=10))
    got = bans_in_force(view, utcnow())
    assert len(got) == 5 and all(b.coverage.applied == ["e1"] for b in got)


def test_partition_for_matches_the_producer(cluster: Cluster) -> None:
    p = Producer({**producer_config(cluster, linger_ms=0), "log_level": 0})
    seen: dict[str, int] = {}

    def delivered(k: str) -> Any:
        return lambda err, msg: seen.__setitem__(k, msg.partition())

    for k in ["10.0.0.1", "2001:db8::1", "amps|203.0.113.9", "x"]:
        p.produce(cluster.topics.decisions, key=k.encode(), value=b"{}", on_delivery=delivered(k))
    p.flush(10)
    assert seen == {k: partition_for(k, cluster.settings.partitions) for k in seen} and len(seen) == 4
