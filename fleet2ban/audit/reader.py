"""The thin Kafka side of the audit layer: connect, seek by time, read to the end, follow live.

Everything here hands decoded records to the pure side (:class:`FleetView`, :mod:`.queries`). One
confluent-kafka consumer without a group, every partition assigned; the end of a partition is detected
by partition EOF (the embedded broker's end offsets are wrong). Time seeks use ``offsets_for_times`` as a
*lower bound* and skip records older than the target (the embedded broker answers per batch).

- :func:`connect`: resolve the cluster, failing with one :class:`BrokerError` within ``timeout`` seconds.
- :class:`TopicReader`: the cursor over one or more topics; :meth:`TopicReader.catch_up` reads to the
  end, :meth:`TopicReader.poll` follows live (what the web console runs in its loop).
- :func:`load_view`, :func:`load_coverage_view`, :func:`read_decisions`, :func:`read_target`,
  :func:`load_trail`: what the CLI asks. :func:`read_tail` reads a topic's end backwards.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet2ban.audit import digests, seek
from fleet2ban.audit.partition import partition_for
from fleet2ban.audit.view import FleetView, TopicKind
from fleet2ban.contract import (
    BanState,
    ContractError,
    Decision,
    Heartbeat,
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


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic garbage collection while a read folds records: the fold only adds objects (100,000s of
    decoded records, kept), and each collection walks all of them again (it more than doubled a
    100k-record read). At the end they are frozen (:func:`gc.freeze`), or the first collections after
    it would walk them all anyway; the records hold no reference cycles, so nothing is kept alive
    that reference counting would not free."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.enable()


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
        track_positions: bool = False,
    ) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

        self.cluster = cluster
        self.on_record = on_record
        self.track_positions = track_positions
        self.position: tuple[int, int] = (0, 0)
        """With ``track_positions``: (partition, offset) of the record being fed to ``on_record``."""
        self.progress = progress
        self.value_contains = value_contains
        self.records = 0
        sources = list(sources)
        extra: dict[str, Any] = {}
        if cluster.embedded and any(src.since is not None for src in sources):
            # time seeks probe (assign, fetch, unassign) several times: without this, a partition whose
            # queue was full when it was dropped waits a second before its next fetch
            extra["fetch.queue.backoff.ms"] = 1
        self._consumer = Consumer({**consumer_config(cluster), "log_level": 0, **extra})
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
        """Narrow time-seek lower bounds by searching record timestamps (embedded broker only).

        tansu answers ``offsets_for_times`` from the time it *stored* each batch, not from the records'
        timestamps, so for records written with older timestamps (an import, a backlog, a benchmark) its
        answer can be offset 0. :func:`seek.search` narrows each partition between that lower bound and
        the end by interpolation (bisection when a guess does not halve the bracket), all partitions in
        one fetch per round, until fewer than ``BISECT_SPAN`` records remain (the reader skips those).
        """
        from confluent_kafka import TopicPartition

        bounds: dict[int, tuple[int, int]] = {}
        for tp in starts:
            if tp.error is not None or tp.offset < 0:
                continue
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=timeout
            )
            if high > tp.offset + BISECT_SPAN:
                bounds[tp.partition] = (tp.offset, high)
        if not bounds:
            return starts
        deadline = time.monotonic() + timeout
        found = seek.search(
            bounds,
            target_ms,
            int(time.time() * 1000),
            lambda offsets: _probe(self._consumer, topic, offsets, deadline),
            span=BISECT_SPAN,
            window=PROBE_RECORDS,
        )
        return [TopicPartition(topic, tp.partition, found.get(tp.partition, tp.offset)) for tp in starts]

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
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        try:
            msgs = self._consumer.consume(max_records, timeout)
        except KafkaException as exc:
            raise BrokerError(f"reading from {self.cluster.bootstrap}: {_short(exc)}") from None
        fed = 0
        finished: list[tuple[str, int]] = []
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
                        finished.append(tp)
                        continue
                ts = datetime.fromtimestamp(ms / 1000.0, UTC)
            value = msg.value()
            if contains is not None and (value is None or contains not in value):
                continue
            if self.track_positions:
                self.position = (msg.partition() or 0, msg.offset() or 0)
            on_record(kinds[topic], msg.key(), value, ts)
            fed += 1
        if finished:
            # past ``until``: drop the partition, and with it the records librdkafka prefetched after it
            self._consumer.incremental_unassign([TopicPartition(t, p) for t, p in finished])
        if msgs:
            self.records += len(msgs)
            if self.progress is not None:
                self.progress(",".join(self._kinds.values()), self.records)
        return fed

    def catch_up(self, timeout: float = 120.0) -> int:
        """Poll until every partition reached its end; raise :class:`BrokerError` after ``timeout``."""
        deadline = time.monotonic() + timeout
        fed = 0
        with _no_gc():
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


PROBE_RECORDS = 1000
"""A probe keeps this many records per partition (they narrow the bracket too), then drops the rest."""


def _probe(consumer: Any, topic: str, offsets: dict[int, int], deadline: float) -> dict[int, seek.Seen]:
    """(offset, timestamp ms) of up to ``PROBE_RECORDS`` records at and after each partition's offset;
    one fetch round for all partitions. Past its end a partition reads as newer than anything.

    A fetch brings whole batches (thousands of records, and librdkafka prefetches more): a partition is
    unassigned as soon as it has answered, which drops its queued records before Python sees them."""
    from confluent_kafka import KafkaError, TopicPartition

    consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
    seen: dict[int, seek.Seen] = {}
    done: set[int] = set()
    round_end = min(deadline, time.monotonic() + 5.0)
    eof = KafkaError._PARTITION_EOF
    try:
        while len(done) < len(offsets) and time.monotonic() < round_end:
            finished: list[int] = []
            for msg in consumer.consume(500, 0.05):
                p = msg.partition() or 0
                start = offsets.get(p)
                off = msg.offset() or 0
                if start is None or p in done or off < start:
                    continue
                got = seen.setdefault(p, [])
                err = msg.error()
                if err is not None:
                    if err.code() == eof:
                        got.append((off, seek.NEWEST))
                        done.add(p)
                        finished.append(p)
                    continue
                ttype, ms = msg.timestamp()
                got.append((off, ms if ttype != 0 and ms is not None and ms >= 0 else seek.NEWEST))
                if len(got) >= PROBE_RECORDS:
                    done.add(p)
                    finished.append(p)
            if finished:
                consumer.incremental_unassign([TopicPartition(topic, p) for p in finished])
    finally:
        consumer.unassign()  # drop this round's fetch positions and queued records
    return seen


# ------------------------------------------------------------------------------------ CLI answers


def load_view(
    cluster: Cluster,
    now: datetime,
    *,
    reports_window: timedelta = timedelta(hours=1),
    progress: Progress | None = None,
    timeout: float = 120.0,
    max_lookback: timedelta = timedelta(days=7),
    bans: FleetView | None = None,
) -> FleetView:
    """The fleet's state now: all of ``bans`` and the last ``reports_window`` of ``reports``.

    An enforcer with more bans than its heartbeat lists (``applied_total``) is known completely only
    from its reports since it started: when a live one started before the window, ``reports`` is read
    again from its ``started_at`` (bounded by ``max_lookback``), so coverage stays exact.
    ``bans``: a view that already holds all of ``bans`` (only ``reports`` is read then).
    """
    since = now - reports_window
    view = _read_view(cluster, since, progress, timeout, bans)
    earliest = since
    for enf in view.live_enforcers(now):
        hb = enf.heartbeat
        if hb is None or hb.applied_total is None or hb.applied_total <= len(hb.applied):
            continue
        if hb.started_at is not None and hb.started_at < earliest:
            earliest = max(hb.started_at - timedelta(seconds=5), now - max_lookback)
    if earliest < since:
        log.info("reading reports from %s for enforcers with truncated heartbeats", earliest.isoformat())
        view = _read_view(cluster, earliest, progress, timeout, bans)
    return view


def _read_view(
    cluster: Cluster,
    since: datetime,
    progress: Progress | None,
    timeout: float,
    bans: FleetView | None = None,
) -> FleetView:
    view = FleetView()
    t = cluster.topics
    sources = [Source("reports", t.reports, since=since)]
    if bans is None:
        sources.insert(0, Source("bans", t.bans))
    else:
        view.bans, view.lifted, view.ban_history = dict(bans.bans), dict(bans.lifted), dict(bans.ban_history)
        view.bans_seen, view.bad_records = bans.bans_seen, bans.bad_records
    with TopicReader(cluster, sources, TopicReader.into_view(view), progress=progress) as r:
        r.catch_up(timeout)
    return view


TAIL_CHUNK = 2000
"""Records per partition in the first backward chunk of a tail read (each further chunk doubles)."""

TAIL_SKEW = timedelta(seconds=60)
"""A tail read goes this much further back than the heartbeats need (clocks, producer delays)."""


@dataclass(frozen=True, slots=True)
class TailRecord:
    partition: int
    offset: int
    ts_ms: int | None
    key: bytes | None
    value: bytes | None


def read_tail(
    cluster: Cluster,
    topic: str,
    back_to: Callable[[list[TailRecord]], int],
    *,
    chunk: int = TAIL_CHUNK,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> list[TailRecord]:
    """The last records of every partition of ``topic``, read backwards in chunks (all partitions in one
    fetch round per chunk) until a partition's oldest record read is older than ``back_to(records so
    far)`` (epoch ms) or its start is reached. Returns them by partition, then offset."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer({**consumer_config(cluster), "log_level": 0, "fetch.queue.backoff.ms": 1})
    got: dict[int, list[TailRecord]] = {}
    try:
        meta = consumer.list_topics(topic, timeout=min(timeout, 10.0))
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            return []
        low: dict[int, int] = {}
        start: dict[int, int] = {}
        end: dict[int, int | None] = {}
        for p in sorted(tmeta.partitions):
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=min(timeout, 10.0))
            low[p] = max(lo, 0)
            start[p] = max(low[p], hi - chunk)  # the embedded broker's high is short: read to EOF first
            end[p] = None
            got[p] = []
        deadline = time.monotonic() + timeout
        active = set(got)
        size = chunk
        read = 0
        eof = KafkaError._PARTITION_EOF
        while active:
            consumer.assign([TopicPartition(topic, p, start[p]) for p in sorted(active)])
            fresh: dict[int, list[TailRecord]] = {p: [] for p in active}
            pending = set(active)
            while pending:
                if time.monotonic() > deadline:
                    raise BrokerError(f"reading the end of {topic} took longer than {timeout:.0f}s")
                finished: list[int] = []
                for msg in consumer.consume(5000, 0.1):
                    p = msg.partition() or 0
                    if p not in pending:
                        continue
                    off = msg.offset() or 0
                    err = msg.error()
                    stop = end[p]
                    if err is not None:
                        if err.code() == eof:
                            pending.discard(p)
                            finished.append(p)
                        elif err.fatal() or err.code() in (
                            KafkaError._TRANSPORT,
                            KafkaError._ALL_BROKERS_DOWN,
                        ):
                            raise BrokerError(f"reading {topic}: {err.str()}")
                        continue
                    if stop is not None and off >= stop:
                        pending.discard(p)
                        finished.append(p)
                        continue
                    if off < start[p]:
                        continue
                    ttype, ms = msg.timestamp()
                    fresh[p].append(TailRecord(p, off, ms if ttype != 0 else None, msg.key(), msg.value()))
                    read += 1
                if finished:
                    consumer.incremental_unassign([TopicPartition(topic, p) for p in finished])
                if progress is not None:
                    progress(topic, read)
            consumer.unassign()
            for p, recs in fresh.items():
                got[p] = recs + got[p]
            threshold = back_to([r for p in sorted(got) for r in got[p]])
            size *= 2
            for p in list(active):
                oldest = got[p][0].ts_ms if got[p] else None
                if start[p] <= low[p] or (oldest is not None and oldest < threshold):
                    active.discard(p)
                else:
                    end[p] = start[p]
                    start[p] = max(low[p], start[p] - size)
    except KafkaException as exc:
        raise BrokerError(f"Kafka at {cluster.bootstrap}: {_short(exc)}") from None
    finally:
        consumer.close()
    return [r for p in sorted(got) for r in got[p]]


