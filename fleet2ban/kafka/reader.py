"""The one reader of Kafka topics without a consumer group.

Every partition of each source is assigned (no group, no committed offsets), from the beginning, from an
offset, or from a time (``offsets_for_times``); the end of a partition is its partition EOF. On top of it:

- :meth:`TopicReader.catch_up`: read every partition to its end (the audit views, rebuilds, enforcers);
- :meth:`TopicReader.poll`: follow live after that (the console, the enforcer);
- :func:`read_to_end`: the records of a topic up to its end, as a list (small topics, tools, tests);
- :func:`read_tail`: the last records of a topic, read backwards in growing chunks;
- :func:`partition_count`, :func:`end_offsets`.

Errors are :class:`fleet2ban.exceptions.BrokerError` with one line that says what failed; a topic that
does not exist reads as empty (with one rate-limited warning).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from fleet2ban.exceptions import BrokerError
from fleet2ban.kafka.config import Cluster, _short, consumer_config
from fleet2ban.logs import RateLimitedLog

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

RecordHeaders = list[tuple[str, bytes | None]] | None
"""A record's headers as confluent-kafka gives them (None: none)."""
RecordSink = Callable[[str, bytes | None, bytes | None, datetime | None], None]
"""Gets each record: (the source's kind, key, value, the record's timestamp or None)."""

Progress = Callable[[str, int], None]
"""Called now and then during long reads with (topics, records read so far)."""


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
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


def record_time(msg: Any) -> datetime | None:
    """The record's timestamp (create or log-append time) as UTC, if it has one."""
    ttype, ms = msg.timestamp()
    if ttype == 0 or ms is None or ms < 0:  # TIMESTAMP_NOT_AVAILABLE
        return None
    return datetime.fromtimestamp(ms / 1000.0, UTC)


@dataclass(frozen=True)
class Source:
    """One topic to read: from where (``since``: a time; ``start``: offsets per partition; neither: the
    beginning), up to where (``until``: a time; ``stop``: offsets per partition, exclusive)."""

    kind: str
    topic: str
    since: datetime | None = None
    until: datetime | None = None
    partitions: tuple[int, ...] | None = None
    """Only these partitions (None: all)."""
    start: dict[int, int] | None = None
    stop: dict[int, int] | None = None


def _offsets_for_time(
    consumer: Any, topic: str, parts: list[int], since_ms: int, timeout: float
) -> dict[int, int]:
    """The first offset of each partition whose record time is at or after ``since_ms``.

    The ends are asked first: a partition with nothing at or after ``since_ms`` (Kafka answers -1)
    starts at the end it had *before* the question, so a record written meanwhile is read, not skipped.
    """
    from confluent_kafka import TopicPartition

    ends = {}
    for p in parts:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        ends[p] = int(high)
    found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in parts], timeout=timeout)
    starts: dict[int, int] = {}
    for tp in found:
        if tp.error is not None:
            raise BrokerError(f"seeking {tp.topic}[{tp.partition}] by time: {tp.error}")
        starts[tp.partition] = tp.offset if tp.offset >= 0 else ends[tp.partition]
    return starts


def offsets_for_time(
    cluster: Cluster, topic: str, partitions: list[int], since: datetime, timeout: float = 10.0
) -> dict[int, int]:
    """Where each of ``partitions`` of ``topic`` reaches record time ``since`` (its end if not yet)."""
    from confluent_kafka import Consumer, KafkaException

    c = Consumer({**consumer_config(cluster), "log_level": 0})
    try:
        return _offsets_for_time(c, topic, partitions, int(since.timestamp() * 1000), timeout)
    except KafkaException as exc:
        raise BrokerError(f"Kafka at {cluster.bootstrap}: {_short(exc)}") from None
    finally:
        c.close()


def _raise_for(topic: str, err: Any) -> None:
    """Raise on errors a reader cannot go on after; the rest are warned about (rate-limited)."""
    from confluent_kafka import KafkaError

    if err.fatal() or err.code() in (
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError._AUTHENTICATION,
    ):
        raise BrokerError(f"reading {topic}: {err.str()}")
    rlog.warning("consume-" + topic, "reading %s: %s", topic, err.str())


