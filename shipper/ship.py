"""The producer loop: tail the log, parse, batch per partition, ship to ``events``, checkpoint what was acked.

One thread, one loop (:meth:`Shipper.step`):

1. read the complete lines available (unless ``max_pending_lines`` events are unacknowledged: then reading
   pauses, which bounds memory during a broker outage). Within the flush interval after a round no line
   could go, so the log is not read then: under load a round costs one read, not one per write;
2. parse each; an event joins the open batch of its address's ``events`` partition (:class:`Batcher`,
   ``fleet2ban.contract.partition_for``, the processor's own): each batch goes out as one ``events``
   record (:class:`~fleet2ban.contract.EventsRecord`, lines of every address of that partition), in a
   round with every other open batch. When the shipper is idle (nothing in flight, no round within the
   flush interval) a round goes at once: a lone failure waits for nothing. Otherwise the round goes when
   the oldest open batch is ``flush_interval_ms`` old (longer under load, up to
   ``max_flush_interval_ms``); a batch goes at once on its own when ``max_lines_per_record`` long or
   about :data:`~fleet2ban.contract.EVENTS_RECORD_MAX_BYTES` big;
3. serve delivery reports: an acknowledged record releases its lines; a failed one is sent again after a
   backoff (its lines keep their ids, so a copy that did arrive is a recognised duplicate); a fatal
   producer error replaces the producer and re-sends everything unacknowledged;
4. move the checkpoint (:class:`AckTracker`) to the first line whose event is not acknowledged yet.

confluent-kafka with key = the record's first address, ``partitioner=murmur2_random`` (so the record goes
to the partition of its key, which is the partition of each of its addresses), acks=all, idempotence,
lz4 and linger (fleet2ban.kafka.producer_config). A heartbeat goes to ``reports`` every ``metrics.heartbeat_interval_s``.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fleet2ban import __version__
from fleet2ban.contract import (
    EVENTS_RECORD_MAX_BYTES,
    AddressLine,
    EventsPartitions,
    EventsRecord,
    Heartbeat,
    encode,
    from_epoch,
    utcnow,
)
from fleet2ban.identity import Signer
from fleet2ban.kafka import Cluster, producer_config
from fleet2ban.logs import RateLimitedLog
from fleet2ban.settings import Settings
from shipper import metrics as m
from shipper.exceptions import CheckpointError, ShipperError
from shipper.fileid import FileId
from shipper.parse import (
    SUSPECT_MARK,
    TOO_LONG,
    Continuation,
    Liveness,
    ParsedLine,
    Parser,
    ParseResult,
    ParseStats,
    Rejected,
    decode_line,
    parse_line,
    scan_block,
)
from shipper.tail import (
    Checkpoint,
    Tailer,
    TailItem,
    TailLine,
    Waker,
    chunk_lines,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)


class _LibrdkafkaLog:
    """librdkafka's own log lines at DEBUG: its errors reach us (rate-limited) through ``error_cb``."""

    _log = logging.getLogger("shipper.librdkafka")

    def log(self, level: int, msg: str, *args: object) -> None:
        self._log.debug(msg, *args)


_LIBRDKAFKA_LOG = _LibrdkafkaLog()
_UNREACHABLE = (-195, -187)  # KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN

Pos = tuple[int, int]  # (file seq, byte offset)

DELIVERY_TIMEOUT_MS = 10_000
CHECKPOINT_INTERVAL_S = 0.2
"""How often the checkpoint file is written while lines are acknowledged (kill -9 ships again at most
that much, as recognised duplicates); it reaches the disk every CHECKPOINT_SYNC_INTERVAL_S."""
CHECKPOINT_SYNC_INTERVAL_S = 1.0
READ_BYTES = 1 << 20


# --------------------------------------------------------------------------------- pure bookkeeping


class Pending:
    """One ``events`` record: open (collecting lines), in flight, or waiting to be sent again."""

    __slots__ = (
        "attempts",
        "deadline",
        "first",
        "headers",
        "key",
        "lines",
        "partition",
        "queued",
        "retry_at",
        "rid",
        "size",
        "value",
    )

    def __init__(self, rid: int, partition: int, key: bytes, first: Pos, deadline: float) -> None:
        self.rid = rid
        self.partition = partition
        self.key = key
        """The record's key: its first line's address. The record goes to ``partition`` by name: an IPv6
        address's partition is its ``kafka.partition_prefix_v6`` network's (``contract.events_partition``)."""
        self.first = first
        self.deadline = deadline
        self.lines: list[AddressLine] = []
        self.size = RECORD_OVERHEAD
        """The record's JSON size, estimated as lines join (:data:`LINE_OVERHEAD` + client + raw)."""
        self.value = b""
        self.headers: list[tuple[str, bytes]] | None = None
        """The host signature (``identity.key_path`` set), made once with the value."""
        self.attempts = 0
        self.retry_at = 0.0
        self.queued = False


