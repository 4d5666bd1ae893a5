"""One address's failures as the shippers saw them: its ``events`` records, read from its one partition.

Added for the web console's per-IP timeline (failures per host). Every line of an address is in the
``events`` partition :func:`~fleet2ban.contract.partition_for` gives it (a v2 record holds the lines of
many addresses of one partition, a v1 record those of one address, keyed by it); the read seeks there by
time, skips records that do not mention the address, and keeps only the lines of the address.
"""

from __future__ import annotations

import logging
from datetime import datetime

from fleet2ban.audit.reader import Source, TopicReader, partition_count
from fleet2ban.contract import ContractError, Event, decode_events, events_partition, normalize_ip
from fleet2ban.kafka import Cluster
from fleet2ban.logs import RateLimitedLog

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)


def read_failures(
    cluster: Cluster,
    ip: str,
    since: datetime,
    until: datetime | None = None,
    *,
    max_events: int = 200_000,
    timeout: float = 30.0,
) -> list[Event]:
    """The events (one per ``07-0013`` line) of address ``ip`` recorded in ``[since, until]``, at most
    ``max_events`` (the earliest ones). A network target (CIDR) has no events of its own: empty list."""
    if "/" in ip:
        return []
    target = normalize_ip(ip)
    topic = cluster.topics.events
    n = partition_count(cluster, topic)
    if not n:
        return []
    out: list[Event] = []

    def feed(_kind: object, _key: bytes | None, value: bytes | None, _ts: datetime | None) -> None:
        if len(out) >= max_events:
            return
        try:
            events = decode_events(value)
        except ContractError as exc:
            rlog.warning("bad-event", "skipped an events record that breaks the contract: %s", exc)
            return
        out.extend([e for e in events if e.ip == target][: max_events - len(out)])

    # The reader's kinds name the audit topics; the kind is only passed back to ``feed``, which ignores it.
    src = Source(
        "decisions",
        topic,
        since=since,
        until=until,
        partitions=(events_partition(target, n, cluster.settings.partition_prefix_v6),),
    )
    with TopicReader(cluster, [src], feed, value_contains=target.encode()) as reader:
        reader.catch_up(timeout)
    out.sort(key=lambda e: e.ts)
    return out
