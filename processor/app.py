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
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fleet2ban import __version__
from fleet2ban.allowlist import AllowList
from fleet2ban.contract import (
    AllowEntry,
    BanState,
    ContractError,
    Decision,
    Heartbeat,
    TopicSpec,
    ban_key,
    decode_decision,
    decode_events,
    encode,
    events_partition,
    from_epoch,
    normalize_target,
    partition_for,
    target_network,
    utcnow,
)
from fleet2ban.identity import Headers, Verifier
from fleet2ban.kafka import Cluster, Source, TopicReader, ensure_topics_quietly, faust_broker_settings
from fleet2ban.logs import RateLimitedLog
from fleet2ban.settings import Settings
from processor import metrics as m
from processor.engine import ban_expiries
from processor.policy import (
    NEG_INF,
    Output,
    Policy,
    TargetState,
    decode_state,
    durable_part,
    encode_state,
)
from processor.rebuild import RebuildError, Span, deleted_unprocessed, read_span, span_s

log = logging.getLogger("fleet2ban.processor")
rlog = RateLimitedLog(log)

MAX_RECORD_BYTES = 4 * 1024 * 1024
TABLE_NAME = "targets"


STALL_S = 10.0
"""An events partition with records waiting behind its highwater and none processed for this long is
re-sought (``watchdog`` in :func:`build_app`)."""


def stalled(highwater: int | None, next_offset: int | None, idle_s: float, bound_s: float) -> bool:
    """Whether records wait at ``next_offset`` below ``highwater`` with no progress for ``bound_s``."""
    if highwater is None or next_offset is None:
        return False
    return highwater > next_offset and idle_s >= bound_s


murmur2_partition = partition_for
"""The wire contract's partition function (``fleet2ban.contract.partition_for``) under its older name."""

PARTITION_CACHE_MAX = 200_000
"""Addresses whose partition a worker remembers (cleared when full)."""


# ------------------------------------------------------------------------------------- the processor


