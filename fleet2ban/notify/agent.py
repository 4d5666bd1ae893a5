"""The notifier's Kafka shell: read ``decisions`` in its own consumer group, hand each decision to the
destinations that want it, commit what every destination is done with, and beat on ``reports``.

Threads: the main loop consumes, decodes, de-duplicates (by decision id) and commits; each destination
has its own delivery thread over its :class:`.outbox.Outbox`, so a slow or failing destination only
delays itself. Offsets are committed only up to the first record some destination still owes (at least
once: after a crash, what was not delivered everywhere is read again; ids already sent in this process
are not sent twice). A destination that stays down past ``max_pending`` decisions drops the oldest
(counted, logged) rather than hold every commit back for ever.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from fleet2ban import __version__
from fleet2ban.contract import ContractError, Heartbeat, decode_decision, encode, utcnow
from fleet2ban.kafka import Cluster, consumer_config, producer_config
from fleet2ban.logs import RateLimitedLog
from fleet2ban.notify.outbox import Commits, Item, Outbox, Seen, wants
from fleet2ban.notify.send import DeliveryError, Sender
from fleet2ban.settings import DestinationSettings, Settings

log = logging.getLogger("fleet2ban.notifier")
rlog = RateLimitedLog(log)

MESSAGES = Counter(
    "fleet2ban_notifier_messages_total",
    "Messages sent, by destination and outcome",
    ["destination", "outcome"],
)
DECISIONS = Counter(
    "fleet2ban_notifier_decisions_total", "Decisions delivered (in a message or a digest)", ["destination"]
)
DROPPED = Counter(
    "fleet2ban_notifier_dropped_total", "Decisions dropped by a destination over max_pending", ["destination"]
)
PENDING = Gauge("fleet2ban_notifier_pending", "Decisions waiting for a destination", ["destination"])
DELAY = Histogram(
    "fleet2ban_notifier_delivery_seconds",
    "From a decision's time to its delivery",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
BAD = Counter("fleet2ban_notifier_bad_records_total", "decisions records that break the contract")


class Destination:
    """One destination: its outbox and the thread that delivers it."""

    def __init__(
        self, dest: DestinationSettings, settings: Settings, commits: Commits, lock: threading.Lock
    ) -> None:
        n = settings.notifier
        self.name = dest.name
        self.outbox = Outbox(dest, n.retry_initial_s, n.retry_max_s)
        self.sender = Sender(dest, n.smtp)
        self.commits = commits
        self.lock = lock
        self.wake = threading.Event()
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"notify-{dest.name}", daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join(10)
        self.sender.close()

    def offer(self, item: Item) -> None:
        """Called with ``lock`` held."""
        for gone in self.outbox.offer(item):
            self.commits.done(gone.position)
            DROPPED.labels(self.name).inc()
            rlog.warning(
                "dropped-" + self.name,
                "destination %s is behind by more than max_pending: dropped decision %s",
                self.name,
                gone.decision.id,
            )
        PENDING.labels(self.name).set(len(self.outbox.queue))
        self.wake.set()

    def _run(self) -> None:
        cap = self.outbox.dest.max_per_message
        while not self._stop.is_set():
            self.wake.clear()  # before looking: an offer made after the look wakes the wait below
            with self.lock:
                now = time.monotonic()
                batch = self.outbox.take(now)
                due = self.outbox.due_at()
            if not batch:
                wait = None if due is None else max(0.0, due - time.monotonic())
                self.wake.wait(wait if wait is not None else 1.0)
                continue
            shown, more = batch[:cap], max(0, len(batch) - cap)
            try:
                self.sender.send([i.decision for i in shown], more)
            except DeliveryError as exc:
                with self.lock:
                    delay = self.outbox.failed(time.monotonic())
                self.failed += 1
                self.last_error = str(exc)
                MESSAGES.labels(self.name, "failed").inc()
                rlog.warning("send-" + self.name, "%s (retrying in %.1fs)", exc, delay)
                continue
            now_wall = time.time()
            with self.lock:
                self.outbox.sent(batch, time.monotonic())
                for i in batch:
                    self.commits.done(i.position)
                PENDING.labels(self.name).set(len(self.outbox.queue))
            self.sent += 1
            self.last_error = None
            MESSAGES.labels(self.name, "sent" if len(batch) == 1 else "digest").inc()
            DECISIONS.labels(self.name).inc(len(batch))
            for i in batch:
                DELAY.observe(max(0.0, now_wall - i.decision.at.timestamp()))


class Notifier:
    def __init__(self, settings: Settings, cluster: Cluster) -> None:
        self.settings = settings
        self.cluster = cluster
        self.lock = threading.Lock()
        self.commits = Commits()
        self.seen = Seen()
        self.destinations = [
            Destination(d, settings, self.commits, self.lock) for d in settings.notifier.destinations
        ]
        self.stop_event = threading.Event()
        self.started_at = utcnow()
        self.host = socket.gethostname()
        self.read = 0

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {
            "destinations": {
                d.name: {"pending": len(d.outbox.queue), "last_error": d.last_error}
                for d in self.destinations
            }
        }

    def run(self) -> None:
        from confluent_kafka import Consumer, Producer

        group = f"{self.settings.kafka.topic_prefix}{self.settings.notifier.group_id}"
        consumer = Consumer(
            consumer_config(
                self.cluster,
                group_id=group,
                **{
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                    "auto.offset.reset": "earliest" if self.settings.notifier.from_start else "latest",
                },
            )
        )
        producer = Producer(producer_config(self.cluster, linger_ms=5))
        consumer.subscribe([self.cluster.topics.decisions])
        for d in self.destinations:
            d.start()
        log.info(
            "notifier: %s from %s (group %s)",
            ", ".join(f"{d.name} ({d.outbox.dest.kind})" for d in self.destinations) or "no destinations",
            self.cluster.topics.decisions,
            group,
        )
        next_commit = next_hb = 0.0
        committed: dict[int, int] = {}
        try:
            while not self.stop_event.is_set():
                msg = consumer.poll(0.2)
                msgs = [] if msg is None else [msg, *consumer.consume(999, 0)]
                for m in msgs:
                    if m.error() is not None:
                        rlog.warning("consume", "reading decisions: %s", m.error())
                        continue
                    self._handle(m.partition() or 0, m.offset() or 0, m.value())
                now = time.monotonic()
                if now >= next_commit:
                    committed = self._commit(consumer, committed)
                    next_commit = now + 1.0
                if now >= next_hb:
                    self._heartbeat(producer)
                    next_hb = now + self.settings.metrics.heartbeat_interval_s
                producer.poll(0)
        finally:
            for d in self.destinations:
                d.stop()
            self._commit(consumer, committed)
            consumer.close()
            producer.flush(5)

    def _handle(self, partition: int, offset: int, value: bytes | None) -> None:
        self.read += 1
        try:
            decision = decode_decision(value)
        except ContractError as exc:
            BAD.inc()
            rlog.warning("bad", "skipped a decisions record that breaks the contract: %s", exc)
            with self.lock:
                self.commits.add((partition, offset), 0)
            return
        with self.lock:
            targets = [d for d in self.destinations if wants(d.outbox.dest, decision)]
            if not self.seen.first_time(decision.id):
                targets = []
            self.commits.add((partition, offset), len(targets))
            for d in targets:
                d.offer(Item(decision, (partition, offset)))

    def _commit(self, consumer: Any, last: dict[int, int]) -> dict[int, int]:
        from confluent_kafka import KafkaException, TopicPartition

        with self.lock:
            offsets = self.commits.committable()
        fresh = {p: o for p, o in offsets.items() if last.get(p) != o}
        if not fresh:
            return last
        topic = self.cluster.topics.decisions
        try:
            consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in fresh.items()], asynchronous=False
            )
        except KafkaException as exc:
            rlog.warning("commit", "committing decisions offsets: %s", exc)
            return last
        return {**last, **fresh}

    def _heartbeat(self, producer: Any) -> None:
        counters: dict[str, float] = {"decisions_read": float(self.read)}
        for d in self.destinations:
            counters[f"{d.name}.sent"] = float(d.sent)
            counters[f"{d.name}.failed"] = float(d.failed)
            counters[f"{d.name}.pending"] = float(len(d.outbox.queue))
        hb = Heartbeat(
            host=self.host,
            role="notifier",
            at=utcnow(),
            version=__version__,
            started_at=self.started_at,
            interval_s=self.settings.metrics.heartbeat_interval_s,
            counters=counters,
        )
        try:
            producer.produce(self.cluster.topics.reports, key=self.host.encode(), value=encode(hb))
        except BufferError:
            rlog.warning("hb", "reports queue full: a heartbeat was dropped")
