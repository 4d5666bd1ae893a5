"""The processor's Prometheus metrics (one set per process)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram

from fleet2ban.safetext import printable
from processor.policy import Counters

RECORDS = Counter("fleet2ban_processor_records_total", "events records consumed")
BAD_RECORDS = Counter(
    "fleet2ban_processor_bad_records_total", "records skipped as invalid, by topic and why", ["topic", "why"]
)
REPLAYED = Counter(
    "fleet2ban_processor_replayed_records_total",
    "events records read back to rebuild failure windows after a partition assignment",
)
REBUILDS = Counter(
    "fleet2ban_processor_rebuilds_total", "window rebuilds of an events partition, by outcome", ["outcome"]
)
REBUILD_SECONDS = Histogram(
    "fleet2ban_processor_rebuild_seconds",
    "time to rebuild one events partition's windows (read back + replay)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GAPS = Counter(
    "fleet2ban_processor_stream_gaps_total",
    "times the Faust stream skipped events records (read back and processed before going on)",
)
SKIPPED = Counter(
    "fleet2ban_processor_skipped_records_total",
    "events records never processed, by why (retention: deleted by the broker before this group read them)",
    ["reason"],
)
LINES = Counter("fleet2ban_processor_lines_total", "07-0013 lines consumed (inside events records)")
CORE = Counter(
    "fleet2ban_processor_core_total",
    "what the jail core saw: failures counted, duplicates, late (not counted), evidence (while banned), "
    "ignored (ignoreip), allowed (the live allow-list), not_failure (reason not in the jail), bans, unbans, manual",
    ["what"],
)
DECISIONS = Counter(
    "fleet2ban_processor_decisions_total", "decisions written or mirrored", ["action", "origin"]
)
ACTIVE_BANS = Gauge("fleet2ban_processor_active_bans", "bans in force in this worker's partitions")
TABLE_SIZE = Gauge(
    "fleet2ban_processor_table_keys",
    "targets remembered by this worker (windows in memory, bans in the table)",
)
STALLS = Counter(
    "fleet2ban_processor_stalls_total", "events partitions found stalled behind their highwater and re-sought"
)
LAG = Gauge("fleet2ban_processor_consumer_lag", "events records not yet processed (this worker)")
DECISION_DELAY = Histogram(
    "fleet2ban_processor_decision_delay_seconds",
    "wall-clock delay from a ban's triggering failure (event time) to the decision being sent",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

FUTURE = Counter(
    "fleet2ban_processor_future_total",
    "failures and manual decisions dated beyond processor.max_future_s ahead of the processor's clock"
    " (not applied), by sending host (a clock running ahead, or a forged time)",
    ["host"],
)

_last: dict[str, int] = {}
_last_future: dict[str, int] = {}
log = logging.getLogger(__name__)


def export_counters(c: Counters) -> None:
    """Move the core's counters (plain ints, monotonic) into Prometheus."""
    for name, value in c.as_dict().items():
        prev = _last.get(name, 0)
        if value > prev:
            CORE.labels(name).inc(value - prev)
            _last[name] = value
    for host, n in list(c.future_hosts.items()):
        prev = _last_future.get(host, 0)
        if n > prev:
            FUTURE.labels(host).inc(n - prev)
            _last_future[host] = n
            log.warning(
                "%d record(s) from %s dated beyond processor.max_future_s ahead of this clock were rejected"
                " (is its clock ahead?)",
                n - prev,
                printable(host),
            )
