"""The worker's timers as one object: ban expiry and forgetting (:meth:`Periodic.expire`), the heartbeat on
``reports``, the lag gauge, and the stall watchdog.

The consumer is seen through :class:`Consumer` (``processor.faust_adapter.TopicConsumer`` in the worker),
so each timer runs in tests with a fake.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from fleet2ban import __version__
from fleet2ban.contract import Heartbeat, encode, utcnow
from fleet2ban.logs import RateLimitedLog
from processor import metrics as m
from processor.driver import Processor
from processor.policy import Output
from processor.publish import Sink
from processor.rebalance import Progress

log = logging.getLogger("fleet2ban.processor")
rlog = RateLimitedLog(log)

STALL_S = 10.0
"""An events partition with records waiting behind its highwater and none processed for this long is
re-sought (:meth:`Periodic.watchdog`)."""


def stalled(highwater: int | None, next_offset: int | None, idle_s: float, bound_s: float) -> bool:
    """Whether records wait at ``next_offset`` below ``highwater`` with no progress for ``bound_s``."""
    if highwater is None or next_offset is None:
        return False
    return highwater > next_offset and idle_s >= bound_s


class Consumer(Protocol):
    """This worker's consumer of the events topic, by partition number."""

    def busy(self) -> bool:
        """In a rebalance or a recovery: timers leave state alone."""
        ...

    def actives(self) -> list[int]:
        """The partitions actively assigned to this worker now."""
        ...

    def committed(self, partition: int) -> int | None: ...

    def position(self, partition: int) -> int | None:
        """The last offset read."""
        ...

    def highwater(self, partition: int) -> int | None: ...

    async def earliest(self, partition: int) -> int | None: ...

    async def seek(self, partition: int, offset: int) -> None: ...


@dataclass
class Periodic:
    """What runs on the wall clock. None of it runs during a rebalance or a recovery (but the gauge)."""

    processor: Processor
    consumer: Consumer
    publish: Callable[[list[Output]], Awaitable[None]]
    progress: Progress
    """The stream's progress per partition (``processor.rebalance.Rebalancer.progress``)."""
    assigned: Collection[int]
    """The events partitions assigned to this worker (``Rebalancer.assigned``)."""
    reports: Sink
    instance: str
    heartbeat_interval_s: float
    host: str = field(default_factory=socket.gethostname)
    started_at: datetime = field(default_factory=utcnow)
    lag: float = 0.0
    """The last lag the gauge measured (records behind the highwater), for the heartbeat."""

    def owner(self) -> Callable[[bytes], bool]:
        """Whether a key's partition is actively assigned to this worker (now)."""
        return self.processor.owner(set(self.consumer.actives()))

    async def expire(self) -> None:
        """End the bans due and forget idle state (``Processor.tick``), on this worker's partitions."""
        if self.consumer.busy():
            return
        out: list[Output] = []
        self.processor.tick(time.time(), self.owner(), out)
        if out:
            await self.publish(out)
        m.export_counters(self.processor.policy.counters)

    async def heartbeat(self) -> None:
        """A heartbeat on ``reports`` (role processor): partitions, lag, what it consumed and decided, so
        ``fleet2ban status`` shows the component every ban depends on.

        Not during a rebalance or a recovery (as the expiry timer): a send awaited then held the worker's
        partitions unprocessed for 45-90 s after a second worker joined (tests/processor/test_failover)."""
        if self.consumer.busy():
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
            "partitions": float(len(self.assigned)),
            "records": total("fleet2ban_processor_records_total"),
            "lines": total("fleet2ban_processor_lines_total"),
            "decisions": decided,
            "rebuilds": total("fleet2ban_processor_rebuilds_total", {"outcome": "ok"}),
            "active_bans": total("fleet2ban_processor_active_bans"),
        }
        hb = Heartbeat(
            host=self.host,
            role="processor",
            at=utcnow(),
            instance=self.instance,
            version=__version__,
            started_at=self.started_at,
            interval_s=self.heartbeat_interval_s,
            lag=self.lag,
            counters=counters,
        )
        try:
            await self.reports.send(key=self.host.encode(), value=encode(hb))
        except Exception as exc:  # a heartbeat is best effort
            rlog.warning("heartbeat", "processor heartbeat not sent: %s", exc)

    async def gauges(self) -> None:
        """The lag gauge: records behind the highwater over this worker's partitions."""
        lag = 0
        consumer = self.consumer
        try:
            for p in consumer.actives():
                hw = consumer.highwater(p)
                pos = consumer.position(p)
                if hw is not None:
                    lag += max(0, hw - (pos + 1 if pos is not None else 0))
        except Exception as exc:  # metrics are best effort
            log.debug("lag: %s", exc)
        m.LAG.set(lag)
        self.lag = float(lag)

    async def watchdog(self) -> None:
        """Re-seek an events partition whose records wait behind its highwater but are not processed.

        Faust can drop records fetched while a freshly assigned partition is being resumed (seen after a
        kill -9 and restart: the records stay unprocessed until the next rebalance). Seeking back to the
        next unprocessed offset re-fetches them; at worst a record is seen twice, which the core counts
        once (line ids) and never turns into a second decision."""
        consumer = self.consumer
        if consumer.busy():
            return
        next_offset = self.progress.next_offset
        progress_at = self.progress.progress_at
        try:
            now = time.monotonic()
            for p in consumer.actives():
                nxt = next_offset.get(p, consumer.committed(p))
                if nxt is None:  # nothing processed or committed yet: it starts at the earliest record
                    nxt = await consumer.earliest(p)
                hw = consumer.highwater(p)
                idle = now - progress_at.setdefault(p, now)
                if nxt is not None and stalled(hw, nxt, idle, STALL_S):
                    m.STALLS.inc()
                    log.warning(
                        "events partition %d stalled at offset %d (highwater %d) for %.0fs: seeking back",
                        p,
                        nxt,
                        hw,
                        idle,
                    )
                    progress_at[p] = now
                    await consumer.seek(p, nxt)
        except Exception as exc:  # the watchdog must never take the worker down
            log.debug("watchdog: %s", exc)
