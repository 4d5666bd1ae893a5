"""The Faust worker: the jail core (``processor.policy``) over the ``events`` topic, state in a Faust table.

Topology (DESIGN §2/§3)::

    events (key IP) ──▶ agent ``events`` ──▶ Policy.process ──▶ decisions (ban/unban) + bans (state/tombstone)
    decisions (key IP) ─▶ agent ``manual`` ─▶ Policy.manual ──▶ bans (mirror of the operator's decision)
    timer (wall clock) ─▶ Policy.tick ─▶ unban + tombstone when a ban expires; forgets idle state

State, split by what can be rebuilt (issue #5's "window state rebuilt from the events topic"):
- the failure windows (and watermarks) of every target live in memory only (``Processor.live``). A
  worker that is assigned an events partition re-reads the partition's last findtime + lateness (+ a
  margin) of records before the first one it processes, through the same core (``processor.rebuild``);
- what the events cannot give back -- a ban in force, ban counts for ``bantime.increment``, the floor
  below which failures never count again (after an expiry or a manual unban), the windows of
  ``source: bans`` jails (their failures are bans, whose findtime is typically a day) -- is kept in one
  changelogged Faust ``Table`` keyed by target (``processor.policy.durable_part``, msgpack), written only
  when it changes (a ban, an unban, a manual decision), not for every events record.
A changelog write per record was most of a worker's cost with many distinct addresses (2.6k records/s
with it, 8k without; bench/bench_processor_worker.py). Why not a Faust windowed table: windowed tables
keep one aggregate per (key, tumbling/hopping bucket) and expire whole buckets. The exact sliding window
of DESIGN §3 needs the individual failure times across a bucket boundary, and ban state must outlive any
window. Memory follows the addresses active within findtime + lateness, plus bans in force and ban counts
within their retention (``Policy.tick``, driven by the timer).

Partitioning: the table uses ``use_partitioner=True`` (the timer writes outside stream iteration), keyed
by the target's text, and each key's changelog partition is the events partition
``fleet2ban.contract.events_partition`` gives the target (``table_partition``: an IPv4 address itself, an
IPv6 one or network by its ``kafka.partition_prefix_v6`` network). An ``events`` record (v2,
``fleet2ban.contract.EventsRecord``) holds the lines of one host's round for the addresses of one
partition, keyed by its first line's address and produced to that partition by name (the shippers
compute it with the same function): every address a record holds has its
table entry in the partition number the record is in. A line whose address hashes elsewhere (a writer
that broke the contract) is refused and counted (``bad_records_total{why="partition"}``), never counted into
state this worker may not own. A worker therefore recovers exactly the state of the partitions it is
assigned. ``table_standby_replicas`` is 0, and the timer only touches keys of partitions this worker
actively owns. Records of the old shape (v1, ``EventBatch``: one address, keyed by it) are still read.

Faust settings and traps handled here:
- the group timings (session, heartbeat, rebalance timeouts; records per poll) come from the
  ``processor`` settings (``fleet2ban.kafka.faust_broker_settings``): Faust's 60 s defaults would leave
  the partitions of a worker killed with ``kill -9`` unprocessed for a minute;
- ``faust.Worker`` puts the root logger at DEBUG through its terminal spinner: the spinner is disabled
  and our own logging set-up is kept (``override_logging=False``);
- Faust's Monitor sensor (per-message statistics for Faust's own web views) is not registered, and
  the worker runs on uvloop (``processor.event_loop``): ~30% more records/s together;
- the web server stays off unless ``processor.web_port`` is set (the programmatic worker honours
  ``web_enabled``; the ``faust worker`` CLI would not).
Everything asked of Faust itself is in ``processor.faust_adapter``.

The objects :func:`build_app` puts together, each in its own module:
- ``processor.driver.Processor``: records and the clock through the core, over a ``StateStore`` (the
  Faust table here);
- ``processor.rebalance.Rebalancer``: partitions assigned and revoked, window rebuilds, gap fills;
- ``processor.agents``: the ``events`` and ``decisions`` agents, the ``allow`` follower;
- ``processor.periodic.Periodic``: the timers (expiry, heartbeat, lag gauge, stall watchdog);
- ``processor.publish.Publisher``: decisions and ban states out to Kafka.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from fleet2ban.contract import PARTITION_CACHE_MAX, TopicSpec, events_partition, partition_for
from fleet2ban.identity import Verifier
from fleet2ban.kafka import Cluster, ensure_topics_quietly
from fleet2ban.settings import Settings
from processor import faust_adapter as fa
from processor.agents import Agents, AllowFollower
from processor.driver import MAX_RECORD_BYTES, Processor, StateStore
from processor.periodic import STALL_S, Periodic, stalled
from processor.policy import Policy
from processor.publish import Publisher, outputs_to_records
from processor.rebalance import KafkaReader, Rebalancer
from processor.rebuild import span_s

__all__ = [
    "MAX_RECORD_BYTES",
    "PARTITION_CACHE_MAX",
    "STALL_S",
    "TABLE_NAME",
    "FaustProcessor",
    "Processor",
    "StateStore",
    "app_id",
    "build_app",
    "changelog_spec",
    "murmur2_partition",
    "outputs_to_records",
    "run_worker",
    "stalled",
    "table_partition",
]

log = logging.getLogger("fleet2ban.processor")

TABLE_NAME = "targets"

murmur2_partition = partition_for
"""The wire contract's partition function (``fleet2ban.contract.partition_for``) under its older name."""


