"""A worker restarted after the processor's changelog topic was really compacted recovers the durable
state from it: a ban in force, a ban count (``bantime.increment``), a floor (after a manual unban).

The changelog is made to compact within seconds by per-topic settings; the test checks that it did (each
of the keys that changed twice or more is down to its last record, fewer records than written) before
the new worker starts. faust-streaming issues #176 and #597 are about recoveries from compacted
changelogs (offset gaps): this is that recovery, on a real broker.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from confluent_kafka import Producer

from fleet2ban.contract import Decision, encode, utcnow
from fleet2ban.kafka import Cluster, producer_config, read_to_end
from processor.app import TABLE_NAME, murmur2_partition

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# findtime far beyond the test's length: R's failures before its unban are within findtime (and inside
# the span a rebuild re-reads) of the failure sent after the restart, so only the recovered floor keeps
# them from counting. The short jail's repeat bans double (fail2ban's default formula).
FLEET_JAIL_CHANGES = {
    "amps": {"findtime": 600},
    "short": {"bantime_increment": {"enabled": True}},
}


def _changelog(fleet) -> str:  # type: ignore[no-untyped-def]
    return f"{fleet.prefix}fleet2ban-processor-{TABLE_NAME}-changelog"


def _probe_in_partition_of(ip: str) -> str:
    want = murmur2_partition(ip.encode(), 3)
    return next(
        probe for n in range(100, 250) if murmur2_partition((probe := f"198.51.103.{n}").encode(), 3) == want
    )


def test_restarted_worker_recovers_bans_counts_and_floors_from_a_compacted_changelog(
    fleet: Any,
    compact_fast: Callable[[Cluster, str], None],
) -> None:
    p, q, r = "198.51.103.1", "198.51.103.2", "198.51.103.3"
    fleet.fail(p, 20)  # P: banned, in force (120 s)
    fleet.fail(q, 3, reason="name in use")  # Q: short jail, 2 s ban, then lifted: ban count 1
    fleet.fail(r, 20)  # R: banned, then unbanned by hand: a floor
    fleet.wait_decision(p)
    fleet.wait_decision(r)
    (q_ban,) = fleet.wait_decision(q)
    assert q_ban.expires_at is not None and q_ban.expires_at - q_ban.at == timedelta(seconds=2)
    fleet.wait_decision(q, action="unban")
    now = utcnow()
    manual = Decision(
        id="manual-unban-r", action="unban", ip=r, jail="amps", at=now, origin="manual", by="op", reason="ok"
    )
    fleet.produce_raw(r.encode(), encode(manual), topic=fleet.topics.decisions)
    fleet.wait_for("R lifted in bans", lambda: fleet.ban_records(f"amps|{r}".encode())[-1:] == [None])

    worker = fleet.workers[-1]
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)

    topic = _changelog(fleet)
    compact_fast(fleet.cluster, topic)
    before = Counter(rec.key for rec in read_to_end(fleet.cluster, topic, timeout=10))
    assert before[q.encode()] >= 2 and before[r.encode()] >= 2, before
    written = sum(before.values())
    filler = Producer(producer_config(fleet.cluster, linger_ms=0))
    counts: Counter[bytes | None] = Counter()

    def compacted() -> bool:
        nonlocal written
        for part in range(3):  # roll every partition's segment (segment.ms) so the cleaner takes it
            filler.produce(topic, key=b"198.18.0.1", value=None, partition=part)
            written += 1
        filler.flush(10)
        counts.clear()
        counts.update(rec.key for rec in read_to_end(fleet.cluster, topic, timeout=10))
        return counts[q.encode()] == 1 and counts[r.encode()] == 1

    fleet.wait_for("the changelog compacted", compacted, 40, every=0.5)
    assert sum(counts.values()) < written, (counts, written)

    fleet.start_worker(metrics=False)
    fleet.ready(timeout=60)
    # P's ban is in force: 20 more failures are evidence only
    fleet.fail(p, 20, host="h2")
    # Q's second ban is twice as long: its ban count was recovered
    fleet.fail(q, 3, reason="name in use", host="h2")
    bans_q = fleet.wait_decision(q, count=2)
    assert bans_q[1].expires_at is not None
    assert bans_q[1].expires_at - bans_q[1].at == timedelta(seconds=4), bans_q[1]
    # R's 20 failures before the unban are below its floor: one more does not ban (21 without it)
    fleet.fail(r, 1, host="h2")
    # a probe banned after them in P's and R's partitions: their records were processed
    for target in (p, r):
        probe = _probe_in_partition_of(target)
        fleet.fail(probe, 20, host="h3")
        fleet.wait_decision(probe)
    assert [d.action for d in fleet.decisions(p)] == ["ban"]
    assert [(d.action, d.origin) for d in fleet.decisions(r)] == [("ban", "auto"), ("unban", "manual")]
