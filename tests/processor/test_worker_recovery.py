"""kill -9 in the middle of a window, restart, and two workers sharing the partitions."""

from __future__ import annotations

import re
import signal
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from fleet2ban.contract import utcnow
from fleet2ban.kafka import consumer_config, read_to_end
from processor.app import TABLE_NAME, murmur2_partition

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# The kill -9 test proves recovery by counting failures sent before the crash together with failures
# sent after the restart, and the sliding window is in event time (fail2ban semantics). So both batches
# must lie within findtime of each other whatever the restart takes: with the default 10 s they did
# not when the dead member's session had to expire first (6 s session timeout: new worker assigned
# ~12 s after its start, the pre-crash failures 14.5 s old). findtime far beyond the restart time
# makes the test about recovery, not about the restart being fast.
FLEET_JAIL_CHANGES = {"amps": {"findtime": 600}}


def _changelog_keys(fleet) -> set[bytes]:  # type: ignore[no-untyped-def]
    topic = f"{fleet.prefix}fleet2ban-processor-{TABLE_NAME}-changelog"
    keys: set[bytes] = set()
    for msg in read_to_end(fleet.cluster, topic, timeout=10):
        key = msg.key
        if key is not None and msg.value is not None:
            keys.add(key)
    return keys


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)} (\S+)", text, re.M))


def _committed_past(fleet, ips: list[str]) -> bool:  # type: ignore[no-untyped-def]
    """The worker's group committed offsets at the end of the events partitions of ``ips``."""
    group = f"{fleet.prefix}fleet2ban-processor"
    c = Consumer(consumer_config(fleet.cluster, group_id=group, **{"enable.auto.commit": False}))
    try:
        parts = sorted({murmur2_partition(ip.encode(), 3) for ip in ips})
        committed = c.committed([TopicPartition(fleet.topics.events, p) for p in parts], timeout=10)
        ends = {}
        for msg in read_to_end(fleet.cluster, fleet.topics.events, timeout=10):
            ends[msg.partition] = msg.offset + 1
        return all(tp.offset >= ends.get(tp.partition, 0) for tp in committed)
    finally:
        c.close()


def test_kill_9_mid_window_recovers_counts_and_never_emits_twice(fleet) -> None:  # type: ignore[no-untyped-def]
    a, b, c = "198.51.100.1", "198.51.100.2", "198.51.100.3"
    fleet.fail(a, 10)
    b_ids = fleet.line_ids("h2", 10)
    ts_b = utcnow()
    fleet.ship(b, "h2", b_ids, ts=ts_b)
    fleet.fail(c, 20)
    fleet.wait_decision(c)
    fleet.wait_for("offsets committed", lambda: _committed_past(fleet, [a, b, c]), 20, every=0.3)
    # windows live in memory only: the changelog holds c's ban, not a's or b's failures
    fleet.wait_for("c's ban in the changelog", lambda: c.encode() in _changelog_keys(fleet))
    assert {a.encode(), b.encode()}.isdisjoint(_changelog_keys(fleet))

    old = fleet.workers[-1]
    old.send_signal(signal.SIGKILL)
    old.wait(10)
    started = time.monotonic()
    fleet.start_worker()
    fleet.ready(timeout=60)
    restart_s = time.monotonic() - started

    # a: only 10 more failures, so a ban at exactly 20 proves the first 10 were recovered
    fleet.fail(a, 10, host="h3")
    (da,) = fleet.wait_decision(a)
    assert da.failures == 20 and da.hosts == ["h1", "h3"]
    # b: the restarted shipper resends its 10 lines (same ids), then 9 new ones: 19 distinct, no ban
    fleet.ship(b, "h2", b_ids, ts=ts_b)
    fleet.fail(b, 9, host="h2")
    probe = "198.51.100.99"
    fleet.fail(probe, 20)
    fleet.wait_decision(probe)
    assert fleet.decisions(b) == []
    fleet.fail(b, 1, host="h2")
    (db,) = fleet.wait_decision(b)
    assert db.failures == 20
    # c was banned before the kill: the restarted worker does not ban it again
    assert len(fleet.decisions(c)) == 1
    # the new worker rebuilt the windows by re-reading the events its partitions had committed past
    # (at least a's and b's records before the kill)
    metrics = fleet.metrics()
    assert _metric(metrics, 'fleet2ban_processor_rebuilds_total{outcome="ok"}') >= 1
    assert _metric(metrics, "fleet2ban_processor_replayed_records_total") >= 2
    print(f"restart to ready (kill -9, new worker, probe banned): {restart_s:.1f}s")


def _assignments(fleet) -> list[set[int]]:  # type: ignore[no-untyped-def]
    out = []
    for i, w in enumerate(fleet.workers):
        if w.poll() is not None:
            continue
        found = re.findall(
            r"partitions assigned: events=\[([\d, ]*)\]", (fleet.tmp / f"worker{i}.log").read_text()
        )
        out.append({int(x) for x in found[-1].split(",") if x.strip()} if found else set())
    return out


def test_two_workers_share_partitions_and_ban_correctly(fleet) -> None:  # type: ignore[no-untyped-def]
    fleet.start_worker(metrics=False)

    def shared() -> bool:
        a = _assignments(fleet)
        return len(a) == 2 and all(a) and a[0] | a[1] == {0, 1, 2} and not a[0] & a[1]

    try:
        fleet.wait_for("the two workers to split the partitions", shared, 60, every=0.2)
    except AssertionError:
        print(fleet.logs())
        raise
    # one address per partition at least, so both workers have work
    ips: list[str] = []
    parts: set[int] = set()
    n = 1
    while len(parts) < 3 or len(ips) < 6:
        ip = f"198.51.100.{100 + n}"
        n += 1
        parts.add(murmur2_partition(ip.encode(), 3))
        ips.append(ip)
    for ip in ips:
        for host in ("h1", "h2"):
            fleet.fail(ip, 10, host=host)
    for ip in ips:
        (d,) = fleet.wait_decision(ip, timeout=60)
        assert d.failures == 20
    probe = "198.51.100.98"
    fleet.fail(probe, 20)
    fleet.wait_decision(probe, timeout=30)
    for ip in ips:
        assert len(fleet.decisions(ip)) == 1
    logs = [(fleet.tmp / f"worker{i}.log").read_text() for i in range(len(fleet.workers))]
    live = [lg for w, lg in zip(fleet.workers, logs, strict=True) if w.poll() is None]
    assert len(live) == 2
    assert all(any(f"ban {ip} " in lg for ip in ips) for lg in live), "both workers should have banned"