PRODUCER_LINGER_MS = 1.0
"""librdkafka's linger: the records of a round are handed over back to back (the batching is the
rounds'), so a millisecond packs them into one request; more would only delay every round."""

ROUND_LINES_AT_BASE = 8
"""A round of more lines than this stretches the next flush interval in proportion (see Batcher): with
the base interval of 10 ms, a host writing more than 800 failure lines/s is under load."""

RECORD_OVERHEAD = 96
LINE_OVERHEAD = 192
"""JSON bytes of one line beyond its client name and raw text (keys, address, id, time, port, reason),
generously: the estimate of a record's size stays above its real size for ASCII text."""

PARTITION_CACHE_MAX = 100_000
"""Addresses whose partition the shipper remembers (cleared when full; fewer than a worker's
``contract.PARTITION_CACHE_MAX``: one host sees fewer addresses, and its footprint is small)."""


class Batcher:
    """Open batches per ``events`` partition, sent in rounds.

    An address's lines join the open batch of its partition (``partition_for``: the processor's tables
    use the same hash, so state stays co-partitioned), so that a distributed attack from thousands of
    addresses costs the processor one record per (host, partition, round), not one per address. A batch
    that reaches ``max_lines`` or ``max_bytes`` goes at once, on its own.

    A round takes every open batch, so that the records handed to the producer together leave as one
    Kafka request. It goes (:meth:`due`):

    - at once when the shipper is idle: nothing in flight (the caller says) and no round went out
      within the current interval. A lone failure waits for nothing;
    - otherwise when the oldest open batch is ``interval_s`` old: while records are in flight or rounds
      follow each other (load), lines gather. A round of more than ``ROUND_LINES_AT_BASE`` lines
      stretches the next interval in proportion, up to ``max_interval_s``: under load the shipper sends
      fewer, larger records (each record, its request and its acknowledgement cost more than a line).
    """

    def __init__(
        self,
        interval_s: float,
        max_lines: int,
        max_interval_s: float | None = None,
        *,
        partitions: int = 1,
        max_bytes: int = EVENTS_RECORD_MAX_BYTES,
        prefix_v6: int = 64,
    ) -> None:
        self.base_interval_s = interval_s
        self.max_interval_s = max(interval_s, max_interval_s or interval_s)
        self.interval_s = interval_s
        """The interval for batches opened now: the base one, or longer after a large round."""
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.parts = EventsPartitions(partitions, prefix_v6, PARTITION_CACHE_MAX)
        """Each address's events partition (remembered)."""
        self.open_batches: dict[int, Pending] = {}
        # Opening order. A batch that went out full stays here until it reaches the front and is
        # skipped: popping from the front of a deque stays O(1).
        self._order: deque[Pending] = deque()
        self.last_ts: datetime | None = None  # event time of the last line added
        self.last_round = -math.inf
        """When the last round went (monotonic seconds)."""
        self.rounds = 0
        self._next_rid = 0

    @property
    def partitions(self) -> int:
        """The partition count lines are grouped by."""
        return self.parts.partitions

    @partitions.setter
    def partitions(self, n: int) -> None:
        """Group by ``n`` partitions from now on (each address's partition is found afresh)."""
        self.parts = EventsPartitions(n, self.parts.prefix_v6, PARTITION_CACHE_MAX)

    def partition_of(self, ip: str) -> int:
        return self.parts.of(ip)

    def open(self, partition: int, key: bytes, pos: Pos, now: float) -> Pending:
        """A new open batch for ``partition`` (which has none), its first line (address ``key``) at ``pos``."""
        self._next_rid += 1
        b = Pending(self._next_rid, partition, key, pos, now + self.interval_s)
        self.open_batches[partition] = b
        self._order.append(b)
        return b

    def add(self, line: AddressLine, pos: Pos, now: float) -> tuple[Pending, bool, bool]:
        """Add one line; returns (its batch, whether the batch is new, whether it is full and removed)."""
        self.last_ts = line.ts
        part = self.partition_of(line.ip)
        b = self.open_batches.get(part)
        new = b is None
        if b is None:
            b = self.open(part, line.ip.encode(), pos, now)
        b.lines.append(line)
        b.size += LINE_OVERHEAD + len(line.client) + len(line.raw)
        if len(b.lines) >= self.max_lines or b.size >= self.max_bytes:
            del self.open_batches[part]
            return b, new, True
        return b, new, False

    def _front(self) -> Pending | None:
        order, opened = self._order, self.open_batches
        while order:
            b = order[0]
            if opened.get(b.partition) is b:
                return b
            order.popleft()  # went out full
        return None

    def ready_at(self, idle: bool) -> float | None:
        """When the next round may go (None: nothing open); ``idle``: nothing is in flight."""
        b = self._front()
        if b is None:
            return None
        if idle:
            return min(b.deadline, self.last_round + self.interval_s)
        return b.deadline

    def due(self, now: float, idle: bool = False) -> list[Pending]:
        """The round, when it may go (:meth:`ready_at`): every open batch, in opening order."""
        at = self.ready_at(idle)
        if at is None or at > now:
            return []
        out = self.drain()
        self.rounds += 1
        self.last_round = now
        lines = sum(len(b.lines) for b in out)
        stretched = self.base_interval_s * lines / ROUND_LINES_AT_BASE
        self.interval_s = min(self.max_interval_s, max(self.base_interval_s, stretched))
        return out

    def drain(self) -> list[Pending]:
        out = list(self.open_batches.values())  # a dict keeps insertion (= opening) order
        self.open_batches.clear()
        self._order.clear()
        return out

    def next_deadline(self, idle: bool = False) -> float | None:
        return self.ready_at(idle)

    def __len__(self) -> int:
        return len(self.open_batches)


