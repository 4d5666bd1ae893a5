"""The enforcer agent: follow ``bans``, reconcile the kernel with it, expire on its own clock, report.

:class:`Agent` is the Kafka shell around :class:`enforcer.core.Enforcer` (the active set and the
reconcile, no Kafka): it assigns every partition of ``bans`` from the beginning (no consumer group, no
committed offsets), reads to the end (through :class:`fleet2ban.kafka.TopicReader`), reconciles in full,
then follows the topic live, reconciling incrementally after each batch of records, at the next expiry
(its own clock: a dead processor never makes a ban permanent) and in full every
``enforcer.reconcile_interval_s`` (a flushed chain, a deleted entry, a stray rule are put right). It
writes reports and heartbeats to ``reports`` and serves metrics (:mod:`enforcer.metrics`); the rails it
builds protect this host's and the brokers' addresses (:mod:`enforcer.hostaddrs`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from enforcer.backends.base import Backend
from enforcer.core import Enforcer
from enforcer.exceptions import BackendError
from enforcer.hostaddrs import broker_addresses, own_addresses
from enforcer.metrics import BACKEND, HANDLE_SECONDS, RECEIVE_SECONDS, RECONCILES, SYNCED, observe_many
from enforcer.plan import JailSpec, Rails
from fleet2ban import __version__
from fleet2ban.contract import Heartbeat, ban_key, encode, utcnow
from fleet2ban.exceptions import BrokerError
from fleet2ban.identity import Signer
from fleet2ban.kafka import Cluster, Source, TopicReader, admin_config, producer_config
from fleet2ban.kafka.reader import topic_partitions
from fleet2ban.logs import RateLimitedLog
from fleet2ban.settings import Settings

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

HEARTBEAT_APPLIED_MAX = 1000
"""At most this many ``JAIL|IP`` keys are listed in a heartbeat."""

GC_THRESHOLDS = (20_000, 20, 20)
"""The agent's garbage-collector thresholds. A ban allocates about ten objects on its way in (record,
state, verdict, change, report), so CPython's default (700, 10, 10) ran a young collection every ~70
bans and rescanned every ban in force as the set grew: 10,000 bans arriving at once cost about a quarter
more. Nothing here builds cycles at that rate."""


REPORTS_LINGER_MS = 1
"""The reports producer's linger: an applied report reaches its readers at most 1 ms after the commit it
reports (it was 5). Not 0: librdkafka then wakes its sender for every record and sends requests of one
report each; 10,000 reports cost 2-3 times the CPU (process, brokers) and 0.1-0.3 s instead of 0.05 s
to hand over, against 0.1 s with 1 ms (measured against a local one-node Kafka)."""
DRAIN_RECORDS = 500
"""Records taken from the consumer per poll (the batch's time bound is checked between polls)."""
DRAIN_MIN_S = 0.05
DRAIN_MAX_S = 0.25
"""How long one batch is read before it is reconciled, when records keep coming: as long as the last
incremental reconcile took, within [DRAIN_MIN_S, DRAIN_MAX_S]. A flood is applied in slices that overlap
its arrival, so when its last record is read only the last slice is left to apply (a fixed 0.25 s let
10,000 bans published at once pile up into one reconcile of all of them after the last one arrived). A
reconcile costs what changed, plus a fixed part (a transaction; for ipset above 64 changes a fork of
``ipset restore``, which on a loaded host took 0.1-0.2 s for a few hundred entries): reading for as long
as the last one took keeps that part at most about half of the time."""
DRAIN_MAX_RECORDS = 50_000
"""At most this many records per batch (the initial read of the topic is not reconciled until its end)."""


class Agent:
    """The Kafka shell around :class:`Enforcer`."""

    def __init__(self, settings: Settings, cluster: Cluster, backend: Backend) -> None:
        self.settings = settings
        self.cluster = cluster
        self.backend = backend
        self.jails = [JailSpec.from_settings(j) for j in settings.jails if j.enabled]
        self.host = settings.enforcer.host
        self._key = self.host.encode()
        """The key of every record this enforcer writes to ``reports``."""
        self.enforcer = Enforcer(backend, self._rails([]), self.jails, self.host)
        self.signer = Signer.from_settings(self.host, settings.identity)
        """Signs every reports record with this host's key (DESIGN §8), when it has one."""
        self.started_at = utcnow()
        self.synced = False
        self.lag = 0.0
        self._brokers: list[str] = [cluster.bootstrap]
        self._last_full_ok: float | None = None
        self._last_error: str | None = None
        self._ingested = 0
        self._last_apply_s = 0.0
        """How long the last incremental reconcile took (it bounds how long the next batch is read)."""
        self._first_read = 0.0
        """perf_counter() when the first record of the batch being read was fed."""
        self._received: list[float] = []
        """Kafka hops of the live records of the batch being read (observed together after it)."""
        self.stop_event = threading.Event()

    def _rails(self, extra_brokers: Sequence[str]) -> Rails:
        brokers = broker_addresses([*self.cluster.bootstrap.split(","), *extra_brokers])
        return Rails.build(self.settings.enforcer, self.settings.jails, own=own_addresses(), brokers=brokers)

    # -- health

    def health(self) -> tuple[bool, dict[str, Any]]:
        interval = self.settings.enforcer.reconcile_interval_s
        fresh = self._last_full_ok is not None and time.monotonic() - self._last_full_ok < 3 * interval + 30
        ok = self.synced and fresh
        return ok, {
            "synced": self.synced,
            "backend": self.backend.name,
            "active": len(self.enforcer.applied),
            "last_error": self._last_error,
        }

    # -- the loop

    def run(self) -> None:
        from confluent_kafka import Producer

        topics = self.cluster.topics
        gc.set_threshold(*GC_THRESHOLDS)
        producer = Producer(producer_config(self.cluster, linger_ms=REPORTS_LINGER_MS))
        reader: TopicReader | None = None
        try:
            parts = self._wait_for_partitions(topics.bans)
            if not parts:
                return
            extra = self._broker_addresses()
            self._brokers = list(dict.fromkeys([*self._brokers, *extra]))
            self.enforcer.rails = self._rails(extra)
            log.info(
                "enforcer on host %s: %s; following %s (%d partitions) from the beginning",
                self.host,
                self.backend.describe(),
                topics.bans,
                len(parts),
            )
            reader = TopicReader(
                self.cluster,
                [Source("bans", topics.bans), Source("allow", topics.allow)],
                self._ingest,
                track_positions=False,
            )
            sync_started = time.monotonic()
            interval = self.settings.enforcer.reconcile_interval_s
            hb_interval = self.settings.metrics.heartbeat_interval_s
            next_full = 0.0
            next_hb = 0.0
            while not self.stop_event.is_set():
                got = self._drain(reader)
                if not self.synced and reader.caught_up:
                    self.synced = True
                    SYNCED.set(1)
                    log.info(
                        "read %s to its end in %.2fs: %d bans in the active set",
                        topics.bans,
                        time.monotonic() - sync_started,
                        len(self.enforcer.bans),
                    )
                    next_full = 0.0
                if self.synced:
                    mono = time.monotonic()
                    due = self.enforcer.due()
                    if mono >= next_full:
                        if self._reconcile(full=True):
                            next_full = mono + interval
                            self.enforcer.live = True
                        else:
                            next_full = mono + min(interval, 2.0)
                    elif self.enforcer.live and (got or (due is not None and due <= utcnow())):
                        self._reconcile(full=False)
                    self._publish(producer, topics.reports)
                    if got and self.enforcer.live:
                        HANDLE_SECONDS.observe(time.perf_counter() - self._first_read)
                    if mono >= next_hb:
                        self._heartbeat(producer, topics.reports, reader, hb_interval)
                        next_hb = mono + hb_interval
                producer.poll(0)
        finally:
            self._publish(producer, topics.reports)
            producer.flush(5)
            if reader is not None:
                reader.close()

    def _broker_addresses(self) -> list[str]:
        """host:port of every broker of the cluster (never banned: the safety rails)."""
        from confluent_kafka.admin import AdminClient

        try:
            meta = AdminClient({**admin_config(self.cluster), "log_level": 0}).list_topics(timeout=10)
        except Exception as exc:
            rlog.warning(
                "brokers", "cannot list the Kafka brokers (%s): only the bootstrap is protected", exc
            )
            return []
        return [f"{b.host}:{b.port}" for b in meta.brokers.values()]

    def _wait_for_partitions(self, topic: str) -> list[int]:
        while not self.stop_event.is_set():
            try:
                parts = topic_partitions(self.cluster, topic)
                if parts:
                    return parts
                rlog.warning(
                    "no-topic", "topic %s does not exist yet; waiting (fleet2ban topics create)", topic
                )
            except BrokerError as exc:
                rlog.warning("no-kafka", "%s; retrying", exc)
            self.stop_event.wait(1.0)
        return []

    def _ingest(self, kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        if kind == "allow":
            self.enforcer.ingest_allow(key, value)
        else:
            self.enforcer.ingest(key, value)
            if self.synced and ts is not None:
                self._received.append(max(0.0, time.time() - ts.timestamp()))
        if not self._ingested:
            self._first_read = time.perf_counter()
        self._ingested += 1

    def _drain(self, reader: TopicReader) -> int:
        """Read what is available (one batch, up to a bound); return how many records were ingested.

        The reader returns at the first record with whatever the consumer already holds: waiting for
        more would delay every ban (records arrive a fetch response at a time, and a reconcile costs
        what changed)."""
        self._ingested = 0
        try:
            reader.poll(0.2, DRAIN_RECORDS)
            deadline = time.monotonic() + min(DRAIN_MAX_S, max(DRAIN_MIN_S, self._last_apply_s))
            while self._ingested and time.monotonic() < deadline and self._ingested < DRAIN_MAX_RECORDS:
                if not reader.poll(0, DRAIN_RECORDS):
                    break
        except BrokerError as exc:
            rlog.warning("consume", "reading bans: %s (retrying)", exc)
            self.stop_event.wait(1.0)
        observe_many(RECEIVE_SECONDS, self._received)
        self._received.clear()
        return self._ingested

    def _reconcile(self, full: bool) -> bool:
        try:
            if full:
                self.enforcer.rails = self._rails(self._brokers[1:])
            outcome = self.enforcer.reconcile(full)
        except Exception as exc:  # a backend or kernel error: never fatal, the next pass retries
            RECONCILES.labels("full" if full else "incremental", "error").inc()
            self._last_error = f"{type(exc).__name__}: {exc}"
            rlog.error("reconcile", "reconcile failed (retrying): %s", self._last_error)
            log.debug("reconcile failure", exc_info=True)
            return False
        if outcome.changes:
            log.info(
                "%s reconcile: +%d -%d (%d failed) in %.3fs",
                "full" if full else "incremental",
                len(outcome.changes.adds),
                len(outcome.changes.deletes),
                outcome.failed,
                outcome.seconds,
            )
        if not full:
            self._last_apply_s = outcome.seconds
        if full:
            self._last_full_ok = time.monotonic()
            self._last_error = None
            try:
                for name, value in self.backend.metrics().items():
                    BACKEND.labels(name).set(value)
            except BackendError as exc:
                rlog.warning("metrics", "backend metrics: %s", exc)
        return True

    def _publish(self, producer: Any, topic: str) -> None:
        for report in self.enforcer.take_reports():
            self._produce(producer, topic, encode(report))

    def _produce(self, producer: Any, topic: str, value: bytes) -> None:
        key = self._key
        headers = None if self.signer is None else self.signer.headers("reports", key, value)
        for _ in range(3):
            try:
                producer.produce(topic, key=key, value=value, headers=headers)
                return
            except BufferError:
                producer.poll(0.5)
        rlog.error("produce", "reports queue full: a report was dropped")

    def _heartbeat(self, producer: Any, topic: str, reader: TopicReader, interval: float) -> None:
        self.lag = float(reader.behind())
        keys = sorted(ban_key(j, t) for j, t in self.enforcer.applied)
        counters: dict[str, float] = {k: float(v) for k, v in self.enforcer.counters.items()}
        counters["active"] = float(len(self.enforcer.applied))
        counters["active_set"] = float(len(self.enforcer.bans))
        at = utcnow()
        # every bans record read so far is reconciled by now (the loop reconciles before it beats)
        positions = reader.positions()
        bans_topic = self.cluster.topics.bans
        offsets = {p: off for (t, p), off in positions.items() if t == bans_topic} if positions else None
        hb = Heartbeat(
            host=self.host,
            role="enforcer",
            at=at,
            instance=self.backend.name,
            version=__version__,
            started_at=self.started_at,
            interval_s=interval,
            lag=self.lag,
            counters=counters,
            applied=keys[:HEARTBEAT_APPLIED_MAX],
            applied_total=len(keys) if len(keys) > HEARTBEAT_APPLIED_MAX else None,
            applied_digest=self.enforcer.applied_digest(at) if offsets is not None else None,
            bans_offsets=offsets,
        )
        self._produce(producer, topic, encode(hb))
