"""The enforcer's Prometheus metrics (served by fleet2ban.metrics on ``metrics.port``)."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

ACTIVE = Gauge("fleet2ban_enforcer_active_bans", "bans in force in the kernel (as last reconciled)")
WANTED = Gauge("fleet2ban_enforcer_wanted_bans", "bans the active set says should be in force")
CAP_ALARM = Gauge(
    "fleet2ban_enforcer_cap_alarm", "1 when active bans exceed enforcer.alarm_ratio of max_bans"
)
SYNCED = Gauge("fleet2ban_enforcer_synced", "1 once the bans topic was read to its end")
APPLY_SECONDS = Histogram(
    "fleet2ban_enforcer_apply_batch_seconds",
    "time to apply one batch of changes to the kernel",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DELAY_SECONDS = Histogram(
    "fleet2ban_enforcer_decision_to_applied_seconds",
    "from a ban's decision time to its entry in this host's kernel (live bans only)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RECEIVE_SECONDS = Histogram(
    "fleet2ban_enforcer_bans_receive_seconds",
    "from a bans record's timestamp (the processor writing it) to this enforcer reading it, once synced:"
    " the Kafka hop of the enforce stage (clocks of two hosts)",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HANDLE_SECONDS = Histogram(
    "fleet2ban_enforcer_live_batch_seconds",
    "from reading the first record of a live batch of bans records to its reports handed to the producer"
    " (reading the batch, the reconcile, the reports): what the enforcer itself adds to the enforce stage",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CORRECTIONS = Counter(
    "fleet2ban_enforcer_reconcile_corrections_total",
    "drift a full reconcile found and repaired",
    ["kind"],  # missing, stray, structure
)
ACTIONS = Counter("fleet2ban_enforcer_actions_total", "reports written, by kind", ["kind"])
_ACTION_BY_KIND: dict[str, Any] = {}
"""ACTIONS' child per kind (a ``labels()`` lookup takes a lock and a hash per report)."""
INVALID = Counter("fleet2ban_enforcer_invalid_records_total", "bans records that broke the contract")
RECONCILES = Counter("fleet2ban_enforcer_reconciles_total", "reconcile passes", ["mode", "outcome"])
BACKEND = Gauge("fleet2ban_enforcer_backend_gauge", "backend gauges (set fill ratios)", ["name"])


def action(kind: str) -> Any:
    """ACTIONS' child for ``kind`` (cached)."""
    child = _ACTION_BY_KIND.get(kind)
    if child is None:
        child = _ACTION_BY_KIND[kind] = ACTIONS.labels(kind)
    return child


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe(a)`` for every ``a``, with one increment per bucket touched and one of the sum:
    a batch of 10,000 bans observed one by one took a lock three times each (about 2 us a ban). Uses the
    histogram's buckets as prometheus_client keeps them (``_upper_bounds``, ``_buckets``, ``_sum``; the
    version is locked, and a test compares this with ``observe``)."""
    bounds = histogram._upper_bounds
    counts: Tally[int] = Tally()
    total = 0.0
    for amount in amounts:
        counts[bisect_left(bounds, amount)] += 1  # the first bound >= amount, as observe's scan finds
        total += amount
    if not counts:
        return
    histogram._sum.inc(total)
    buckets = histogram._buckets
    for i, n in counts.items():
        buckets[i].inc(n)