def load_coverage_view(
    cluster: Cluster,
    now: datetime,
    *,
    reports_window: timedelta = timedelta(hours=1),
    heartbeat_interval_s: float = 5.0,
    progress: Progress | None = None,
    timeout: float = 120.0,
    max_lookback: timedelta = timedelta(days=7),
) -> FleetView:
    """What ``bans list`` needs: all of ``bans`` and every live enforcer's coverage, with as little of
    ``reports`` as it can.

    ``reports`` is read backwards from its end until every live enforcer's latest heartbeat is found
    (heartbeats are periodic: the read goes back the silence bound of ``heartbeat_interval_s`` or of the
    heartbeats found, whichever is longer, plus :data:`TAIL_SKEW`; never past ``reports_window``). When
    every live enforcer's ``applied_digest`` matches the bans in force that :mod:`.digests` derives from
    ``bans`` before its ``bans_offsets``, its coverage is that set plus its reports after the heartbeat.
    Otherwise (a host missing a ban, an older enforcer) this is :func:`load_view`: the per-ban reports,
    slower, as exact. The view answers :func:`.queries.bans_in_force`; ``audit verify`` and ``status``
    need :func:`load_view`.
    """
    view = FleetView()
    floor_ms = int((now - reports_window).timestamp() * 1000)
    now_ms = int(now.timestamp() * 1000)
    base_s = view.silence_bound(Heartbeat(host="", role="enforcer", at=now, interval_s=heartbeat_interval_s))
    decoded: dict[tuple[int, int], Report | Heartbeat | None] = {}

    def decode(rec: TailRecord) -> Report | Heartbeat | None:
        pos = (rec.partition, rec.offset)
        if pos not in decoded:
            try:
                decoded[pos] = decode_report(rec.value)
            except ContractError as exc:
                view.bad_records += 1
                view.last_error = str(exc)
                decoded[pos] = None
        return decoded[pos]

    def back_to(records: list[TailRecord]) -> int:
        need = base_s
        for rec in records:
            if rec.value is not None and b'"heartbeat"' in rec.value:
                hb = decode(rec)
                if isinstance(hb, Heartbeat):
                    need = max(need, view.silence_bound(hb))
        return max(floor_ms, now_ms - int((need + TAIL_SKEW.total_seconds()) * 1000))

    tail = read_tail(cluster, cluster.topics.reports, back_to, timeout=timeout, progress=progress)
    latest: dict[tuple[str, str, str], Heartbeat] = {}
    enforcer_hb: dict[str, tuple[Heartbeat, int, int]] = {}
    for rec in tail:
        if rec.ts_ms is not None and rec.ts_ms < floor_ms:
            continue
        if rec.value is None or b'"heartbeat"' not in rec.value:
            continue
        r = decode(rec)
        if not isinstance(r, Heartbeat):
            continue
        cid = (r.role, r.host, r.instance)
        if cid not in latest or latest[cid].at <= r.at:
            latest[cid] = r
        if r.role == "enforcer":
            prev = enforcer_hb.get(r.host)
            if prev is None or prev[0].at <= r.at:
                enforcer_hb[r.host] = (r, rec.partition, rec.offset)
    live = {h: e for h, e in enforcer_hb.items() if not view.is_silent(e[0], now)}
    unchecked = sorted(h for h, (hb, _p, _o) in live.items() if not digests.can_check(hb))

    # all of bans, remembering what each live enforcer's prefix of it held
    tracker = digests.PrefixTracker({h: dict(hb.bans_offsets or {}) for h, (hb, _p, _o) in live.items()})
    sources = [Source("bans", cluster.topics.bans)]
    with TopicReader(
        cluster, sources, lambda *_a: None, progress=progress, track_positions=bool(live)
    ) as reader:
        reader.on_record = _bans_with_prefixes(view, reader, tracker) if live else TopicReader.into_view(view)
        reader.catch_up(timeout)

    def from_reports() -> FleetView:
        """The per-report answer (slower, always right), reusing the bans already read."""
        return load_view(
            cluster,
            now,
            reports_window=reports_window,
            progress=progress,
            timeout=timeout,
            max_lookback=max_lookback,
            bans=view,
        )

    if unchecked:
        log.info("enforcers without applied digests (%s): reading their reports", ", ".join(unchecked))
        return from_reports()
    memo: digests.Memo = {}
    covered: dict[str, list[str]] = {}
    for host, (hb, _p, _o) in sorted(live.items()):
        digest, keys = digests.in_force_digest(view.bans, tracker.overrides[host], hb.at, memo)
        if digest != hb.applied_digest:
            log.info("enforcer %s does not have every ban in force applied: reading the reports", host)
            return from_reports()
        covered[host] = keys
    for hb in latest.values():
        view.add_report(hb)
    for host, (hb, hb_p, hb_off) in sorted(live.items()):
        after: list[Report] = []
        for rec in tail:
            if rec.key is not None and rec.key != host.encode():
                continue  # reports are keyed by their host
            if rec.partition == hb_p and rec.offset <= hb_off:
                continue
            r = decode(rec)
            if not isinstance(r, Report) or r.host != host:
                continue
            if (rec.partition == hb_p and rec.offset > hb_off) or (rec.partition != hb_p and r.at > hb.at):
                after.append(r)
        digests.cover(view, hb, covered[host], after)
    return view


def _bans_with_prefixes(view: FleetView, reader: TopicReader, tracker: digests.PrefixTracker) -> RecordSink:
    feed = TopicReader.into_view(view)

    def fold(kind: TopicKind, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        p, off = reader.position
        if key is not None and tracker.past(p, off):
            try:
                k = ban_key(*split_ban_key(key))
            except ContractError:
                k = None
            if k is not None:
                tracker.before(p, off, k, view.bans.get(k))
        feed(kind, key, value, ts)

    return fold


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
