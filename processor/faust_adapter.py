"""Everything the processor asks of Faust, in one place: the only module that imports ``faust`` or reads
its private attributes. The rest of the processor sees plain partition numbers, offsets and callables.

What is private and why it is used (each in one small function here):
- ``consumer._committed_offset``: where this worker's stream of a partition started (the group's committed
  offset), for the rebuild's "records the stream skipped" and the stall watchdog's starting point;
- ``consumer._read_offset``: the last offset read per partition, for the lag gauge;
- ``App.on_init_dependencies`` overridden: the Monitor sensor replaced by a no-op one (:func:`app_class`);
- ``Table.partition_for_key`` replaced (:func:`create_table`): the changelog partition of a key is the
  contract's, computed here, never asked of aiokafka's metadata; ``Table.get`` too: a missing key costs a
  membership test, not a KeyError raised and caught;
- ``Worker.spinner`` cleared (:func:`run`): its handler would put the root logger at DEBUG;
- ``App._new_producer`` overridden and ``Producer._settings_extra`` extended (:func:`app_class`): the
  app's producer is idempotent (:data:`IDEMPOTENT`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fleet2ban.kafka import Cluster, faust_broker_settings
from fleet2ban.settings import Settings

log = logging.getLogger("fleet2ban.processor")

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
"""Topics and tables of bytes: fleet2ban's contract encodes and decodes, never Faust's codecs."""

IDEMPOTENT: dict[str, Any] = {"acks": "all", "enable_idempotence": True}
"""What the worker's producer (aiokafka's ``AIOKafkaProducer``) is created with, on top of Faust's settings.

Faust asks aiokafka for idempotence only inside transactions (``processing_guarantee="exactly_once"``,
whose per-partition transactional producers fleet2ban does not use). Without it a send retried after a
leader died (``kill -9``: the record replicated, its acknowledgement lost) writes the same decision, ban or
changelog record twice. With it the producer takes a producer id (InitProducerId) and numbers its batches,
and the partition leader drops a batch it already has. aiokafka keeps one batch in flight per partition,
so retries keep the order; it requires ``acks=all``."""


def app_class() -> Any:
    import faust
    from faust.transport.drivers.aiokafka import Producer

    class IdempotentProducer(Producer):
        """Faust's aiokafka producer, idempotent outside transactions too (:data:`IDEMPOTENT`)."""

        def _settings_extra(self) -> Any:
            return {**super()._settings_extra(), **IDEMPOTENT}

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

        def _new_producer(self) -> Any:
            """The app's one producer (decisions, bans, reports, the table's changelog), idempotent. What
            ``Transport.create_producer`` does, with this class: the brokers are always ``kafka://`` URLs
            (:func:`fleet2ban.kafka.faust_broker_settings`), i.e. Faust's aiokafka transport."""
            return IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)

    return App


def create_app(settings: Settings, cluster: Cluster, app_id: str) -> Any:
    """The Faust app of a worker: group timings from the ``processor`` settings, the web server off unless
    ``processor.web_port`` is set, no topic declared (the changelog is made by ``ensure_topics``), no
    leader topic (nothing runs on_leader)."""
    p = settings.processor
    data_dir = p.data_dir or (settings.resolved_state_dir() / "processor")
    data_dir.mkdir(parents=True, exist_ok=True)
    return app_class()(
        app_id,
        store=p.store,
        datadir=str(data_dir),
        table_standby_replicas=0,
        web_enabled=bool(p.web_port),
        web_port=p.web_port or 6066,
        stream_wait_empty=False,
        broker_commit_interval=1.0,
        topic_allow_declare=False,
        topic_disable_leader=True,
        **faust_broker_settings(cluster, p),
    )


def raw_topic(app: Any, name: str) -> Any:
    """A topic of bytes keys and values (its ``send(key=, value=)`` is a ``processor.publish.Sink``)."""
    return app.topic(name, **RAW)