class TopicReader:
    """A no-group consumer over some topics that feeds each record to ``on_record``.

    Use as a context manager (closes the consumer). ``position`` is (partition, offset) of the record
    being fed when ``track_positions`` is set.
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
        track_headers: bool = False,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        from confluent_kafka import Consumer, KafkaException

        self.cluster = cluster
        self.on_record = on_record
        self.track_positions = track_positions
        self.position: tuple[int, int] = (0, 0)
        self.track_headers = track_headers
        self.headers: RecordHeaders = None
        """The headers of the record being fed, when ``track_headers`` is set (host signatures:
        :mod:`fleet2ban.identity`)."""
        self.progress = progress
        self.value_contains = value_contains
        self.records = 0
        self._consumer = Consumer({**consumer_config(cluster), "log_level": 0, **(consumer_overrides or {})})
        self._kinds: dict[str, str] = {}
        self._since_ms: dict[str, int] = {}
        self._until_ms: dict[str, int] = {}
        self._stop: dict[tuple[str, int], int] = {}
        self._done: set[tuple[str, int]] = set()
        self._pending: set[tuple[str, int]] = set()
        self.partitions: dict[str, list[int]] = {}
        assignment: list[Any] = []
        try:
            for src in sources:
                assignment += self._plan(src, timeout)
        except KafkaException as exc:
            self._consumer.close()
            raise BrokerError(f"Kafka at {cluster.bootstrap}: {_short(exc)}") from None
        except BaseException:
            self._consumer.close()
            raise
        self._consumer.assign(assignment)

    def _plan(self, src: Source, timeout: float) -> list[Any]:
        """Where each partition of ``src`` starts; partitions with nothing to read are not assigned."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self._kinds[src.topic] = src.kind
        parts = self._partitions(src.topic, timeout)
        if src.partitions is not None:
            parts = [p for p in parts if p in src.partitions]
        self.partitions[src.topic] = parts
        if src.until is not None:
            self._until_ms[src.topic] = int(src.until.timestamp() * 1000)
        if src.since is not None:
            since_ms = int(src.since.timestamp() * 1000)
            self._since_ms[src.topic] = since_ms
            starts = _offsets_for_time(self._consumer, src.topic, parts, since_ms, timeout)
        elif src.start is not None:
            starts = {p: src.start.get(p, OFFSET_BEGINNING) for p in parts}
        else:
            starts = dict.fromkeys(parts, OFFSET_BEGINNING)
        out = []
        for p, offset in starts.items():
            key = (src.topic, p)
            if src.stop is not None:
                stop = src.stop.get(p, 0)
                if stop <= max(offset, 0):
                    continue  # nothing before the stop offset
                self._stop[key] = stop
            out.append(TopicPartition(src.topic, p, offset))
            self._pending.add(key)
        return out

    def _partitions(self, topic: str, timeout: float) -> list[int]:
        from confluent_kafka import KafkaError

        meta = self._consumer.list_topics(topic, timeout=timeout)
        tmeta = meta.topics.get(topic)
        if (
            tmeta is not None
            and tmeta.error is not None
            and tmeta.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        ):
            raise BrokerError(f"not authorized to read topic {topic} (an ACL allowing Read/Describe on it)")
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            rlog.warning(
                "missing-" + topic,
                "topic %s does not exist (yet): read as empty (create it: fleet2ban topics create)",
                topic,
            )
            return []
        return sorted(tmeta.partitions)

    def end_offset(self, topic: str, partition: int, timeout: float = 10.0) -> int:
        from confluent_kafka import TopicPartition

        _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        return int(high)

    @property
    def caught_up(self) -> bool:
        """Every partition reached its end (or its ``until``/``stop``) at least once."""
        return not self._pending

    def poll(self, timeout: float = 0.2, max_records: int = 5000) -> int:
        """Read what is there (waiting up to ``timeout``); feed it; return how many records were fed."""
        msgs = self._fetch(timeout, max_records)
        fed = 0
        finished: list[tuple[str, int]] = []
        kinds, since, until, done, stops = self._kinds, self._since_ms, self._until_ms, self._done, self._stop
        contains, on_record = self.value_contains, self.on_record
        last_ms = -1  # the records of a batch share their millisecond: one datetime for each
        last_ts: datetime | None = None
        for msg in msgs:
            err = msg.error()
            topic: str = msg.topic() or ""
            tp = (topic, msg.partition() or 0)
            if err is not None:
                self._on_error(topic, tp, err)
                continue
            if tp in done:
                continue
            stop = stops.get(tp)
            offset = msg.offset() or 0
            if stop is not None and offset >= stop:
                self._finish(tp, finished)
                continue
            ttype, ms = msg.timestamp()
            ts: datetime | None = None
            if ttype != 0:  # without a timestamp a record is never skipped by time
                if topic in since and ms < since[topic]:
                    continue  # timestamps are not monotonic within a partition (producers' clocks)
                if topic in until and ms > until[topic]:
                    self._finish(tp, finished)
                    continue
                if ms != last_ms:
                    last_ms, last_ts = ms, datetime.fromtimestamp(ms / 1000.0, UTC)
                ts = last_ts
            value = msg.value()
            if contains is None or (value is not None and contains in value):
                if self.track_positions:
                    self.position = (tp[1], offset)
                if self.track_headers:
                    self.headers = cast(RecordHeaders, msg.headers())
                on_record(kinds[topic], msg.key(), value, ts)
                fed += 1
            if stop is not None and offset + 1 >= stop:
                self._finish(tp, finished)
        self._wrap_up(len(msgs), finished)
        return fed

    def _fetch(self, timeout: float, max_records: int) -> list[Any]:
        from confluent_kafka import KafkaException

        try:
            # poll() returns at the first record (consume() would wait for a full batch or the timeout);
            # then whatever the consumer already holds joins it, without waiting for more
            first = self._consumer.poll(timeout)
            if first is None:
                return []
            return [first, *self._consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
        except KafkaException as exc:
            raise BrokerError(f"reading from {self.cluster.bootstrap}: {_short(exc)}") from None

    def _on_error(self, topic: str, tp: tuple[str, int], err: Any) -> None:
        """A partition's end (it is caught up), or a typed error."""
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._PARTITION_EOF:
            self._pending.discard(tp)
        else:
            _raise_for(topic, err)

    def _finish(self, tp: tuple[str, int], finished: list[tuple[str, int]]) -> None:
        """``tp`` reached its ``until``/``stop``: nothing more is fed from it."""
        self._done.add(tp)
        self._pending.discard(tp)
        finished.append(tp)

    def _wrap_up(self, read: int, finished: list[tuple[str, int]]) -> None:
        from confluent_kafka import TopicPartition

        if finished:
            # past ``until``/``stop``: drop the partition, and with it what librdkafka prefetched after it
            self._consumer.incremental_unassign([TopicPartition(t, p) for t, p in finished])
        if read:
            self.records += read
            if self.progress is not None:
                self.progress(",".join(self._kinds), self.records)

    def catch_up(self, timeout: float = 120.0) -> int:
        """Poll until every partition reached its end; raise :class:`BrokerError` after ``timeout``."""
        deadline = time.monotonic() + timeout
        fed = 0
        with no_gc():
            while self._pending:
                if time.monotonic() > deadline:
                    raise BrokerError(f"reading did not reach the end of the topics within {timeout:.0f}s")
                fed += self.poll(0.2)
        return fed

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read of every assigned partition (0 where nothing was read yet)."""
        try:
            got = self._consumer.position(self._consumer.assignment())
        except Exception:
            return {}
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in got}

    def behind(self) -> int:
        """Records between the read positions and the (last known) ends of the assigned partitions."""
        from confluent_kafka import TopicPartition

        total = 0
        for (topic, p), offset in self.positions().items():
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            except Exception:
                continue
            if high is not None and high >= 0:
                total += max(0, high - offset)
        return total

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Record:
    """A record read by :func:`read_to_end` / :func:`read_tail`."""

    partition: int
    offset: int
    ts_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: RecordHeaders = None
    """Only when read with ``headers=True``."""

    def ts(self) -> datetime | None:
        return None if self.ts_ms is None else datetime.fromtimestamp(self.ts_ms / 1000.0, UTC)


def read_to_end(
    cluster: Cluster,
    topic: str,
    *,
    timeout: float = 30.0,
    since: datetime | None = None,
    start: dict[int, int] | None = None,
    stop: dict[int, int] | None = None,
    partitions: tuple[int, ...] | None = None,
    headers: bool = False,
) -> list[Record]:
    """Every record of ``topic`` (from the beginning, ``since`` or ``start``) up to its current end (or
    ``stop``), ordered by partition then offset (with their headers when ``headers``)."""
    out: list[Record] = []
    reader: TopicReader

    def keep(_kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        p, off = reader.position
        ms = None if ts is None else round(ts.timestamp() * 1000)
        out.append(Record(p, off, ms, key, value, reader.headers))

    src = Source(topic, topic, since=since, partitions=partitions, start=start, stop=stop)
    with TopicReader(
        cluster, [src], keep, timeout=min(timeout, 10.0), track_positions=True, track_headers=headers
    ) as reader:
        reader.catch_up(timeout)
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


def topic_partitions(cluster: Cluster, topic: str, timeout: float = 10.0) -> list[int]:
    """The partitions of ``topic`` ([] when it does not exist); :class:`BrokerError` when Kafka does not
    answer or the principal may not see the topic."""
    from confluent_kafka import Consumer, KafkaError, KafkaException

    c = Consumer({**consumer_config(cluster), "log_level": 0})
    try:
        meta = c.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"Kafka at {cluster.bootstrap} is unreachable: {_short(exc)}") from None
    finally:
        c.close()
    tmeta = meta.topics.get(topic)
    if tmeta is None:
        return []
    if tmeta.error is not None:
        if tmeta.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise BrokerError(f"not authorized to read topic {topic} (an ACL allowing Read/Describe on it)")
        return []
    return sorted(tmeta.partitions)


def partition_count(cluster: Cluster, topic: str, timeout: float = 10.0) -> int:
    """How many partitions ``topic`` has (0 when it does not exist)."""
    return len(topic_partitions(cluster, topic, timeout))


def end_offsets(cluster: Cluster, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """(low, high) watermark of every partition of ``topic``."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({**consumer_config(cluster), "log_level": 0})
    try:
        meta = c.list_topics(topic, timeout=timeout)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            return {}
        out = {}
        for p in sorted(tmeta.partitions):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            out[p] = (int(lo), int(hi))
        return out
    except KafkaException as exc:
        raise BrokerError(f"Kafka at {cluster.bootstrap}: {_short(exc)}") from None
    finally:
        c.close()


TAIL_CHUNK = 2000
"""Records per partition in the first backward chunk of a tail read (each further chunk doubles)."""


def read_tail(
    cluster: Cluster,
    topic: str,
    back_to: Callable[[list[Record]], int],
    *,
    chunk: int = TAIL_CHUNK,
    timeout: float = 60.0,
    progress: Progress | None = None,
    headers: bool = False,
) -> list[Record]:
    """The last records of every partition of ``topic``, read backwards in chunks (all partitions in one
    fetch round per chunk) until a partition's oldest record read is older than ``back_to(records so
    far)`` (epoch ms) or its start is reached. Returns them by partition, then offset."""
    marks = end_offsets(cluster, topic, timeout=min(timeout, 10.0))
    if not marks:
        return []
    low = {p: max(lo, 0) for p, (lo, _hi) in marks.items()}
    end = {p: hi for p, (_lo, hi) in marks.items()}
    start = {p: max(low[p], end[p] - chunk) for p in marks}
    got: dict[int, list[Record]] = {p: [] for p in marks}
    deadline = time.monotonic() + timeout
    active = {p for p in marks if end[p] > low[p]}
    size = chunk
    read = 0
    while active:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerError(f"reading the end of {topic} took longer than {timeout:.0f}s")
        parts = tuple(sorted(active))
        fresh = read_to_end(
            cluster,
            topic,
            timeout=left,
            start={p: start[p] for p in parts},
            stop={p: end[p] for p in parts},
            partitions=parts,
            headers=headers,
        )
        read += len(fresh)
        if progress is not None:
            progress(topic, read)
        by_part: dict[int, list[Record]] = {p: [] for p in parts}
        for r in fresh:
            by_part[r.partition].append(r)
        for p, recs in by_part.items():
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
    return [r for p in sorted(got) for r in got[p]]
