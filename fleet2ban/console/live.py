"""The console's live copy of the fleet: a background thread following ``bans``, ``reports`` and
``decisions`` into a :class:`FleetView`, through the audit layer's :class:`TopicReader`.

- Start: connect, read every topic to its end into a fresh view, then swap it in (pages show
  "loading" until then), and follow live; each batch of records bumps ``version`` and wakes listeners
  (the pages' server-sent event streams).
- The broker goes away: a probe (the audit layer's :func:`connect`) fails within ``probe_timeout``, the
  status turns to disconnected (pages show a banner, keeping the last known state) and the thread retries
  every ``retry_interval``; when the broker answers again the view is rebuilt from scratch (the broker
  may have lost or changed its data meanwhile), and the banner goes.
- A topic that did not exist yet is re-checked at every probe; once it appears the view is rebuilt.

Readers call :meth:`LiveFleet.read` to get the view under the lock (keep the work short).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from fleet2ban.audit.reader import Source, TopicReader, connect, partition_count
from fleet2ban.audit.view import FleetView, TopicKind
from fleet2ban.contract import utcnow
from fleet2ban.exceptions import BrokerError
from fleet2ban.kafka import Cluster
from fleet2ban.kafka.reader import RecordHeaders
from fleet2ban.logs import RateLimitedLog
from fleet2ban.settings import KafkaSettings

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log, interval=30.0)

RawRecord = tuple[TopicKind, bytes | None, bytes | None, datetime | None, RecordHeaders]


@dataclass(frozen=True)
class LiveStatus:
    """What the pages' banner says."""

    connected: bool
    caught_up: bool
    error: str | None
    since: datetime
    """When this state began (disconnected since ..., connected since ...)."""
    version: int
    records: int
    bootstrap: str | None


class LiveFleet:
    """Follows the fleet's topics in a daemon thread; see the module docstring."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        reports_window: timedelta = timedelta(hours=1),
        decisions_window: timedelta = timedelta(hours=1),
        probe_interval: float = 2.0,
        probe_timeout: float = 2.0,
        retry_interval: float = 1.0,
        poll_timeout: float = 0.1,
        view_factory: Callable[[], FleetView] = FleetView,
    ) -> None:
        self.settings = settings
        self.reports_window = reports_window
        self.decisions_window = decisions_window
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.retry_interval = retry_interval
        self.poll_timeout = poll_timeout
        self._view_factory = view_factory
        self._lock = threading.RLock()
        self._view = view_factory()
        self._cluster: Cluster | None = None
        self._status = LiveStatus(False, False, None, utcnow(), 0, 0, settings.bootstrap_servers)
        self._listeners: list[Callable[[LiveStatus], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def fixed(cls, view: FleetView, settings: KafkaSettings | None = None) -> LiveFleet:
        """A follower that follows nothing and serves ``view`` as connected (tests, offline demos)."""
        live = cls(settings or KafkaSettings())
        live._view = view
        live._status = replace(live._status, connected=True, caught_up=True)
        return live

    # --------------------------------------------------------------------------------- reading

    @contextlib.contextmanager
    def read(self) -> Iterator[FleetView]:
        """The current view, under the lock (the follower waits meanwhile)."""
        with self._lock:
            yield self._view

    @property
    def status(self) -> LiveStatus:
        return self._status

    @property
    def cluster(self) -> Cluster | None:
        """The connected cluster (for on-demand reads: one IP, a history range); None when down."""
        return self._cluster if self._status.connected else None

    def subscribe(self, listener: Callable[[LiveStatus], None]) -> Callable[[], None]:
        """Call ``listener(status)`` (from the follower thread) after every change; returns unsubscribe."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def wait_until(self, predicate: Callable[[LiveStatus], bool], timeout: float) -> bool:
        """Wait (bounded) until ``predicate(status)`` holds; for the CLI's start-up and the tests."""
        deadline = time.monotonic() + timeout
        while not predicate(self._status):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> LiveFleet:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="console-live", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> LiveFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------------------------- the loop

    def _set(self, **changes: object) -> None:
        with self._lock:
            old = self._status
            new = replace(old, **changes)  # type: ignore[arg-type]
            if (new.connected, new.caught_up, new.error) != (old.connected, old.caught_up, old.error):
                new = replace(new, since=utcnow())
            self._status = replace(new, version=old.version + 1)
            listeners = list(self._listeners)
            status = self._status
        for listener in listeners:
            try:
                listener(status)
            except Exception:  # a listener never breaks the follower
                log.exception("console listener failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                cluster = connect(self.settings, timeout=self.probe_timeout)
                self._follow(cluster)
            except BrokerError as exc:
                if self._status.connected or self._status.error != str(exc):
                    log.warning("console: Kafka unavailable: %s", exc)
                self._set(connected=False, caught_up=self._status.caught_up, error=str(exc))
                self._stop.wait(self.retry_interval)
            except Exception as exc:  # never die: log, show it, retry
                rlog.error("follow", "console: following the topics failed: %s", exc)
                self._set(connected=False, error=f"internal error: {exc}")
                self._stop.wait(self.retry_interval)

    def _sources(self, cluster: Cluster, now: datetime) -> list[Source]:
        t = cluster.topics
        return [
            Source("bans", t.bans),
            Source("reports", t.reports, since=now - self.reports_window),
            Source("decisions", t.decisions, since=now - self.decisions_window),
        ]

    def _follow(self, cluster: Cluster) -> None:
        buf: list[RawRecord] = []
        now = utcnow()
        sources = self._sources(cluster, now)
        missing = [s.topic for s in sources if partition_count(cluster, s.topic, self.probe_timeout) == 0]
        view = self._view_factory()

        def fold(target: FleetView) -> int:
            n = len(buf)
            for kind, key, value, ts, headers in buf:
                if not target.add_raw(kind, key, value, ts, headers):
                    rlog.warning("bad-" + kind, "skipped a %s record: %s", kind, target.last_error)
            buf.clear()
            return n

        reader: TopicReader
        with TopicReader(
            cluster, sources, lambda *rec: buf.append((*rec, reader.headers)), track_headers=True
        ) as reader:
            self._set(connected=True, caught_up=False, error=None)
            last_ok = time.monotonic()
            while not reader.caught_up:
                if self._stop.is_set():
                    return
                got = reader.poll(0.2)
                fold(view)
                if got:
                    last_ok = time.monotonic()
                elif time.monotonic() - last_ok > self.probe_interval:
                    connect(self.settings, timeout=self.probe_timeout)
                    last_ok = time.monotonic()
            with self._lock:
                self._view = view
                self._cluster = cluster
            records = view.bans_seen + view.reports_seen + view.decisions_seen
            log.info(
                "console: caught up with %s (%d records%s)",
                cluster.bootstrap,
                records,
                f"; waiting for topics {', '.join(missing)}" if missing else "",
            )
            self._set(connected=True, caught_up=True, error=None, records=records)
            while not self._stop.is_set():
                got = reader.poll(self.poll_timeout)
                if buf:
                    with self._lock:
                        n = fold(view)
                    self._set(records=self._status.records + n)
                if got:
                    last_ok = time.monotonic()
                elif time.monotonic() - last_ok > self.probe_interval:
                    connect(self.settings, timeout=self.probe_timeout)
                    last_ok = time.monotonic()
                    if missing and any(partition_count(cluster, t, self.probe_timeout) for t in missing):
                        log.info("console: topics appeared: re-reading")
                        return
