"""Issue 21: kill -9 of the worker in the middle of a distributed attack shipped as events v2 records
(one per host, partition and round, lines of many addresses): no ban lost or doubled, windows rebuilt
from the new record shape."""

from __future__ import annotations

import re
import signal
from collections import defaultdict
from datetime import datetime

import pytest
from confluent_kafka import Consumer, TopicPartition

from fleet2ban.contract import AddressLine, EventsRecord, encode, partition_for, utcnow
from fleet2ban.kafka import consumer_config, read_to_end

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# as in test_worker_recovery: failures before the kill and after the restart must share a window
FLEET_JAIL_CHANGES = {"amps": {"findtime": 600}}
HOSTS = ("h1", "h2", "h3")


Sent = tuple[str, str, str, datetime]
"""(host, ip, line id, event time)"""


def ship_round(fleet, lines: list[Sent]) -> int:  # type: ignore[no-untyped-def]
    """What the shippers send for one round of lines: one v2 record per (host, partition), keyed by its
    first address. Returns how many records."""
    per: dict[tuple[str, int], list[AddressLine]] = defaultdict(list)
    for host, ip, lid, ts in lines:
        per[(host, partition_for(ip, 3))].append(AddressLine(ip, lid, ts, 40000, "c", "auth", f"line {lid}"))
    for (host, _part), recs in per.items():
        fleet.producer.produce(
            fleet.topics.events, key=recs[0].ip.encode(), value=encode(EventsRecord(host=host, lines=recs))
        )
    fleet.producer.flush(10)
    return len(per)


def attack(fleet, ips: list[str], per_ip: int) -> dict[str, list[Sent]]:  # type: ignore[no-untyped-def]
    """``per_ip`` failures of each address spread over the three hosts, interleaved across addresses."""
    sent: dict[str, list[Sent]] = defaultdict(list)
    lines = []
    ts = utcnow()
    for k in range(per_ip):
        for i, ip in enumerate(ips):
            host = HOSTS[(k + i) % 3]
            (lid,) = fleet.line_ids(host, 1)
            lines.append((host, ip, lid, ts))
            sent[ip].append((host, ip, lid, ts))
    for start in range(0, len(lines), 40):  # rounds of 40 lines
        ship_round(fleet, lines[start : start + 40])
    return sent


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)} (\S+)", text, re.M))


def _committed_past(fleet) -> bool:  # type: ignore[no-untyped-def]
    group = f"{fleet.prefix}fleet2ban-processor"
    c = Consumer(consumer_config(fleet.cluster, group_id=group, **{"enable.auto.commit": False}))
    try:
        ends: dict[int, int] = {}
        for msg in read_to_end(fleet.cluster, fleet.topics.events, timeout=10):
            ends[msg.partition] = msg.offset + 1
        committed = c.committed([TopicPartition(fleet.topics.events, p) for p in ends], timeout=10)
        return all(tp.offset >= ends[tp.partition] for tp in committed)
    finally:
        c.close()


def _addresses(n: int, offset: int) -> list[str]:
    return [f"203.0.113.{offset + i}" for i in range(n)]


def test_kill_9_mid_distributed_attack_loses_no_ban_and_bans_none_twice(fleet) -> None:  # type: ignore[no-untyped-def]
    counting = _addresses(9, 10)  # 10 failures before the kill, 10 after: banned at exactly 20
    resent = _addresses(3, 30)  # 10 before; after: their lines again (same ids) + 9 new, then 1
    banned = _addresses(3, 40)  # 20 before the kill: banned once, never again
    assert len({partition_for(ip, 3) for ip in counting}) == 3  # every partition is rebuilt
    attack(fleet, counting, 10)
    before = attack(fleet, resent, 10)
    attack(fleet, banned, 20)
    for ip in banned:
        fleet.wait_decision(ip)
    fleet.wait_for("offsets committed", lambda: _committed_past(fleet), 20, every=0.3)

    old = fleet.workers[-1]
    old.send_signal(signal.SIGKILL)
    old.wait(10)
    fleet.start_worker()
    fleet.ready(timeout=60)

    attack(fleet, counting, 10)
    for ip in counting:
        (d,) = fleet.wait_decision(ip, timeout=60)
        assert d.failures == 20 and d.hosts == list(HOSTS), d
    # the restarted shippers resend what they had not seen acknowledged, then 9 more each: 19 distinct
    lines = [ln for ip in resent for ln in before[ip]]
    for start in range(0, len(lines), 40):
        ship_round(fleet, lines[start : start + 40])
    attack(fleet, resent, 9)
    probe = "203.0.113.99"
    attack(fleet, [probe], 20)
    fleet.wait_decision(probe)
    assert all(fleet.decisions(ip) == [] for ip in resent)
    attack(fleet, resent, 1)
    for ip in resent:
        (d,) = fleet.wait_decision(ip, timeout=60)
        assert d.failures == 20
    # nothing lost, nothing twice: one ban each, in decisions and in force in bans
    for ip in counting + resent + banned:
        assert [d.action for d in fleet.decisions(ip)] == ["ban"], ip
    # in force in bans: that record follows each decision (a separate write), so wait for it, bounded
    keys = [f"amps|{ip}".encode() for ip in counting + resent + banned]
    fleet.wait_for("every ban on bans", lambda: all(fleet.bans().get(k) is not None for k in keys), 20)
    metrics = fleet.metrics()
    assert _metric(metrics, 'fleet2ban_processor_rebuilds_total{outcome="ok"}') >= 3
    assert _metric(metrics, "fleet2ban_processor_replayed_records_total") >= 3
    assert _metric(metrics, 'fleet2ban_processor_bad_records_total{topic="events",why="partition"}') == 0