class AckTracker:
    """The checkpoint position: before the first line of the oldest unacknowledged record."""

    def __init__(self) -> None:
        # Records are opened in file order, so a FIFO holds them in position order at O(1) a record; one
        # opened before the last (not done by the shipper, but allowed) goes to a heap.
        self._fifo: deque[tuple[Pos, int]] = deque()
        self._heap: list[tuple[Pos, int]] = []
        self._done: set[int] = set()

    def open(self, rid: int, first: Pos) -> None:
        fifo = self._fifo
        if not fifo or fifo[-1][0] <= first:
            fifo.append((first, rid))
        else:
            heapq.heappush(self._heap, (first, rid))

    def ack(self, rid: int) -> None:
        self._done.add(rid)

    def low_water(self, read_pos: Pos) -> Pos:
        fifo, heap, done = self._fifo, self._heap, self._done
        while fifo and fifo[0][1] in done:
            done.discard(fifo.popleft()[1])
        while heap and heap[0][1] in done:
            done.discard(heapq.heappop(heap)[1])
        low = read_pos
        if fifo and fifo[0][0] < low:
            low = fifo[0][0]
        if heap and heap[0][0] < low:
            low = heap[0][0]
        return low

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap) - len(self._done)


INVALID_TIMESTAMP = 32
"""Kafka's error code for a record timestamped outside the topic's bounds: Kafka 4 refuses records more
than ``message.timestamp.after.max.ms`` (one hour by default) ahead of the broker's clock."""
HEARTBEAT_BACKDATE_STEP_S = 1800.0
"""While the broker refuses this host's timestamps, each refused heartbeat is sent again that much
earlier (and each accepted one creeps back by as much), so that the heartbeat saying so gets through and
is dated within the hour ahead that readers look at."""
HEARTBEAT_BACKDATE_MAX_S = 366 * 86400.0


def refused_as_future(err: Any) -> bool:
    """Whether a delivery error is the broker refusing the record's timestamp (this host's clock ahead)."""
    try:
        return bool(err.code() == INVALID_TIMESTAMP)
    except Exception:
        return False


def backoff_s(attempts: int) -> float:
    return float(min(5.0, 0.1 * 2 ** min(attempts, 10)))


# ------------------------------------------------------------------------------------------ shipper


@dataclass
class ShipperStats(ParseStats):
    events_shipped: int = 0
    records_shipped: int = 0
    delivery_failures: int = 0
    producer_restarts: int = 0
    clock_rejected: int = 0
    """Records the broker refused as timestamped too far ahead (INVALID_TIMESTAMP)."""
    last_event_ts: datetime | None = None
    last_liveness_ts: datetime | None = None


ProducerFactory = Callable[[dict[str, Any]], Any]


def _confluent_producer(conf: dict[str, Any]) -> Any:
    from confluent_kafka import Producer

    return Producer(conf)