@dataclass
class Processor:
    """Record handling around the core; Faust-independent apart from the table mapping it is given.

    Ban expiries are kept in a heap filled from the decisions the core emits; everything else that the
    clock can change (idle state to forget, bans recovered from the changelog after a restart or a
    rebalance) is found by a sweep over the table every ``sweep_every`` seconds, and at once after a
    partition assignment (``sweep_due``).
    """

    policy: Policy
    table: Any  # a faust Table (bytes -> bytes), or any MutableMapping in tests
    """The changelogged durable part of each state (``durable_part``): bans, ban counts, floors."""
    partitions: int = 1
    """Partitions of the events topic (keys map to them with murmur2, as the table's do)."""
    prefix_v6: int = 64
    """``kafka.partition_prefix_v6``: IPv6 addresses and targets map to a partition by this prefix."""
    sweep_every: float = 10.0
    watermarks: dict[int, float] = field(default_factory=dict)
    """Per events partition, the newest event time read. Idle state is forgotten by this clock, never by
    the wall clock alone: a worker catching up on a backlog (after an outage or a restart) must not
    forget failures that the backlog's older events still count with."""
    sweep_due: bool = True
    expiries: list[tuple[float, bytes]] = field(default_factory=list)
    live: dict[str, TargetState] = field(default_factory=dict)
    """The whole state of each target this worker is counting (windows included), in memory only:
    windows are rebuilt from the events topic after an assignment (``processor.rebuild``)."""
    stored: dict[str, bytes] = field(default_factory=dict)
    """For targets in ``live``: the table's value for them (absent: no entry), so that a record that
    changes no durable state costs no table lookup."""
    verifier: Verifier | None = None
    """Checks each events record's host signature (DESIGN §8): one that does not verify changes nothing."""
    _parts: dict[str, int] = field(default_factory=dict, repr=False)
    _next_sweep: float = 0.0

    def partition_of(self, ip: str) -> int:
        """The events partition of an address or target (cached ``events_partition``)."""
        p = self._parts.get(ip)
        if p is None:
            if len(self._parts) >= PARTITION_CACHE_MAX:
                self._parts.clear()
            p = self._parts[ip] = events_partition(ip, self.partitions, self.prefix_v6)
        return p

    def _get(self, target: str) -> TargetState | None:
        state = self.live.get(target)
        if state is None:
            raw = self.table.get(target.encode())
            if raw is not None:  # recovered from the changelog: bans, ban counts, floors
                state = self.live[target] = decode_state(raw)
                self.stored[target] = raw
        return state

    def _put(self, target: str, state: TargetState | None) -> None:
        stored = self.stored
        if state is None:
            if self.live.pop(target, None) is None:
                # never loaded through _get (a caller's own state): the table is the truth
                if target.encode() in self.table:
                    del self.table[target.encode()]
            elif stored.pop(target, None) is not None:
                del self.table[target.encode()]
            return
        self.live[target] = state
        durable = durable_part(state, self.policy.bans_jails)
        if durable is None:
            if stored.pop(target, None) is not None:
                del self.table[target.encode()]
            return
        raw = encode_state(durable)
        if stored.get(target) != raw:  # only changes reach the changelog
            self.table[target.encode()] = raw
            stored[target] = raw

    def forget_partitions(self, partitions: set[int]) -> int:
        """Drop the in-memory state of targets in ``partitions`` (revoked: another worker rebuilds it)."""
        gone = [t for t in self.live if self.partition_of(t) in partitions]
        for t in gone:
            del self.live[t]
            self.stored.pop(t, None)
        for p in partitions:
            self.watermarks.pop(p, None)
        return len(gone)

    def _note(self, out: list[Output], start: int) -> None:
        for expires, target in ban_expiries(out, start):
            heapq.heappush(self.expiries, (expires, target.encode()))

    def on_events_record(  # noqa: C901  # Faust wiring, being rewritten as named objects by the processor engineer (#19)
        self,
        key: bytes | None,
        value: bytes | None,
        out: list[Output],
        replay: bool = False,
        partition: int | None = None,
        headers: Headers = None,
    ) -> None:
        """One ``events`` record of either shape (bad input is counted, logged at a bounded rate and
        skipped): the core over its lines in order (``Policy.process_events``).

        ``headers``: the record's, whose host signature ``verifier`` checks against the host the record
        names (a record that does not verify is dropped and counted: ``fleet2ban_identity_rejected``).

        ``partition``: the events partition the record was read from; lines of addresses that hash to
        another one are refused (their state lives in another partition of the table). ``replay``: a
        record read back to rebuild windows (counted apart from the records consumed)."""
        if replay:
            m.REPLAYED.inc()
        else:
            m.RECORDS.inc()
        if value is not None and len(value) > MAX_RECORD_BYTES:
            if not replay:
                m.BAD_RECORDS.labels("events", "too_large").inc()
                rlog.warning("events-large", "skipped an events record of %d bytes", len(value))
            return
        n = len(out)
        try:
            events = decode_events(value)
        except ContractError as exc:
            if not replay:
                m.BAD_RECORDS.labels("events", "contract").inc()
            rlog.warning(
                "events-bad",
                "skipped an invalid events record%s (key %r): %s",
                " read back" if replay else "",
                key,
                exc,
            )
            return
        # every line of a record carries the record's host (decode_events): the signer must be it
        if self.verifier is not None and not self.verifier.check(
            "events", key, value, headers, events[0].host, count=not replay
        ):
            return
        if not replay:
            m.LINES.inc(len(events))
        watermarks = self.watermarks
        part_of = self.partition_of
        if partition is None:  # no partition given (tests, tools): each line's own
            for ev in events:
                p = part_of(ev.ip)
                t = ev.ts.timestamp()
                if t > watermarks.get(p, NEG_INF):
                    watermarks[p] = t
        else:
            ip = None
            misrouted = 0
            for ev in events:
                if ev.ip != ip:
                    ip = ev.ip
                    ok = part_of(ip) == partition
                misrouted += not ok
            if misrouted:
                if not replay:
                    m.BAD_RECORDS.labels("events", "partition").inc()
                rlog.warning(
                    "events-partition",
                    "refused %d lines of an events record in partition %d (key %r): their addresses"
                    " belong to other partitions",
                    misrouted,
                    partition,
                    key,
                )
                events = [ev for ev in events if part_of(ev.ip) == partition]
                if not events:
                    return
            newest = max(ev.ts for ev in events).timestamp()
            if newest > watermarks.get(partition, NEG_INF):
                watermarks[partition] = newest
        self.policy.process_events(self._get, self._put, events, out)
        if len(out) > n:
            self._note(out, n)

    def on_allow_record(
        self,
        key: bytes | None,
        value: bytes | None,
        now: float,
        owned: Callable[[bytes], bool],
        out: list[Output],
    ) -> None:
        """One ``allow`` record: :meth:`ingest_allow`, then :meth:`lift_covered` for a new entry."""
        entry = self.ingest_allow(key, value, now)
        if entry is not None:
            self.lift_covered([entry], now, owned, out)

    def ingest_allow(self, key: bytes | None, value: bytes | None, now: float) -> AllowEntry | None:
        """One ``allow`` record (every worker reads the whole topic) into the allow-list; returns the
        entry it put in force (None: a tombstone, an expired entry, or an invalid record, counted)."""
        allow = self.policy.allow
        if allow is None:
            allow = self.policy.allow = AllowList()
        try:
            _key, entry = allow.ingest(key, value)
        except ContractError as exc:
            m.BAD_RECORDS.labels("allow", "contract").inc()
            rlog.warning("allow-bad", "skipped an invalid allow record (key %r): %s", key, exc)
            return None
        self.policy.allow_changed()
        if entry is None or not entry.active_at(from_epoch(now)):
            return None
        return entry

    def lift_covered(
        self, entries: list[AllowEntry], now: float, owned: Callable[[bytes], bool], out: list[Output]
    ) -> None:
        """Lift the bans in force that ``entries`` cover on this worker's targets: one pass over them
        (a batch of records, e.g. the whole topic read at start, costs one pass, not one per entry)."""
        if not entries:
            return
        nets = [target_network(e.network) for e in entries]
        n = len(out)
        for target in self._owned_targets(owned):
            try:
                tnet = target_network(target)
            except (ContractError, ValueError):
                continue
            if not any(tnet.version == net.version and tnet.overlaps(net) for net in nets):
                continue
            state = self._get(target)
            if state is None:
                continue
            self._put(target, self.policy.lift(state, target, now, out))
        if len(out) > n:
            log.info(
                "allow-list entr%s %s lifted %d ban(s)",
                "y" if len(entries) == 1 else "ies",
                ", ".join(e.network for e in entries[:5]),
                len(out) - n,
            )

    def _owned_targets(self, owned: Callable[[bytes], bool]) -> list[str]:
        """Every target this worker holds state for (in memory or in the table) in its own partitions."""
        targets = [t for t in self.live if owned(t.encode())]
        targets += [t for k in list(self.table.keys()) if (t := k.decode()) not in self.live and owned(k)]
        return targets

    def on_decision_record(self, value: bytes | None, out: list[Output]) -> None:
        """One ``decisions`` record: operators' (manual) decisions are applied and mirrored."""
        try:
            d = decode_decision(value)
        except ContractError as exc:
            m.BAD_RECORDS.labels("decisions", "contract").inc()
            rlog.warning("decisions-bad", "skipped an invalid decisions record: %s", exc)
            return
        if d.origin != "manual" or d.action not in ("ban", "unban"):
            return  # allow/unallow: audit records (the allow topic carries the entries)
        if d.action == "ban" and d.expires_at is not None and d.expires_at.timestamp() <= time.time():
            # a fresh consumer group reads the retained audit log from its start: a manual ban that has
            # long expired must not be mirrored (and then lifted) again
            m.DECISIONS.labels("expired_manual_skipped", "manual").inc()
            return
        target = normalize_target(d.ip)
        n = len(out)
        self._put(target, self.policy.manual(self._get(target), d, out))
        self._note(out, n)

    def _tick_key(self, key: bytes, now: float, out: list[Output]) -> None:
        target = key.decode()
        n = len(out)
        read_up_to = self.watermarks.get(self.partition_of(target), NEG_INF)
        self._put(target, self.policy.tick(self._get(target), target, now, out, forget_now=read_up_to))
        self._note(out, n)

    def tick(self, now: float, owned: Callable[[bytes], bool], out: list[Output]) -> None:
        """Expire bans due by ``now`` and, when a sweep is due, forget idle state (owned keys only)."""
        self.policy.allow_expiry(now)
        heap = self.expiries
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            if key in self.table and owned(key):
                self._tick_key(key, now, out)
        if self.sweep_due or now >= self._next_sweep:
            self.sweep(now, owned, out)

    def sweep(self, now: float, owned: Callable[[bytes], bool], out: list[Output]) -> None:
        recovered = self.sweep_due
        self.sweep_due = False
        self._next_sweep = now + self.sweep_every
        bans = keys = 0
        # the targets this worker counts, and those recovered from the changelog not yet seen again
        targets = self._owned_targets(owned)
        for target in targets:
            state = self._get(target)
            if state is None:
                continue
            d = self.policy.deadline(state)
            key = target.encode()
            if d is not None and d <= now:
                self._tick_key(key, now, out)
                state = self.live.get(target)
                if state is None:
                    continue
            allow = self.policy.allow
            if allow is not None and allow.entries and any(js.ban for js in state.jails.values()):
                # a ban an entry covers that was not lifted when the entry came (not owned then)
                self._put(target, self.policy.lift(state, target, now, out))
                state = self.live.get(target)
                if state is None:
                    continue
            keys += 1
            for js in state.jails.values():
                if js.ban is not None:
                    bans += 1
                    if recovered and js.ban.expires_at is not None:
                        heapq.heappush(self.expiries, (js.ban.expires_at, key))
        m.ACTIVE_BANS.set(bans)
        m.TABLE_SIZE.set(keys)


