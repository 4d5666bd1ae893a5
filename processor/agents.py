"""The worker's three input streams: ``events`` and ``decisions`` (Faust agents of this worker's
partitions, :class:`Agents`) and ``allow`` (the whole topic, read by every worker: :class:`AllowFollower`).

An agent iterates a stream of records, each with ``message.partition``, ``offset``, ``timestamp``,
``key``, ``value`` and ``headers`` (Faust's ``stream.events()``, or any async iterable of such in tests).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fleet2ban.kafka import Cluster, Source, TopicReader
from fleet2ban.logs import RateLimitedLog
from processor.driver import Processor
from processor.policy import Output
from processor.rebalance import Rebalancer

log = logging.getLogger("fleet2ban.processor")
rlog = RateLimitedLog(log)

Publish = Callable[[list[Output]], Awaitable[None]]


@dataclass
class Agents:
    processor: Processor
    rebalancer: Rebalancer
    publish: Publish

    async def events(self, stream: Any) -> None:
        """Each ``events`` record after :meth:`Rebalancer.before` (rebuild, gap fill), then the core."""
        proc = self.processor
        before = self.rebalancer.before
        out: list[Output] = []
        async for event in stream.events():
            msg = event.message
            await before(msg.partition, msg.offset, msg.timestamp)
            proc.on_events_record(msg.key, msg.value, out, partition=msg.partition, headers=msg.headers)
            if out:
                await self.publish(out)
                out.clear()

    async def decisions(self, stream: Any) -> None:
        """Each ``decisions`` record: operators' decisions applied and mirrored."""
        out: list[Output] = []
        async for event in stream.events():
            self.processor.on_decision_record(event.message.value, out)
            if out:
                await self.publish(out)
                out.clear()


@dataclass
class AllowFollower:
    """Every worker follows the whole ``allow`` topic (no group) in a thread; each record changes the
    allow-list here, on the event loop, and lifts the bans an entry covers on this worker's targets
    (not during a rebalance: the sweep after the assignment lifts those)."""

    processor: Processor
    cluster: Cluster
    topic: str
    publish: Publish
    busy: Callable[[], bool]
    """In a rebalance or a recovery (then no target is taken as this worker's)."""
    owner: Callable[[], Callable[[bytes], bool]]
    """Whether a key's partition is actively assigned to this worker (now)."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pending: list[tuple[bytes | None, bytes | None]] = []
        wake = asyncio.Event()
        stop = threading.Event()

        def push(key: bytes | None, value: bytes | None) -> None:
            pending.append((key, value))
            wake.set()

        def feed(_kind: str, key: bytes | None, value: bytes | None, _ts: object) -> None:
            loop.call_soon_threadsafe(push, key, value)

        thread = threading.Thread(target=self._read, args=(feed, stop), name="allow-list", daemon=True)
        thread.start()
        try:
            while True:
                await wake.wait()
                wake.clear()
                batch = pending[:]
                pending.clear()
                await self.apply(batch)
        finally:
            stop.set()

    async def apply(self, batch: list[tuple[bytes | None, bytes | None]]) -> None:
        """A batch of ``allow`` records (key, value) into the allow-list, then the bans they lift."""
        proc = self.processor
        own = (lambda _key: False) if self.busy() else self.owner()
        out: list[Output] = []
        now = time.time()
        fresh = [e for key, value in batch if (e := proc.ingest_allow(key, value, now)) is not None]
        proc.lift_covered(fresh, now, own, out)
        if out:
            await self.publish(out)

    def _read(
        self, feed: Callable[[str, bytes | None, bytes | None, object], None], stop: threading.Event
    ) -> None:
        """The reading thread: the topic from its start, again after a broker outage; waits for a topic
        not created yet."""
        while not stop.is_set():
            try:
                with TopicReader(self.cluster, [Source("allow", self.topic)], feed) as reader:
                    if not reader.partitions.get(self.topic):  # not created yet: look again
                        stop.wait(10.0)
                        continue
                    while not stop.is_set():
                        reader.poll(0.5)
            except Exception as exc:  # a broker outage: read the topic again from its start
                rlog.warning("allow-read", "reading %s: %s (retrying)", self.topic, exc)
                stop.wait(2.0)