def create_table(app: Any, name: str, partitions: int, partition_for_key: Callable[[bytes], int]) -> Any:
    """A changelogged table of bytes (a ``processor.driver.StateStore``) whose keys go to the changelog
    partition ``partition_for_key`` names.

    The changelog partition of a key is computed by fleet2ban (the contract's murmur2, what aiokafka's
    partitioner would pick): Faust asks the producer's partitioner synchronously, from metadata aiokafka
    may not hold for the changelog topic (after a broker died, its refresh can leave the topic out), and
    the agent then crashed on ``partitions_for_topic(...) is None`` in the middle of a record. The table
    is written outside stream iteration (the timer), hence ``use_partitioner``."""
    table = app.Table(
        name,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        use_partitioner=True,
    )
    table.partition_for_key = partition_for_key

    def get(key: bytes, default: Any = None) -> Any:
        """``table.get`` without Faust's KeyError for a missing key (Mapping.get catching what
        ``Table.__missing__`` raises): a worker looks up every target it meets for the first time, and
        in a distributed attack most are not in the table."""
        return table[key] if key in table else default  # noqa: SIM401 - table.get is what this replaces

    table.get = get
    return table


def group_id(app: Any) -> str:
    """The app's consumer group (= its id)."""
    return str(app.conf.id)


def busy(app: Any) -> bool:
    """Whether the worker is in a rebalance or recovering its tables (timers then leave state alone)."""
    return bool(app.rebalancing or getattr(app, "in_recovery", False))


def active_partitions(app: Any, topic: str) -> list[Any]:
    """The partitions (TPs) of ``topic`` actively assigned to this worker."""
    return [tp for tp in app.assignor.assigned_actives() if tp.topic == topic]


def committed_offset(app: Any, tp: Any) -> int | None:
    """The group's committed offset of ``tp`` as the consumer loaded it at assignment (private)."""
    committed = app.consumer._committed_offset.get(tp)
    return committed if isinstance(committed, int) else None


def read_offset(app: Any, tp: Any) -> int | None:
    """The last offset the consumer read of ``tp`` (private)."""
    pos = app.consumer._read_offset.get(tp)
    return pos if isinstance(pos, int) else None


class TopicConsumer:
    """This worker's consumer of one topic, by partition number (``processor.rebalance.Offsets`` and
    ``processor.periodic.Consumer``)."""

    def __init__(self, app: Any, topic: str) -> None:
        self.app = app
        self.topic = topic

    def _tp(self, partition: int) -> Any:
        from faust.types import TP

        return TP(self.topic, partition)

    def busy(self) -> bool:
        return busy(self.app)

    def actives(self) -> list[int]:
        return [tp.partition for tp in active_partitions(self.app, self.topic)]

    def committed(self, partition: int) -> int | None:
        """The committed offset of an actively assigned partition (None for any other)."""
        for tp in active_partitions(self.app, self.topic):
            if tp.partition == partition:
                return committed_offset(self.app, tp)
        return None

    def position(self, partition: int) -> int | None:
        return read_offset(self.app, self._tp(partition))

    def highwater(self, partition: int) -> int | None:
        hw = self.app.consumer.highwater(self._tp(partition))
        return hw if isinstance(hw, int) else None

    async def earliest(self, partition: int) -> int | None:
        tp = self._tp(partition)
        got = (await self.app.consumer.earliest_offsets(tp)).get(tp)
        return got if isinstance(got, int) else None

    async def seek(self, partition: int, offset: int) -> None:
        await self.app.consumer.seek(self._tp(partition), offset)


def on_assigned(app: Any, topic: str, handler: Callable[[set[int]], Awaitable[None]]) -> None:
    """Call ``handler`` with the partitions of ``topic`` assigned to this worker after each rebalance."""

    async def receiver(sender: Any, assigned: Any, **kwargs: Any) -> None:
        await handler({tp.partition for tp in assigned if tp.topic == topic})

    app.on_partitions_assigned.connect(receiver, weak=False)


def load() -> None:
    """Import Faust (a worker imports it before choosing its event loop, as it always has)."""
    import faust  # noqa: F401


def run(app: Any, loglevel: str) -> None:
    """Run ``app`` as a worker in this process until SIGINT/SIGTERM, fleet2ban's logging kept."""
    import faust

    worker = faust.Worker(
        app,
        loglevel=loglevel,
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    worker.spinner = None  # its handler would put the root logger at DEBUG (13% CPU)
    worker.execute_from_commandline()
