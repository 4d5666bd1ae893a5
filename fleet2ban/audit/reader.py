"""The thin Kafka side of the audit layer: connect, seek by time, read to the end, follow live.

Everything here hands decoded records to the pure side (:class:`FleetView`, :mod:`.queries`). One
confluent-kafka consumer without a group, every partition assigned; the end of a partition is detected
by partition EOF (the embedded broker's end offsets are wrong). Time seeks use ``offsets_for_times`` as a
*lower bound* and skip records older than the target (the embedded broker answers per batch).

- :func:`connect`: resolve the cluster, failing with one :class:`BrokerError` within ``timeout`` seconds.
- :class:`TopicReader`: the cursor over one or more topics; :meth:`TopicReader.catch_up` reads to the
  end, :meth:`TopicReader.poll` follows live (what the web console runs in its loop).
- :func:`load_view`, :func:`read_decisions`, :func:`read_target`, :func:`load_trail`: what the CLI asks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet2ban.audit.partition import partition_for
from fleet2ban.audit.view import FleetView, TopicKind
from fleet2ban.contract import (
    BanState,
    ContractError,
    Decision,
    Report,
    ban_key,
    decode_ban,
    decode_decision,
    decode_report,
    normalize_target,
    split_ban_key,
)
from fleet2ban.exceptions import BrokerError
from fleet2ban.kafka import TANSU_CLUSTER_PREFIX, Cluster, admin_config, consumer_config, resolve
from fleet2ban.logs import RateLimitedLog
from fleet2ban.settings import KafkaSettings

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

RecordSink = Callable[[TopicKind, bytes | None, bytes | None, datetime | None], None]
"""Gets each record: (topic kind, key, value, the record's timestamp or None)."""

Progress = Callable[[str, int], None]
"""Called now and then during long reads with (topic, records read so far)."""

BISECT_SPAN = 500
"""A time seek on the embedded broker stops bisecting when fewer records than this remain to skip."""

SEEK_SLACK = timedelta(minutes=5)
"""How far before a range's start the time seek goes: a decision's ``at`` may precede its record's
timestamp (event time, processor lag) by up to this much."""


def connect(settings: KafkaSettings, timeout: float = 5.0) -> Cluster:
    """The cluster, after checking that it answers: one clear :class:`BrokerError` within ``timeout``."""
    if not settings.bootstrap_servers:
        raise BrokerError(
            "no Kafka bootstrap configured: pass --bootstrap HOST:PORT, set kafka.bootstrap_servers "
            "or FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS"
        )
    from confluent_kafka.admin import AdminClient

    probe = Cluster(settings, settings.bootstrap_servers, embedded=False)
    conf = {
        **admin_config(probe),
        "error_cb": lambda _err: None,
        "log_level": 0,
        "socket.connection.setup.timeout.ms": int(timeout * 1000),
    }
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout)
        if settings.flavor == "auto":  # ask here, quietly, rather than through a second client
            cluster_id = admin.describe_cluster(request_timeout=timeout).result(timeout).cluster_id or ""
            flavor = "tansu" if cluster_id.startswith(TANSU_CLUSTER_PREFIX) else "kafka"
            settings = settings.model_copy(update={"flavor": flavor})
    except Exception as exc:
        raise BrokerError(
            f"Kafka at {settings.bootstrap_servers} is unreachable (no answer within {timeout:g}s): "
            f"{_short(exc)}"
        ) from None
    return resolve(settings)


def _short(exc: BaseException) -> str:
    text = str(exc)
    if 'str="' in text:  # KafkaError{code=...,str="..."}
        text = text.split('str="', 1)[1].rstrip('"}')
    return text[:200]


def record_time(msg: Any) -> datetime | None:
    """The record's timestamp (create or log-append time) as UTC, if it has one."""
    ttype, ms = msg.timestamp()
    if ttype == 0 or ms is None or ms < 0:  # TIMESTAMP_NOT_AVAILABLE
        return None
    return datetime.fromtimestamp(ms / 1000.0, UTC)


@dataclass(frozen=True)
class Source:
    """One topic to read: from where (``since``: a time; None: the beginning), to where (``until``)."""

    kind: TopicKind
    topic: str
    since: datetime | None = None
    until: datetime | None = None
    partitions: tuple[int, ...] | None = None
    """Only these partitions (None: all)."""