class Shipper:
    """Ships one log file's events to Kafka. Drive it with :meth:`run` (until ``stop`` is set)."""

    def __init__(
        self,
        settings: Settings,
        cluster: Cluster,
        *,
        log_path: Path | None = None,
        host: str | None = None,
        instance: str | None = None,
        checkpoint_path: Path | None = None,
        parser: Parser = parse_line,
        producer_factory: ProducerFactory = _confluent_producer,
        use_inotify: bool = True,
        on_ack: Callable[[Pending], None] | None = None,
        delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        s = settings.shipper
        path = log_path or s.log_path
        if path is None:
            raise ShipperError("no log to follow: pass --log PATH (shipper.log_path)")
        self.settings = settings
        self.cluster = cluster
        self.path = Path(path)
        self.host = host or s.host
        self.instance = s.instance if instance is None else instance
        self.checkpoint_path = checkpoint_path or s.checkpoint_path or default_checkpoint(settings, self.host)
        self.parser = parser
        self.on_ack = on_ack
        self.delivery_timeout_ms = delivery_timeout_ms
        self.clock = clock
        """This host's wall clock: the records' timestamps (what Kafka checks) and the heartbeats' time."""
        self.clock_ahead = False
        """The broker refuses this host's records as timestamped in the future (until one is taken)."""
        self._hb_backdate_s = 0.0
        self._rl_clock = RateLimitedLog(log, 60.0)
        self.topics = cluster.topics
        self.signer = Signer.from_settings(self.host, settings.identity)
        """Signs every events record and heartbeat with this host's key (DESIGN §8), when it has one."""
        self.stats = ShipperStats()
        self.batcher = Batcher(
            s.flush_interval_ms / 1000.0,
            s.max_lines_per_record,
            s.max_flush_interval_ms / 1000.0,
            partitions=cluster.settings.partitions,
            prefix_v6=cluster.settings.partition_prefix_v6,
        )
        self.tracker = AckTracker()
        self.inflight: dict[int, Pending] = {}
        self.retry: list[Pending] = []
        self.pending_lines = 0
        self.max_pending = s.max_pending_lines
        self.paused = False
        self.started_at = utcnow()
        self._producer_factory = producer_factory
        self._producer: Any = None
        self._fatal = False
        self._outage_since: float | None = None
        self._last_ack = time.monotonic()
        self._file_ids: dict[int, FileId] = {}
        self._carries: dict[FileId, Continuation] = {}
        self._checkpoint: Pos | None = None
        self._last_cp_write = 0.0
        self._last_cp_sync = 0.0
        self._last_hb = 0.0
        self._last_gauges = 0.0
        self._synced: dict[Any, int] = {}
        self._partitions_checked = False
        self._rl = RateLimitedLog(log, 30.0)
        self._rl_parse = RateLimitedLog(log, 10.0)
        self.tailer = Tailer(
            self.path,
            load_checkpoint(self.checkpoint_path),
            from_start=s.from_start,
            max_line_bytes=s.max_line_bytes,
        )
        self.waker = Waker(self.path, use_inotify)

    # ---------------------------------------------------------------------------------- producer

    def _producer_conf(self) -> dict[str, Any]:
        return producer_config(
            self.cluster,
            linger_ms=PRODUCER_LINGER_MS,
            error_cb=self._on_error,
            logger=_LIBRDKAFKA_LOG,
            **{
                "message.timeout.ms": self.delivery_timeout_ms,
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 1000,
                "retry.backoff.ms": 50,
                "retry.backoff.max.ms": 1000,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
            },
        )

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = True
            log.error("kafka producer fatal error: %s (replacing the producer)", err)
        elif err.code() in _UNREACHABLE:
            self._rl.warning(
                "kafka-down", "Kafka at %s is unreachable: %s", self.cluster.bootstrap, err.str()
            )
        else:
            self._rl.warning(f"kafka-{err.code()}", "kafka client: %s", err)

    @property
    def producer(self) -> Any:
        if self._producer is None:
            self._producer = self._producer_factory(self._producer_conf())
            if not self._partitions_checked:  # before the first record is grouped and sent
                self._check_partitions()
        return self._producer

    def _replace_producer(self) -> None:
        old = self._producer
        self._producer = None
        self._fatal = False
        self.stats.producer_restarts += 1
        m.PRODUCER_RESTARTS.inc()
        if old is not None:
            try:
                old.purge()
                old.poll(0)
            except Exception as exc:  # the old producer is broken anyway
                log.debug("purging the old producer: %s", exc)
        now = time.monotonic()
        for b in self.inflight.values():
            if not b.queued:
                b.queued = True
                b.retry_at = now
                self.retry.append(b)

    # ---------------------------------------------------------------------------------- the loop

    def run(self, stop: threading.Event) -> None:
        log.info(
            "shipping %s as host %r instance %r to %s at %s (checkpoint %s, wake-ups by %s)",
            self.path,
            self.host,
            self.instance,
            self.topics.events,
            self.cluster.bootstrap,
            self.checkpoint_path,
            self.waker.mode,
        )
        try:
            try:
                self.producer  # noqa: B018 - made now: it checks the topic's partition count before any line is grouped
            except Exception as exc:  # the loop makes it again
                log.debug("producer: %s", exc)
            while not stop.is_set():
                try:
                    self.step()
                except CheckpointError as exc:
                    self._rl.error("checkpoint", "%s", exc)
                    stop.wait(0.1)
                except Exception:  # one bad turn never kills the shipper
                    log.exception("shipper loop failed; going on")
                    stop.wait(0.1)
        finally:
            self.shutdown()

    def step(self) -> None:
        """One turn of the loop; waits (bounded) when there was nothing to read."""
        now = time.monotonic()
        # Within the interval after a round, no line could go (Batcher.due): reading then would only
        # cost wake-ups, so under load the log is read once a round. A lone failure after a quiet
        # spell finds the gate open and goes at once.
        gate = self.batcher.last_round + self.batcher.interval_s
        read_now = now >= gate
        got = self._read(now) if self._may_read() and read_now else 0
        for b in self.batcher.due(now, idle=not self.inflight):
            self._send(b)
        if self._fatal:
            self._replace_producer()
        if self.retry:
            self._resend_due(now)
        self._poll(0)
        self._maybe_checkpoint(now)
        self._maybe_heartbeat(now)
        self._maybe_gauges(now)
        if read_now and (got or (self.pending_lines < self.max_pending and not self.tailer.caught_up)):
            return  # more to read now
        self._wait(now, gate, read_now)

    def _may_read(self) -> bool:
        """Reading pauses while ``max_pending_lines`` events are unacknowledged (said once each way)."""
        if self.max_pending - self.pending_lines > 0:
            if self.paused:
                self.paused = False
                m.PAUSED.set(0)
                log.debug("queue below its bound again: reading resumes")
            return True
        if not self.paused:
            self.paused = True
            m.PAUSED.set(1)
            self._rl.warning(
                "paused",
                "%d events unacknowledged (shipper.max_pending_lines): reading pauses until the broker"
                " takes them",
                self.pending_lines,
            )
        return False

    def _read(self, now: float) -> int:
        """Read and process what the log holds (bounded by the room left); how many items were read."""
        room = self.max_pending - self.pending_lines
        lines = self.tailer.read(min(READ_BYTES, room * 256))
        if lines:
            self._process(lines, now)
        return len(lines)

    def _wait(self, now: float, gate: float, read_now: bool) -> None:
        """Wait (bounded) for the next thing to do: the gate, a round, a retry, a delivery, a write."""
        timeout = self.settings.shipper.poll_interval_s
        if not read_now:
            timeout = min(timeout, gate - now)
        nd = self.batcher.next_deadline(idle=not self.inflight)
        if nd is not None:
            timeout = min(timeout, nd - now)
        if self.retry:
            timeout = min(timeout, min(b.retry_at for b in self.retry) - now)
        if (self.inflight or not read_now) and self._producer is not None:
            # delivery reports end the wait early; lines written meanwhile wait for the gate or an
            # acknowledgement (at most an interval while records are in flight), not for each write
            wait = max(0.0, min(timeout, self.batcher.interval_s))
            # librdkafka waits in whole milliseconds: a shorter wait would be none, and the loop would
            # spin until the deadline (thousands of turns a second at 100 lines/s)
            self._poll(math.ceil(wait * 1000.0) / 1000.0)
        elif not read_now:
            time.sleep(max(0.0, timeout))
        else:
            self.waker.wait(timeout)

    def _poll(self, timeout: float) -> None:
        """Serve delivery reports; a fatal producer error (raised here) gets the producer replaced."""
        if self._producer is None:
            return
        try:
            self._producer.poll(timeout)
        except Exception as exc:  # KafkaException: fatal state (e.g. the broker forgot our producer id)
            self._fatal = True
            self._rl.warning("poll", "kafka producer failed (%s): replacing it", exc)

    def _carry(self, fid: FileId) -> Continuation:
        """The file's :class:`Continuation` (which lines follow an unterminated 07-0013 record), kept across
        reads; a few files at most (the current one and those rotated away that are still being read)."""
        carry = self._carries.get(fid)
        if carry is None:
            if len(self._carries) >= 8:
                self._carries.pop(next(iter(self._carries)))
            carry = self._carries[fid] = Continuation()
        return carry

    def _parse_other(self, text: str, too_long: bool, limit: int) -> ParseResult:
        """A line the block scanner did not take, by the configured parser."""
        if too_long:
            return Rejected(TOO_LONG, f"line longer than {limit} bytes")
        if text.startswith(SUSPECT_MARK):  # whatever the parser: a fail2ban filter would take it
            return parse_line(text)
        return self.parser(text)

    def _note_not_event(self, result: ParseResult, off: int) -> None:
        """Count a liveness line or a rejection (logged, rate-limited)."""
        stats = self.stats
        if type(result) is Liveness:
            stats.liveness += 1
            stats.last_liveness_ts = result.ts
            m.LIVENESS.inc()
            m.LAST_LIVENESS_TIME.set(result.ts.timestamp())
            return
        assert isinstance(result, Rejected)
        stats.rejected[result.kind] += 1
        m.REJECTED.labels(result.kind).inc()
        self._rl_parse.warning(
            f"reject-{result.kind}",
            "%s: line at byte %d rejected (%s): %s",
            self.path,
            off,
            result.kind,
            result.detail,
        )

    def _process(self, items: list[TailItem], now: float) -> None:
        """Parse what the tailer read; events join their IP's batch (full batches go out at once)."""
        limit = self.tailer.max_line_bytes
        counts = [0, 0]  # lines, events
        host, batcher, tracker, file_ids = self.host, self.batcher, self.tracker, self._file_ids
        add, send = batcher.add, self._send
        for item in items:
            seq, fid = item.seq, item.file_id
            if seq not in file_ids:
                file_ids[seq] = fid
            id_prefix = f"{host}:{fid}:"
            carry = self._carry(fid)

            def on_fast(
                off: int,
                ts: datetime,
                ip: str,
                port: int,
                client: str,
                reason: str,
                raw: str,
                seq: int = seq,
                id_prefix: str = id_prefix,
            ) -> None:
                b, new, full = add(
                    AddressLine(ip, f"{id_prefix}{off}", ts, port, client, reason, raw), (seq, off), now
                )
                if new:
                    tracker.open(b.rid, b.first)
                if full:
                    send(b)

            def on_other(off: int, text: str, too_long: bool) -> None:
                counts[0] += 1
                result = self._parse_other(text, too_long, limit)
                if type(result) is ParsedLine:
                    counts[1] += 1
                    on_fast(off, result.ts, result.ip, result.port, result.client, result.reason, result.raw)
                else:
                    self._note_not_event(result, off)

            if isinstance(item, TailLine):
                text = "" if item.too_long else decode_line(item.data)
                on_other(item.offset, _checked(carry, text, item.too_long), item.too_long)
            elif self.parser is parse_line:
                fast = scan_block(item.data, item.offset, limit, on_fast, on_other, carry=carry)
                counts[0] += fast
                counts[1] += fast
            else:
                for ln in chunk_lines(item, limit):
                    text = "" if ln.too_long else decode_line(ln.data)
                    on_other(ln.offset, _checked(carry, text, ln.too_long), ln.too_long)
        self._note_read(*counts)
        cur = self.tailer.position[0]
        if cur not in file_ids:
            cur_fid = self.tailer.current_file_id()
            if cur_fid is not None:
                file_ids[cur] = cur_fid

    def _note_read(self, lines: int, events: int) -> None:
        stats = self.stats
        stats.lines += lines
        stats.events += events
        self.pending_lines += events
        m.LINES_READ.inc(lines)
        if events:
            m.EVENTS_READ.inc(events)
            if self.batcher.last_ts is not None:
                stats.last_event_ts = self.batcher.last_ts
                m.LAST_EVENT_TIME.set(self.batcher.last_ts.timestamp())

    def _send(self, b: Pending) -> None:
        b.value = encode(EventsRecord(host=self.host, lines=b.lines, instance=self.instance))
        if self.signer is not None:
            b.headers = self.signer.headers("events", b.key, b.value)
        self.inflight[b.rid] = b
        self._produce(b)

    def _produce(self, b: Pending) -> None:
        try:
            self.producer.produce(
                self.topics.events,
                b.value,
                b.key,
                # by name: an IPv6 address's partition is its prefix's; a batch grouped by a count the
                # topic does not have (kafka.partitions wrong, found at start) goes by its key
                partition=b.partition if b.partition < self.batcher.partitions else -1,
                on_delivery=functools.partial(self._delivered, b.rid),
                headers=b.headers,
                timestamp=int(self.clock() * 1000),
            )
        except BufferError:
            self._requeue(b, time.monotonic())
        except Exception as exc:  # KafkaException: fatal state and the like
            self._rl.warning("produce", "cannot hand a record to the producer (%s): retrying", exc)
            self._requeue(b, time.monotonic())

    def _requeue(self, b: Pending, now: float) -> None:
        if not b.queued:
            b.queued = True
            b.attempts += 1
            b.retry_at = now + backoff_s(b.attempts)
            self.retry.append(b)

    def _resend_due(self, now: float) -> None:
        due = [b for b in self.retry if b.retry_at <= now]
        if not due:
            return
        self.retry = [b for b in self.retry if b.retry_at > now]
        for b in due:
            b.queued = False
            if b.rid in self.inflight:
                self._produce(b)

    def _delivered(self, rid: int, err: Any, msg: Any) -> None:
        b = self.inflight.get(rid)
        if b is None:
            return  # a copy of a record that was already acknowledged
        now = time.monotonic()
        if err is None:
            del self.inflight[rid]
            self.tracker.ack(rid)
            n = len(b.lines)
            self.pending_lines -= n
            self.stats.events_shipped += n
            self.stats.records_shipped += 1
            self._last_ack = now
            if self.on_ack is not None:
                self.on_ack(b)
            if self.clock_ahead:
                self._clock_ok()
            if self._outage_since is not None:
                log.info(
                    "Kafka takes records again after %.1fs: %d records still to confirm",
                    now - self._outage_since,
                    len(self.inflight),
                )
                self._outage_since = None
            return
        self.stats.delivery_failures += 1
        m.DELIVERY_FAILURES.inc()
        if self._outage_since is None:
            self._outage_since = now
        if refused_as_future(err):
            self._clock_refused()
            self._requeue(b, now)
            return
        self._rl.warning(
            "delivery",
            "cannot deliver to Kafka at %s for %.0fs (%s): holding %d events in %d records, retrying with"
            " backoff; the checkpoint stays before them",
            self.cluster.bootstrap,
            now - self._outage_since,
            err,
            self.pending_lines,
            len(self.inflight),
        )
        if getattr(err, "fatal", lambda: False)():
            self._fatal = True
        self._requeue(b, now)

    # ------------------------------------------------------------------------------- clock skew

    def _clock_refused(self) -> None:
        """The broker refused a record as timestamped too far ahead: this host's clock runs ahead."""
        self.stats.clock_rejected += 1
        m.CLOCK_REJECTED.inc()
        if not self.clock_ahead:
            self.clock_ahead = True
            m.CLOCK_AHEAD.set(1)
        self._rl_clock.error(
            "clock-ahead",
            "Kafka at %s refuses this host's records as timestamped in the future (INVALID_TIMESTAMP): the"
            " clock of %s runs ahead of the brokers' by more than the topics' message.timestamp.after.max.ms"
            " (Kafka 4: 1 h); fix it (NTP). %d records refused so far; holding %d events, retrying (the"
            " checkpoint stays before them)",
            self.cluster.bootstrap,
            self.host,
            self.stats.clock_rejected,
            self.pending_lines,
        )

    def _clock_ok(self) -> None:
        self.clock_ahead = False
        m.CLOCK_AHEAD.set(0)
        log.warning("Kafka takes this host's timestamps again: its clock is back within bounds")

    def _heartbeat_delivered(self, backdate_s: float, err: Any, _msg: Any) -> None:
        if err is None:
            if backdate_s == 0.0:
                if self.clock_ahead and not self.inflight:
                    self._clock_ok()
            else:  # creep back: once the clock is right again, heartbeats are dated now again
                self._hb_backdate_s = max(0.0, backdate_s - HEARTBEAT_BACKDATE_STEP_S)
        elif refused_as_future(err):
            self._clock_refused()
            self._hb_backdate_s = min(HEARTBEAT_BACKDATE_MAX_S, backdate_s + HEARTBEAT_BACKDATE_STEP_S)

    # ------------------------------------------------------------------------ checkpoint, heartbeat

    def checkpoint_position(self) -> Pos:
        return self.tracker.low_water(self.tailer.position)

    def _maybe_checkpoint(self, now: float, *, force: bool = False) -> None:
        if not force and now - self._last_cp_write < CHECKPOINT_INTERVAL_S:
            return
        pos = self.checkpoint_position()
        sync = force or now - self._last_cp_sync >= CHECKPOINT_SYNC_INTERVAL_S
        if pos == self._checkpoint and not force:
            return
        seq, offset = pos
        ident = self.tailer.identity(seq)
        file_id = self._file_ids.get(seq)
        if ident is None:
            return
        if file_id is None:
            file_id = self.tailer.current_file_id() if seq == self.tailer.position[0] else None
            if file_id is None:
                return
        path, dev, ino = ident
        fp = file_id.fp if offset else ""
        save_checkpoint(self.checkpoint_path, Checkpoint(path, dev, ino, fp, offset), sync=sync)
        self._checkpoint = pos
        self._last_cp_write = now
        if sync:
            self._last_cp_sync = now
        self.tailer.forget_before(seq)
        for s in [s for s in self._file_ids if s < seq]:
            del self._file_ids[s]

    def heartbeat(self, backdate_s: float = 0.0) -> Heartbeat:
        st = self.stats
        oldest = min((b.first for b in self.inflight.values()), default=None)
        counters: dict[str, float] = {
            "lines_read": st.lines,
            "events_read": st.events,
            "events_shipped": st.events_shipped,
            "records_shipped": st.records_shipped,
            "liveness_lines": st.liveness,
            "rejected": sum(st.rejected.values()),
            "delivery_failures": st.delivery_failures,
            "queue_lines": self.pending_lines,
            "lag_bytes": self.tailer.lag_bytes(),
            "clock_ahead": float(self.clock_ahead),
            "clock_rejected": st.clock_rejected,
        }
        for kind, n in st.rejected.items():
            counters[f"rejected.{kind}"] = n
        return Heartbeat(
            host=self.host,
            role="shipper",
            at=from_epoch(self.clock() - backdate_s),
            instance=self.instance,
            version=__version__,
            started_at=self.started_at,
            interval_s=self.settings.metrics.heartbeat_interval_s,
            lag=(time.monotonic() - self._last_ack) if oldest is not None else 0.0,
            counters=counters,
        )

    def _maybe_heartbeat(self, now: float) -> None:
        if now - self._last_hb < self.settings.metrics.heartbeat_interval_s:
            return
        self._last_hb = now
        back = self._hb_backdate_s
        # dated as its record: readers skip a heartbeat dated beyond Kafka's own bound (as a forged one)
        hb = self.heartbeat(back)
        key, value = self.host.encode(), encode(hb)
        headers = None if self.signer is None else self.signer.headers("reports", key, value)
        try:
            self.producer.produce(
                self.topics.reports,
                value,
                key,
                headers=headers,
                timestamp=int(hb.at.timestamp() * 1000),
                on_delivery=functools.partial(self._heartbeat_delivered, back),
            )
        except Exception as exc:
            self._rl.warning("heartbeat", "cannot send a heartbeat: %s", exc)

    def _maybe_gauges(self, now: float, *, force: bool = False) -> None:
        if not force and now - self._last_gauges < 1.0:
            return
        self._last_gauges = now
        if not self._partitions_checked and self.stats.records_shipped:
            self._check_partitions()
        # Per-record counters are synced here (a Prometheus inc per record costs more than the record).
        st, synced = self.stats, self._synced
        for counter, value in (
            (m.EVENTS_SHIPPED, st.events_shipped),
            (m.RECORDS_SHIPPED, st.records_shipped),
            (m.ROUNDS, self.batcher.rounds),
        ):
            counter.inc(value - synced.get(counter, 0))
            synced[counter] = value
        m.QUEUE_LINES.set(self.pending_lines)
        m.QUEUE_RECORDS.set(len(self.inflight))
        m.LAG_BYTES.set(self.tailer.lag_bytes())
        m.ROTATIONS.set(self.tailer.rotations)
        m.TRUNCATIONS.set(self.tailer.truncations)
        m.FLUSH_INTERVAL.set(self.batcher.interval_s)

    def _check_partitions(self) -> None:
        """Once the producer knows the events topic: group by its real partition count, should the
        settings (``kafka.partitions``) say otherwise (the processor refuses lines grouped wrongly)."""
        if self._producer is None:
            return
        try:
            meta = self._producer.list_topics(self.topics.events, timeout=1.0).topics[self.topics.events]
            n = len(meta.partitions)
        except Exception as exc:  # best effort: again once records are acknowledged
            log.debug("partitions of %s: %s", self.topics.events, exc)
            return
        self._partitions_checked = True
        if n and n != self.batcher.partitions:
            log.error(
                "%s has %d partitions, kafka.partitions says %d: grouping lines by %d from now on (set"
                " kafka.partitions to the topic's count)",
                self.topics.events,
                n,
                self.batcher.partitions,
                n,
            )
            for b in self.batcher.drain():  # grouped by the old count: sent as they are
                self._send(b)
            self.batcher.partitions = n

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Unhealthy after a minute without delivery, except when the broker refuses this host's clock:
        then healthy but ``waiting`` (a restart would not set the clock right)."""
        stuck = self._outage_since is not None and time.monotonic() - self._outage_since > 60
        detail: dict[str, Any] = {
            "log": str(self.path),
            "queue_lines": self.pending_lines,
            "lag_bytes": self.tailer.lag_bytes(),
            "delivering": self._outage_since is None,
            "clock_ahead": self.clock_ahead,
        }
        if self.clock_ahead:
            detail["waiting"] = (
                "Kafka refuses this host's records as timestamped in the future (INVALID_TIMESTAMP): its"
                " clock runs ahead; fix it (NTP)"
            )
            return True, detail
        return not stuck, detail

    def shutdown(self, timeout: float = 5.0) -> None:
        """Send what is open, wait (bounded) for acknowledgements, write the final checkpoint."""
        for b in self.batcher.drain():
            self._send(b)
        if self._producer is not None:
            deadline = time.monotonic() + timeout
            while self.inflight and time.monotonic() < deadline:
                if self._fatal:
                    self._replace_producer()
                self._resend_due(time.monotonic())
                self._poll(0.05)
            self._producer.flush(max(0.0, deadline - time.monotonic()))
            self._producer = None  # closes its connections
        self._maybe_checkpoint(time.monotonic(), force=True)
        self._maybe_gauges(time.monotonic(), force=True)
        if self.inflight:
            log.warning(
                "stopping with %d events unacknowledged: they will be shipped again on restart",
                self.pending_lines,
            )
        self.tailer.close()
        self.waker.close()
        log.info("shipper stopped: %s; shipped %d events", self.stats.summary(), self.stats.events_shipped)


def default_checkpoint(settings: Settings, host: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in host)
    return settings.resolved_state_dir() / f"shipper-{safe}.checkpoint"


def _checked(carry: Continuation, text: str, too_long: bool) -> str:
    """``text``, marked suspect when it follows an unterminated 07-0013 record of its file."""
    return SUSPECT_MARK + text if carry.suspect(text, too_long) and not too_long else text
