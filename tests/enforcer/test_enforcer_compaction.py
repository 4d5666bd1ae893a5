"""A restarted enforcer after ``bans`` was really compacted (tombstones gone too), on the session's Kafka.

The bans topic is made to compact within seconds by per-topic settings (``FAST_COMPACTION``); the test
checks that it did (the updates of one key are down to the last, a lifted ban's tombstone is gone, fewer
records than written) before the enforcer starts again against a "kernel" (the dryrun backend's entries)
that still holds what the first run applied.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from enforcer_helpers import BansWriter, wait_for

from enforcer.agent import Agent
from enforcer.backends.dryrun import DryRunBackend
from enforcer.plan import JailSpec
from fleet2ban.contract import decode_ban, utcnow
from fleet2ban.kafka import Cluster, producer_config, read_to_end
from fleet2ban.settings import EnforcerSettings, JailSettings, MetricsSettings, Settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _start(cluster: Cluster, backend: DryRunBackend) -> tuple[Agent, threading.Thread]:
    settings = Settings(
        kafka=cluster.settings,
        jails=[JailSettings(name="amps")],
        enforcer=EnforcerSettings(backend="dryrun", host="h-compact", reconcile_interval_s=1.0),
        metrics=MetricsSettings(heartbeat_interval_s=1.0),
    )
    agent = Agent(settings, cluster, backend)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, thread


def _stop(agent: Agent, thread: threading.Thread) -> None:
    agent.stop_event.set()
    thread.join(15)
    assert not thread.is_alive()


def _live(kernel: DryRunBackend) -> dict[tuple[str, str], float | None]:
    """The dryrun "kernel"'s entries not timed out, read from the test's thread without touching them
    (``list()`` would expire entries under the agent's feet): (jail, target) -> deadline or None."""
    now = time.monotonic()
    return {k: d for k, d in dict(kernel.entries).items() if d is None or d > now}


def test_restarted_enforcer_after_compaction_applies_the_bans_in_force_and_lifts_the_ended(
    cluster: Cluster, compact_fast: Callable[[Cluster, str], None]
) -> None:
    topic = cluster.topics.bans
    compact_fast(cluster, topic)
    a, b, c, d, e = (f"203.0.113.{n}" for n in (31, 32, 33, 34, 35))
    key = {ip: f"amps|{ip}".encode() for ip in (a, b, c, d, e)}
    writer = BansWriter(cluster)
    written = 0
    writer.ban(a, 600, did="a0")
    writer.ban(b, 600, did="b0")
    writer.ban(c, 4, did="c0")  # ends on its own clock while the enforcer is down
    writer.ban(d, None, did="d0")  # permanent
    written += 4
    kernel = DryRunBackend([JailSpec("amps", (9007,))], EnforcerSettings(backend="dryrun"))
    agent, thread = _start(cluster, kernel)
    try:
        wait_for(
            lambda: {("amps", ip) for ip in (a, b, c, d)} <= set(kernel.entries), 30, "first run applied"
        )
    finally:
        _stop(agent, thread)

    # while the enforcer is down: a's ban renewed three times, b lifted, e banned, c's time runs out
    for n in (1, 2, 3):
        writer.ban(a, 600 + 100 * n, did=f"a{n}")
    writer.lift(b)
    writer.ban(e, 600, did="e0")
    written += 5

    # fillers roll the segments of every partition (segment.ms), so the cleaner gets to the records
    # above, and again, so the tombstone it kept for delete.retention.ms goes in a later pass
    filler = Producer(producer_config(cluster, linger_ms=0))
    parts = sorted({r.partition for r in read_to_end(cluster, topic, timeout=10)} | {0, 1, 2})
    counts: Counter[bytes | None] = Counter()

    def compacted() -> bool:
        nonlocal written
        for p in parts:
            filler.produce(topic, key=b"amps|198.18.0.1", value=None, partition=p)
            written += 1
        filler.flush(10)
        counts.clear()
        counts.update(r.key for r in read_to_end(cluster, topic, timeout=10))
        return counts[key[a]] == 1 and counts[key[b]] == 0

    wait_for(compacted, 40, "bans compacted: a's updates down to the last, b's tombstone gone")
    assert sum(counts.values()) < written, (counts, written)
    (latest_a,) = [r for r in read_to_end(cluster, topic, timeout=10) if r.key == key[a]]
    assert latest_a.value is not None and decode_ban(latest_a.value).decision_id == "a3"
    c_end = decode_ban(next(r.value for r in read_to_end(cluster, topic) if r.key == key[c] and r.value))
    assert c_end.expires_at is not None
    wait_for(lambda: utcnow() > c_end.expires_at, 10, "c's ban to end")  # type: ignore[operator]

    # the kernel still holds b (lifted while the enforcer was down; nothing in the topic says so now)
    assert ("amps", b) in kernel.entries
    agent, thread = _start(cluster, kernel)
    try:
        want = {("amps", ip) for ip in (a, d, e)}
        wait_for(lambda: agent.synced and set(_live(kernel)) == want, 30, f"the kernel to hold {want}")
        entries = _live(kernel)
        assert entries[("amps", d)] is None
        deadline_a = entries[("amps", a)]
        assert deadline_a is not None and deadline_a - time.monotonic() > 800, "a's last renewal (900 s)"
        assert set(agent.enforcer.bans) == {("amps", ip) for ip in (a, c, d, e)}  # c: read, ended
    finally:
        _stop(agent, thread)