class TopicReader:
    """A no-group consumer over some topics that feeds each record to a callback.

    ``on_record(kind, key, value, recorded_at)`` gets raw bytes; :meth:`into_view` builds the callback that
    folds into a :class:`FleetView`. Use as a context manager (closes the consumer).
    """

    def __init__(
        self,
        cluster: Cluster,
        sources: Iterable[Source],
        on_record: RecordSink,
        *,
        progress: Progress | None = None,
        timeout: float = 10.0,
        value_contains: bytes | None = None,
    ) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

        self.cluster = cluster
        self.on_record = on_record
        self.progress = progress
        self.value_contains = value_contains
        self.records = 0
        self._consumer = Consumer({**consumer_config(cluster), "log_level": 0})
        self._kinds: dict[str, TopicKind] = {}
        self._since_ms: dict[str, int] = {}
        self._until_ms: dict[str, int] = {}
        self._done: set[tuple[str, int]] = set()
        self._pending: set[tuple[str, int]] = set()
        self._counts: dict[str, int] = {}
        assignment = []
        try:
            for src in sources:
                self._kinds[src.topic] = src.kind
                self._counts[src.topic] = 0
                meta = self._consumer.list_topics(src.topic, timeout=timeout)
                tmeta = meta.topics.get(src.topic)
                if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                    rlog.warning(
                        "missing-" + src.topic,
                        "topic %s does not exist (yet): read as empty (create it: fleet2ban topics create)",
                        src.topic,
                    )
                    continue
                parts = sorted(tmeta.partitions)
                if src.partitions is not None:
                    parts = [p for p in parts if p in src.partitions]
                if src.until is not None:
                    self._until_ms[src.topic] = int(src.until.timestamp() * 1000)
                if src.since is None:
                    starts = [TopicPartition(src.topic, p, OFFSET_BEGINNING) for p in parts]
                else:
                    since_ms = int(src.since.timestamp() * 1000)
                    self._since_ms[src.topic] = since_ms
                    starts = self._consumer.offsets_for_times(
                        [TopicPartition(src.topic, p, since_ms) for p in parts], timeout=timeout
                    )
                    if cluster.embedded:
                        starts = self._refine(src.topic, starts, since_ms, timeout)
                for found in starts:
                    if found.error is not None:
                        raise BrokerError(f"seeking {found.topic}[{found.partition}] by time: {found.error}")
                    # offset -1: nothing at or after `since` yet, so start at the end
                    offset = OFFSET_END if src.since is not None and found.offset < 0 else found.offset
                    assignment.append(TopicPartition(src.topic, found.partition, offset))
                    self._pending.add((src.topic, found.partition))
        except KafkaException as exc:
            self._consumer.close()
            raise BrokerError(f"Kafka at {cluster.bootstrap}: {_short(exc)}") from None
        except BaseException:
            self._consumer.close()
            raise
        self._consumer.assign(assignment)

    def _refine(self, topic: str, starts: list[Any], target_ms: int, timeout: float) -> list[Any]:
        """Narrow time-seek lower bounds by bisecting on record timestamps (embedded broker only).

        tansu answers ``offsets_for_times`` from the time it *stored* each batch, not from the records'
        timestamps, so for records written with older timestamps (an import, a backlog, a benchmark) its
        answer can be offset 0. Record timestamps within a partition are nearly monotonic (the callers'
        slack covers producers' clock skew), so each partition is bisected between that lower bound and
        the last batch's base offset, all partitions in parallel, one fetch per round. Rounds: the lower
        bound (already late enough? done), the upper end (still too early? start there), then halves
        until fewer than ``BISECT_SPAN`` records remain (the reader skips those).
        """
        from confluent_kafka import TopicPartition

        lo: dict[int, int] = {}
        hi: dict[int, int] = {}
        for tp in starts:
            if tp.error is not None or tp.offset < 0:
                continue
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=timeout
            )
            if high - 1 > tp.offset + BISECT_SPAN:
                lo[tp.partition], hi[tp.partition] = tp.offset, high - 1
        deadline = time.monotonic() + timeout
        lo_ms: dict[int, int] = {}
        hi_ms: dict[int, int] = {}
        if hi:
            for p, (_off, ms) in self._probe(topic, dict(lo), deadline).items():
                if ms >= target_ms:
                    del hi[p]  # the lower bound is already late enough
                else:
                    lo_ms[p] = ms
        if hi:
            for p, (off, ms) in self._probe(topic, dict(hi), deadline).items():
                if ms < target_ms:
                    lo[p] = off  # even the last batch is older: read from there
                    del hi[p]
                else:
                    hi_ms[p] = ms
        hi = {p: o for p, o in hi.items() if p in lo_ms and p in hi_ms}
        step = dict.fromkeys(hi, 0)
        landed: dict[int, str] = {}
        while True:
            probes: dict[int, int] = {}
            for p in hi:
                span = hi[p] - lo[p]
                if span <= BISECT_SPAN:
                    continue
                kind = step[p] % 3
                if kind == 0 and hi_ms[p] > lo_ms[p]:
                    # interpolate: record timestamps grow roughly evenly
                    frac = (target_ms - lo_ms[p]) / (hi_ms[p] - lo_ms[p])
                    guess = lo[p] + int(frac * span)
                elif kind == 1 and p in landed:
                    # bracket: a short step past the interpolated probe, to close the span at once
                    half = BISECT_SPAN // 2
                    guess = lo[p] + half if landed[p] == "lo" else hi[p] - half
                else:
                    guess = (lo[p] + hi[p]) // 2  # bisect: a bounded worst case
                probes[p] = min(max(guess, lo[p] + 1), hi[p] - 1)
                step[p] += 1
            if not probes:
                break
            seen = self._probe(topic, probes, deadline)
            if len(seen) < len(probes):
                break  # a slow broker: keep the bounds found so far
            for p, (off, ms) in seen.items():
                if off >= hi[p]:
                    hi[p] = probes[p]  # nothing between the probe and hi: narrow anyway
                    landed[p] = "hi"
                elif ms < target_ms:
                    lo[p], lo_ms[p] = off, ms
                    landed[p] = "lo"
                else:
                    hi[p], hi_ms[p] = off, ms
                    landed[p] = "hi"
        self._consumer.unassign()
        return [TopicPartition(topic, tp.partition, lo.get(tp.partition, tp.offset)) for tp in starts]

    def _probe(self, topic: str, offsets: dict[int, int], deadline: float) -> dict[int, tuple[int, int]]:
        """(offset, timestamp ms) of the first record at or after each partition's offset; one fetch round.
        A partition whose offset is past its end reads as newer than anything."""
        from confluent_kafka import KafkaError, TopicPartition

        self._consumer.unassign()  # drop the previous round's fetch positions and queued records
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
        seen: dict[int, tuple[int, int]] = {}
        round_end = min(deadline, time.monotonic() + 5.0)
        while len(seen) < len(offsets) and time.monotonic() < round_end:
            for msg in self._consumer.consume(500, 0.05):
                p = msg.partition() or 0
                if p not in offsets or p in seen:
                    continue
                off = msg.offset() or 0
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and off >= offsets[p]:
                        seen[p] = (off, 1 << 62)
                    continue
                if off >= offsets[p]:
                    ttype, ms = msg.timestamp()
                    seen[p] = (off, ms if ttype != 0 else 1 << 62)
        return seen

    @staticmethod
    def into_view(
        view: FleetView,
    ) -> RecordSink:
        def feed(kind: TopicKind, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
            if not view.add_raw(kind, key, value, ts):
                rlog.warning(
                    "bad-" + kind, "skipped a %s record that breaks the contract: %s", kind, view.last_error
                )

        return feed

    @property
    def caught_up(self) -> bool:
        """Every partition reached its end (or its ``until``) at least once."""
        return not self._pending

    def poll(self, timeout: float = 0.2, max_records: int = 5000) -> int:
        """Read what is there (waiting up to ``timeout``); feed it; return how many records were fed."""
        from confluent_kafka import KafkaError, KafkaException

        try:
            msgs = self._consumer.consume(max_records, timeout)
        except KafkaException as exc:
            raise BrokerError(f"reading from {self.cluster.bootstrap}: {_short(exc)}") from None
        fed = 0
        kinds, since, until, done = self._kinds, self._since_ms, self._until_ms, self._done
        contains, on_record = self.value_contains, self.on_record
        eof = KafkaError._PARTITION_EOF
        for msg in msgs:
            err = msg.error()
            topic: str = msg.topic() or ""
            if err is not None:
                if err.code() == eof:
                    self._pending.discard((topic, msg.partition() or 0))
                    continue
                if err.fatal() or err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                    raise BrokerError(f"reading {topic}: {err.str()}")
                rlog.warning("consume-" + topic, "reading %s: %s", topic, err.str())
                continue
            ttype, ms = msg.timestamp()
            ts: datetime | None = None
            if ttype != 0:  # without a timestamp a record is never skipped by time
                if topic in since and ms < since[topic]:
                    continue  # offsets_for_times is only a lower bound on the embedded broker
                if topic in until:
                    tp = (topic, msg.partition() or 0)
                    if tp in done:
                        continue
                    if ms > until[topic]:
                        done.add(tp)
                        self._pending.discard(tp)
                        continue
                ts = datetime.fromtimestamp(ms / 1000.0, UTC)
            value = msg.value()
            if contains is not None and (value is None or contains not in value):
                continue
            on_record(kinds[topic], msg.key(), value, ts)
            fed += 1
        if msgs:
            self.records += len(msgs)
            if self.progress is not None:
                self.progress(",".join(self._kinds.values()), self.records)
        return fed

    def catch_up(self, timeout: float = 120.0) -> int:
        """Poll until every partition reached its end; raise :class:`BrokerError` after ``timeout``."""
        deadline = time.monotonic() + timeout
        fed = 0
        while self._pending:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading did not reach the end of the topics within {timeout:.0f}s")
            fed += self.poll(0.2)
        return fed

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ CLI answers


def load_view(
    cluster: Cluster,
    now: datetime,
    *,
    reports_window: timedelta = timedelta(hours=1),
    progress: Progress | None = None,
    timeout: float = 120.0,
    max_lookback: timedelta = timedelta(days=7),
) -> FleetView:
    """The fleet's state now: all of ``bans`` and the last ``reports_window`` of ``reports``.

    An enforcer with more bans than its heartbeat lists (``applied_total``) is known completely only
    from its reports since it started: when a live one started before the window, ``reports`` is read
    again from its ``started_at`` (bounded by ``max_lookback``), so coverage stays exact.
    """
    since = now - reports_window
    view = _read_view(cluster, since, progress, timeout)
    earliest = since
    for enf in view.live_enforcers(now):
        hb = enf.heartbeat
        if hb is None or hb.applied_total is None or hb.applied_total <= len(hb.applied):
            continue
        if hb.started_at is not None and hb.started_at < earliest:
            earliest = max(hb.started_at - timedelta(seconds=5), now - max_lookback)
    if earliest < since:
        log.info("reading reports from %s for enforcers with truncated heartbeats", earliest.isoformat())
        view = _read_view(cluster, earliest, progress, timeout)
    return view


def _read_view(cluster: Cluster, since: datetime, progress: Progress | None, timeout: float) -> FleetView:
    view = FleetView()
    t = cluster.topics
    sources = [Source("bans", t.bans), Source("reports", t.reports, since=since)]
    with TopicReader(cluster, sources, TopicReader.into_view(view), progress=progress) as r:
        r.catch_up(timeout)
    return view


def _collect_decisions(out: list[Decision], bad: list[int]) -> RecordSink:
    def feed(kind: TopicKind, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        try:
            out.append(decode_decision(value))
        except ContractError as exc:
            bad[0] += 1
            rlog.warning("bad-decision", "skipped a decisions record that breaks the contract: %s", exc)

    return feed


def read_decisions(
    cluster: Cluster,
    since: datetime | None,
    until: datetime | None,
    *,
    slack: timedelta = SEEK_SLACK,
    partitions: tuple[int, ...] | None = None,
    value_contains: bytes | None = None,
    progress: Progress | None = None,
    timeout: float = 300.0,
) -> list[Decision]:
    """Decisions whose records were written in ``[since - slack, until + slack]`` (seek by time, not a
    scan from the start). Callers filter on the decision's own ``at`` (:func:`queries.decisions_in_range`)."""
    out: list[Decision] = []
    bad = [0]
    src = Source(
        "decisions",
        cluster.topics.decisions,
        since=since - slack if since else None,
        until=until + slack if until else None,
        partitions=partitions,
    )
    with TopicReader(
        cluster, [src], _collect_decisions(out, bad), progress=progress, value_contains=value_contains
    ) as r:
        r.catch_up(timeout)
    return out


def partition_count(cluster: Cluster, topic: str, timeout: float = 10.0) -> int:
    from confluent_kafka import Consumer, KafkaException

    c = Consumer({**consumer_config(cluster), "log_level": 0})
    try:
        meta = c.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"Kafka at {cluster.bootstrap}: {_short(exc)}") from None
    finally:
        c.close()
    tmeta = meta.topics.get(topic)
    return len(tmeta.partitions) if tmeta is not None and tmeta.error is None else 0


@dataclass
class TargetRecords:
    decisions: list[Decision]
    reports: list[Report]
    bans: list[BanState]


def read_target(
    cluster: Cluster,
    target: str,
    now: datetime,
    *,
    jails: Iterable[str] = (),
    reports_window: timedelta = timedelta(hours=24),
    progress: Progress | None = None,
) -> TargetRecords:
    """Everything about one target: its decisions (one partition: keyed by the target), its ``bans``
    values for the given jails and the jails in its decisions, and enforcer reports naming it since its
    first decision (at least ``reports_window`` back)."""
    t = normalize_target(target)
    topics = cluster.topics
    n = partition_count(cluster, topics.decisions)
    decisions = (
        read_decisions(
            cluster,
            None,
            None,
            partitions=(partition_for(t, n),),
            value_contains=t.encode(),
            progress=progress,
        )
        if n
        else []
    )
    decisions = [d for d in decisions if d.ip == t]
    jail_names = sorted({*jails, *(d.jail for d in decisions)})
    bans: dict[str, BanState | None] = {}
    nb = partition_count(cluster, topics.bans)
    if nb and jail_names:
        keys = {ban_key(j, t) for j in jail_names}

        def feed_ban(kind: TopicKind, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
            if key is None:
                return
            try:
                jail, ip = split_ban_key(key)
                k = ban_key(jail, ip)
                if k in keys:
                    bans[k] = None if value is None else decode_ban(value)
            except ContractError as exc:
                rlog.warning("bad-ban", "skipped a bans record that breaks the contract: %s", exc)

        parts = tuple(sorted({partition_for(k, nb) for k in keys}))
        with TopicReader(cluster, [Source("bans", topics.bans, partitions=parts)], feed_ban) as r:
            r.catch_up()
    since = now - reports_window
    if decisions:
        since = min(since, *(d.at for d in decisions))
    reports: list[Report] = []

    def feed_report(kind: TopicKind, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        try:
            rec = decode_report(value)
        except ContractError as exc:
            rlog.warning("bad-report", "skipped a reports record that breaks the contract: %s", exc)
            return
        if isinstance(rec, Report) and rec.ip == t:
            reports.append(rec)

    src = Source("reports", topics.reports, since=since - SEEK_SLACK)
    with TopicReader(cluster, [src], feed_report, progress=progress, value_contains=t.encode()) as r:
        r.catch_up()
    return TargetRecords(decisions, reports, [b for b in bans.values() if b is not None])


def load_trail(
    cluster: Cluster,
    view: FleetView,
    now: datetime,
    window: timedelta,
    *,
    progress: Progress | None = None,
) -> list[Decision]:
    """The decisions ``audit verify`` needs: from the oldest ban the view refers to (or ``window`` back);
    the whole topic when a referenced decision is not found that way."""
    needed_ids = set(view.referenced)
    needed_keys: set[str] = {k for (_h, k) in view.unreferenced_applied}
    for e in view.enforcers.values():
        needed_keys.update(k for k, info in e.applied.items() if info.decision_id is None)
    starts = [now - window]
    for entry in view.bans.values():
        starts.append(entry.state.at)
    decisions = read_decisions(cluster, min(starts), None, progress=progress)
    have_ids = {d.id for d in decisions}
    have_keys = {ban_key(d.jail, d.ip) for d in decisions if d.action == "ban"}
    if needed_ids - have_ids or needed_keys - have_keys:
        log.info("some referenced decisions are older than the first seek: reading all decisions")
        decisions = read_decisions(cluster, None, None, progress=progress)
    return decisions


def iter_all(cluster: Cluster, kind: TopicKind, topic: str) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of a topic from the beginning (small topics, tests)."""
    out: list[tuple[bytes | None, bytes | None]] = []
    with TopicReader(
        cluster, [Source(kind, topic)], lambda _k, key, value, _ts: out.append((key, value))
    ) as r:
        r.catch_up()
    yield from out