@dataclass
class FaustProcessor:
    app: Any
    processor: Processor
    settings: Settings
    cluster: Cluster


def app_id(settings: Settings) -> str:
    """Faust app id (= consumer group and internal topics' prefix), under the fleet's topic prefix."""
    return f"{settings.kafka.topic_prefix}{settings.processor.app_id}"


def table_partition(key: bytes | str, partitions: int, prefix_v6: int) -> int:
    """The changelog partition of a table key (a target): its events partition, so that state stays with
    the partition its failures arrive in (``fleet2ban.contract.events_partition``)."""
    return events_partition(key.decode() if isinstance(key, bytes) else key, partitions, prefix_v6)


def changelog_spec(settings: Settings) -> TopicSpec:
    """The table's changelog (Faust's name for it: ``<app id>-<table>-changelog``), compacted, one partition
    per events partition. fleet2ban creates and checks it with the fleet's topics (``ensure_topics``)
    rather than letting Faust declare it: Faust sends CreateTopics to the broker the metadata names as
    controller, and a worker started within seconds of a broker's death crashed on that broker
    (NodeNotReadyError) where Kafka's admin client goes to a live one."""
    return TopicSpec(
        f"{app_id(settings)}-{TABLE_NAME}-changelog", settings.kafka.partitions, {"cleanup.policy": "compact"}
    )


def build_app(settings: Settings, cluster: Cluster) -> FaustProcessor:
    """The worker's Faust app with its agents, timers and tasks, around one :class:`Processor`."""
    p, topics, kafka = settings.processor, cluster.topics, cluster.settings
    app = fa.create_app(settings, cluster, app_id(settings))
    events, decisions = fa.raw_topic(app, topics.events), fa.raw_topic(app, topics.decisions)
    route = partial(table_partition, partitions=kafka.partitions, prefix_v6=kafka.partition_prefix_v6)
    table = fa.create_table(app, TABLE_NAME, kafka.partitions, route)
    policy = Policy.from_settings(
        settings.jails, p.lateness_s, enforcer=settings.enforcer, max_future_s=p.max_future_s
    )
    verifier = Verifier.from_settings(settings.identity)
    proc = Processor(policy, table, partitions=kafka.partitions, verifier=verifier)
    publish = Publisher(decisions, fa.raw_topic(app, topics.bans), policy.counters)
    consumer = fa.TopicConsumer(app, topics.events)
    reader = KafkaReader(cluster, topics.events, fa.group_id(app))
    rebalancer = Rebalancer(proc, reader, consumer, publish, span_s(policy))
    agents = Agents(proc, rebalancer, publish)
    timers = Periodic(
        proc,
        consumer,
        publish,
        rebalancer.progress,
        rebalancer.assigned,
        fa.raw_topic(app, topics.reports),
        fa.group_id(app),
        settings.metrics.heartbeat_interval_s,
    )
    allow = AllowFollower(proc, cluster, topics.allow, publish, consumer.busy, timers.owner)

    fa.on_assigned(app, topics.events, rebalancer.on_partitions_assigned)
    app.agent(events, name="events")(agents.events)
    app.agent(decisions, name="manual")(agents.decisions)
    app.timer(p.expiry_interval_s, name="expire")(timers.expire)
    app.timer(5.0, name="gauges")(timers.gauges)
    app.timer(settings.metrics.heartbeat_interval_s, name="heartbeat")(timers.heartbeat)
    app.timer(STALL_S / 2, name="watchdog")(timers.watchdog)
    app.task(partial(started, settings, fa.group_id(app), topics.events, policy))
    app.task(allow.run)
    return FaustProcessor(app, proc, settings, cluster)


async def started(settings: Settings, instance: str, events_topic: str, policy: Policy) -> None:
    """Log the worker's start, and never leave the root logger at DEBUG by accident (belt and braces: the
    spinner is off)."""
    root = logging.getLogger()
    wanted = logging.getLevelName(settings.log.level)
    if root.level < wanted:
        root.setLevel(wanted)
    log.info(
        "processor %s started: events=%s jails=%s lateness=%.1fs store=%s",
        instance,
        events_topic,
        ",".join(j.name for j in policy.jails),
        settings.processor.lateness_s,
        settings.processor.store,
    )


def use_event_loop(name: str) -> None:
    """Run the worker on uvloop (measured ~15% more records/s than asyncio's loop) unless told not to."""
    if name != "uvloop":
        return
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency; a stripped install falls back
        log.warning("processor.event_loop=uvloop but uvloop is not installed: using asyncio's loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_worker(settings: Settings, cluster: Cluster) -> None:
    """Run one worker in this process until SIGINT/SIGTERM."""
    from fleet2ban.metrics import serve_metrics

    fa.load()
    use_event_loop(settings.processor.event_loop)
    ensure_topics_quietly(cluster, uses=(), extra=[changelog_spec(settings)])
    fp = build_app(settings, cluster)
    server = serve_metrics(settings.metrics.port, settings.metrics.bind)
    try:
        fa.run(fp.app, settings.log.level.lower())
    finally:
        if server is not None:
            server.stop()