def outputs_to_records(outs: list[Output]) -> list[tuple[str, bytes, bytes | None]]:
    """(topic kind, key, value) records for the decisions and bans topics, in order."""
    recs: list[tuple[str, bytes, bytes | None]] = []
    for o in outs:
        d: Decision = o.decision
        if o.publish:
            recs.append(("decisions", d.ip.encode(), encode(d)))
        bkey = ban_key(d.jail, d.ip).encode()
        if d.action == "ban":
            recs.append(("bans", bkey, encode(BanState.from_decision(d))))
        else:
            recs.append(("bans", bkey, None))
    return recs


# ----------------------------------------------------------------------------------------- the app


def _app_class() -> Any:
    import faust

    class App(faust.App):
        """A Faust app without the Monitor sensor's per-message bookkeeping.

        Faust registers its Monitor as a sensor that is called four times for every message (in, stream
        in, stream out, out) to keep statistics for Faust's own web views, which fleet2ban does not serve
        (its metrics are Prometheus counters). That is 10-15% of a worker's CPU with many small records.
        ``app.monitor`` itself stays (the consumer records end offsets and commits on it), and a no-op
        sensor takes its place: Faust warns on every rebalance when no sensor answers for it."""

        def on_init_dependencies(self) -> Any:
            deps = super().on_init_dependencies()
            self.sensors.remove(self.monitor)
            self.sensors.add(faust.Sensor())
            return deps

    return App


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


def build_app(settings: Settings, cluster: Cluster) -> FaustProcessor:  # noqa: C901  # Faust composition root, being rewritten as named objects by the processor engineer (#19)
    p = settings.processor
    conf = faust_broker_settings(cluster, p)
    data_dir = p.data_dir or (settings.resolved_state_dir() / "processor")
    data_dir.mkdir(parents=True, exist_ok=True)
    web = bool(p.web_port)
    app: Any = _app_class()(
        app_id(settings),
        store=p.store,
        datadir=str(data_dir),
        table_standby_replicas=0,
        web_enabled=web,
        web_port=p.web_port or 6066,
        stream_wait_empty=False,
        broker_commit_interval=1.0,
        # the changelog is made by ensure_topics (changelog_spec); no leader topic: nothing runs on_leader
        topic_allow_declare=False,
        topic_disable_leader=True,
        **conf,
    )
    topics = cluster.topics
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events_topic = app.topic(topics.events, **raw)
    decisions_topic = app.topic(topics.decisions, **raw)
    bans_topic = app.topic(topics.bans, **raw)
    reports_topic = app.topic(topics.reports, **raw)
    table = app.Table(
        TABLE_NAME,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=cluster.settings.partitions,
        use_partitioner=True,
    )
    n_parts = cluster.settings.partitions
    # The changelog partition of a key is the contract's (murmur2, what aiokafka's partitioner would
    # pick), computed here: Faust asks the producer's partitioner synchronously, from metadata aiokafka
    # may not hold for the changelog topic (after a broker died, its refresh can leave the topic out),
    # and the agent then crashed on ``partitions_for_topic(...) is None`` in the middle of a record.
    table.partition_for_key = partial(
        table_partition, partitions=n_parts, prefix_v6=cluster.settings.partition_prefix_v6
    )
    policy = Policy.from_settings(
        settings.jails, p.lateness_s, enforcer=settings.enforcer, max_future_s=p.max_future_s
    )
    proc = Processor(policy, table, partitions=n_parts, verifier=Verifier.from_settings(settings.identity))

    async def publish(outs: list[Output]) -> None:
        now = time.time()
        for o in outs:
            d = o.decision
            m.DECISIONS.labels(d.action, d.origin).inc()
            if d.action == "ban" and d.origin == "auto":
                m.DECISION_DELAY.observe(max(0.0, now - d.at.timestamp()))
                log.info(
                    "ban %s jail=%s failures=%d hosts=%s scope=%s until=%s id=%s",
                    d.ip,
                    d.jail,
                    d.failures,
                    ",".join(d.hosts),
                    "fleet" if d.scope is None else ",".join(d.scope),
                    d.expires_at,
                    d.id,
                )
            elif o.publish:
                log.info("unban %s jail=%s (%s) id=%s", d.ip, d.jail, d.reason or "", d.id)
            else:
                log.info("mirror manual %s %s jail=%s by=%s id=%s", d.action, d.ip, d.jail, d.by, d.id)
        for kind, key, value in outputs_to_records(outs):
            topic = decisions_topic if kind == "decisions" else bans_topic
            await topic.send(key=key, value=value)
        m.export_counters(policy.counters)

    # The stall watchdog's view of progress: per events partition, the next offset to process and when
    # the last one was processed (see ``stalled``).
    next_offset: dict[int, int] = {}
    progress_at: dict[int, float] = {}
    # Events partitions whose windows are in memory; any other is rebuilt before its first record.
    rebuilt: set[int] = set()
    assigned_now: set[int] = set()
    span = span_s(policy)

    def committed_offset(partition: int) -> int | None:
        """Where this worker's stream of an events partition started (its group's committed offset)."""
        try:
            for tp in app.assignor.assigned_actives():
                if tp.topic == topics.events and tp.partition == partition:
                    committed = app.consumer._committed_offset.get(tp)
                    return committed if isinstance(committed, int) else None
        except Exception as exc:  # best effort: the time span alone is read then
            log.debug("committed offset of events partition %d: %s", partition, exc)
        return None

    async def read_back(partition: int, end: int, **kw: Any) -> Span:
        """Records of an events partition before offset ``end`` (``processor.rebuild.read_span``),
        read in a thread so the event loop keeps running."""
        loop = asyncio.get_running_loop()
        read = partial(read_span, cluster, topics.events, partition, end_offset=end, **kw)
        return await loop.run_in_executor(None, read)

    async def feed_back(got: Span, live_from: int) -> int:
        """Process records read back; those from offset ``live_from`` on were never processed (counted
        as consumed), the earlier ones are replayed. Returns how many were never processed."""
        out: list[Output] = []
        unprocessed = 0
        for at, key, value in got.records:
            unprocessed += at >= live_from
            proc.on_events_record(
                key, value, out, replay=at < live_from, partition=got.partition, headers=got.headers.get(at)
            )
        if out:
            await publish(out)
        return unprocessed

    async def skipped_by_retention(partition: int) -> None:
        """Say (log line, metric) which records of an events partition the broker deleted (retention)
        before this group processed them: a worker stopped for longer than the retention resumes at the
        partition's start, past them."""
        loop = asyncio.get_running_loop()
        find = partial(deleted_unprocessed, cluster, topics.events, partition, app.conf.id)
        try:
            gap = await loop.run_in_executor(None, find)
        except RebuildError as exc:
            log.warning(
                "events partition %d: could not check for records lost to retention: %s", partition, exc
            )
            return
        if gap is not None:
            committed, start = gap
            m.SKIPPED.labels("retention").inc(start - committed)
            log.warning(
                "events partition %d: offsets %d..%d were deleted (retention) before they were processed:"
                " %d records skipped",
                partition,
                committed,
                start - 1,
                start - committed,
            )

    async def rebuild(partition: int, offset: int, timestamp: float | None) -> None:
        """Replay the partition's last ``span`` seconds before ``offset`` (see processor.rebuild), and
        process any record from the committed offset on that the stream skipped before ``offset``."""
        started = time.monotonic()
        since_ms = int(((timestamp or time.time()) - span) * 1000)
        await skipped_by_retention(partition)
        committed = committed_offset(partition)
        keep_from = committed if committed is not None and committed < offset else None
        try:
            got = await read_back(partition, offset, since_ms=since_ms, keep_from=keep_from)
        except RebuildError as exc:
            m.REBUILDS.labels("failed").inc()
            log.error(
                "could not rebuild the windows of events partition %d (counting restarts from here): %s",
                partition,
                exc,
            )
            return
        c = policy.counters
        before = (c.events, c.failures, c.duplicates, c.late, c.evidence)
        if await feed_back(got, offset if keep_from is None else keep_from):
            m.GAPS.inc()
            log.warning(
                "events partition %d: the stream skipped offsets %d..%d after the assignment; processed them",
                partition,
                keep_from,
                offset - 1,
            )
        after = (c.events, c.failures, c.duplicates, c.late, c.evidence)
        counted = [now - then for now, then in zip(after, before, strict=True)]
        took = time.monotonic() - started
        m.REBUILDS.labels("ok").inc()
        m.REBUILD_SECONDS.observe(took)
        log.info(
            "rebuilt the windows of events partition %d from %d records (offsets %d..%d) in %.2fs: "
            "events=%d failures=%d duplicates=%d late=%d evidence=%d",
            partition,
            len(got.records),
            got.first_offset,
            got.end_offset,
            took,
            *counted,
        )

    async def fill_gap(partition: int, start: int, end: int) -> None:
        """Process records ``start..end-1`` that the stream skipped.

        Faust drops records that aiokafka fetched while a freshly assigned partition was not yet active
        (or while flow was stopped for a rebalance) and carries on after them: seen here right after a
        restart, 145 records skipped between two consecutive events. Offsets of the events topic are
        contiguous (no compaction, no transactions), so a jump is such a gap: read it back and process
        it before the record that revealed it."""
        m.GAPS.inc()
        log.warning(
            "events partition %d: the stream skipped offsets %d..%d; reading them back",
            partition,
            start,
            end - 1,
        )
        try:
            got = await read_back(partition, end, since_ms=0, start_offset=start)
        except RebuildError as exc:
            log.error("could not read back the skipped offsets %d..%d: %s", start, end - 1, exc)
            return
        await feed_back(got, start)

    async def on_events(stream: Any) -> None:
        out: list[Output] = []
        async for event in stream.events():
            msg = event.message
            expected = next_offset.get(msg.partition)
            if msg.partition not in rebuilt:
                await rebuild(msg.partition, msg.offset, msg.timestamp)
                rebuilt.add(msg.partition)
            elif expected is not None and msg.offset > expected:
                await fill_gap(msg.partition, expected, msg.offset)
            next_offset[msg.partition] = msg.offset + 1
            progress_at[msg.partition] = time.monotonic()
            proc.on_events_record(msg.key, msg.value, out, partition=msg.partition, headers=msg.headers)
            if out:
                await publish(out)
                out.clear()

    async def follow_allow() -> None:
        """Every worker follows the whole ``allow`` topic (no group) in a thread; each record changes the
        allow-list here, on the event loop, and lifts the bans an entry covers on this worker's targets
        (not during a rebalance: the sweep after the assignment lifts those)."""
        loop = asyncio.get_running_loop()
        pending: list[tuple[bytes | None, bytes | None]] = []
        wake = asyncio.Event()
        stop = threading.Event()

        def push(key: bytes | None, value: bytes | None) -> None:
            pending.append((key, value))
            wake.set()

        def feed(_kind: str, key: bytes | None, value: bytes | None, _ts: object) -> None:
            loop.call_soon_threadsafe(push, key, value)

        def run() -> None:
            while not stop.is_set():
                try:
                    with TopicReader(cluster, [Source("allow", topics.allow)], feed) as reader:
                        if not reader.partitions.get(topics.allow):  # not created yet: look again
                            stop.wait(10.0)
                            continue
                        while not stop.is_set():
                            reader.poll(0.5)
                except Exception as exc:  # a broker outage: read the topic again from its start
                    rlog.warning("allow-read", "reading %s: %s (retrying)", topics.allow, exc)
                    stop.wait(2.0)

        thread = threading.Thread(target=run, name="allow-list", daemon=True)
        thread.start()
        try:
            while True:
                await wake.wait()
                wake.clear()
                batch = pending[:]
                pending.clear()
                busy = app.rebalancing or getattr(app, "in_recovery", False)
                own = (lambda _key: False) if busy else owner()
                out: list[Output] = []
                now = time.time()
                fresh = [e for key, value in batch if (e := proc.ingest_allow(key, value, now)) is not None]
                proc.lift_covered(fresh, now, own, out)
                if out:
                    await publish(out)
        finally:
            stop.set()

    async def on_decisions(stream: Any) -> None:
        out: list[Output] = []
        async for event in stream.events():
            proc.on_decision_record(event.message.value, out)
            if out:
                await publish(out)
                out.clear()

    def owner() -> Callable[[bytes], bool]:
        """Whether a key's partition is actively assigned to this worker (now)."""
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topics.events}
        return lambda key: proc.partition_of(key.decode()) in actives

    async def expire() -> None:
        if app.rebalancing or getattr(app, "in_recovery", False):
            return
        out: list[Output] = []
        proc.tick(time.time(), owner(), out)
        if out:
            await publish(out)
        m.export_counters(policy.counters)

    lag_now: dict[str, float] = {"lag": 0.0}
    started_at = utcnow()
    hb_host = socket.gethostname()

    async def heartbeat() -> None:
        """A heartbeat on ``reports`` (role processor): partitions, lag, what it consumed and decided, so
        ``fleet2ban status`` shows the component every ban depends on.

        Not during a rebalance or a recovery (as the expiry timer): a send awaited then held the worker's
        partitions unprocessed for 45-90 s after a second worker joined (tests/processor/test_failover)."""
        if app.rebalancing or getattr(app, "in_recovery", False):
            return
        from prometheus_client import REGISTRY

        def total(name: str, labels: dict[str, str] | None = None) -> float:
            return float(REGISTRY.get_sample_value(name, labels or {}) or 0.0)

        decided = sum(
            total("fleet2ban_processor_decisions_total", {"action": a, "origin": o})
            for a in ("ban", "unban")
            for o in ("auto", "manual")
        )
        counters = {
            "partitions": float(len(assigned_now)),
            "records": total("fleet2ban_processor_records_total"),
            "lines": total("fleet2ban_processor_lines_total"),
            "decisions": decided,
            "rebuilds": total("fleet2ban_processor_rebuilds_total", {"outcome": "ok"}),
            "active_bans": total("fleet2ban_processor_active_bans"),
        }
        hb = Heartbeat(
            host=hb_host,
            role="processor",
            at=utcnow(),
            instance=app.conf.id,
            version=__version__,
            started_at=started_at,
            interval_s=settings.metrics.heartbeat_interval_s,
            lag=lag_now["lag"],
            counters=counters,
        )
        try:
            await reports_topic.send(key=hb_host.encode(), value=encode(hb))
        except Exception as exc:  # a heartbeat is best effort
            rlog.warning("heartbeat", "processor heartbeat not sent: %s", exc)

    async def gauges() -> None:
        lag = 0
        try:
            consumer: Any = app.consumer
            for tp in app.assignor.assigned_actives():
                if tp.topic != topics.events:
                    continue
                hw = consumer.highwater(tp)
                pos = consumer._read_offset.get(tp)
                if hw is not None:
                    lag += max(0, hw - (pos + 1 if pos is not None else 0))
        except Exception as exc:  # metrics are best effort
            log.debug("lag: %s", exc)
        m.LAG.set(lag)
        lag_now["lag"] = float(lag)

    async def watchdog() -> None:
        """Re-seek an events partition whose records wait behind its highwater but are not processed.

        Faust can drop records fetched while a freshly assigned partition is being resumed (seen after a
        kill -9 and restart: the records stay unprocessed until the next rebalance). Seeking back to the
        next unprocessed offset re-fetches them; at worst a record is seen twice, which the core counts
        once (line ids) and never turns into a second decision."""
        if app.rebalancing or getattr(app, "in_recovery", False):
            return
        try:
            consumer: Any = app.consumer
            now = time.monotonic()
            for tp in app.assignor.assigned_actives():
                if tp.topic != topics.events:
                    continue
                nxt = next_offset.get(tp.partition, consumer._committed_offset.get(tp))
                if nxt is None:  # nothing processed or committed yet: it starts at the earliest record
                    nxt = (await consumer.earliest_offsets(tp)).get(tp)
                hw = consumer.highwater(tp)
                idle = now - progress_at.setdefault(tp.partition, now)
                if stalled(hw, nxt, idle, STALL_S):
                    m.STALLS.inc()
                    log.warning(
                        "events partition %d stalled at offset %d (highwater %d) for %.0fs: seeking back",
                        tp.partition,
                        nxt,
                        hw,
                        idle,
                    )
                    progress_at[tp.partition] = now
                    await consumer.seek(tp, nxt)
        except Exception as exc:  # the watchdog must never take the worker down
            log.debug("watchdog: %s", exc)

    async def fix_root_logger() -> None:
        # Belt and braces: the spinner is off, but never let the root logger sit at DEBUG by accident.
        root = logging.getLogger()
        wanted = logging.getLevelName(settings.log.level)
        if root.level < wanted:
            root.setLevel(wanted)
        log.info(
            "processor %s started: events=%s jails=%s lateness=%.1fs store=%s",
            app.conf.id,
            topics.events,
            ",".join(j.name for j in policy.jails),
            p.lateness_s,
            p.store,
        )

    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == topics.events}
        gone = assigned_now - mine
        if gone:  # another worker rebuilds these partitions' windows
            dropped = proc.forget_partitions(gone)
            log.info("partitions revoked: events=%s (%d targets dropped)", sorted(gone), dropped)
        rebuilt.intersection_update(mine)
        assigned_now.clear()
        assigned_now.update(mine)
        proc.sweep_due = True  # recovered bans need their expiry timers
        for p in gone:  # kept partitions keep theirs: a jump past it is a gap the stream skipped
            next_offset.pop(p, None)
        progress_at.clear()
        log.info("partitions assigned: events=%s", sorted(mine))

    app.on_partitions_assigned.connect(on_assigned)
    app.agent(events_topic, name="events")(on_events)
    app.agent(decisions_topic, name="manual")(on_decisions)
    app.timer(p.expiry_interval_s, name="expire")(expire)
    app.timer(5.0, name="gauges")(gauges)
    app.timer(settings.metrics.heartbeat_interval_s, name="heartbeat")(heartbeat)
    app.timer(STALL_S / 2, name="watchdog")(watchdog)
    app.task(fix_root_logger)
    app.task(follow_allow)
    return FaustProcessor(app, proc, settings, cluster)


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
    import faust

    from fleet2ban.metrics import serve_metrics

    use_event_loop(settings.processor.event_loop)
    ensure_topics_quietly(cluster, uses=(), extra=[changelog_spec(settings)])
    fp = build_app(settings, cluster)
    server = serve_metrics(settings.metrics.port, settings.metrics.bind)
    worker = faust.Worker(
        fp.app,
        loglevel=settings.log.level.lower(),
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    worker.spinner = None  # its handler would put the root logger at DEBUG (13% CPU)
    try:
        worker.execute_from_commandline()
    finally:
        if server is not None:
            server.stop()
