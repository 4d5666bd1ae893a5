"""Central ban auditing: the query layer over ``decisions``, ``bans`` and ``reports``.

Shared by the operator CLI (``fleet2ban bans …``, ``status``, ``audit verify``) and the web console; it
returns typed objects (:mod:`.model`, msgspec structs that encode to JSON as they are), never tables.

Pure side (no Kafka; test with records built by hand):

- :class:`FleetView` (:mod:`.view`): the fleet's state folded record by record from ``bans`` and
  ``reports`` (``add_ban``, ``add_report``, ``add_decision``, or ``add_raw(kind, key, value, ts)``).
  Build one by reading to the end, then keep feeding it to follow the topics live.
- :mod:`.queries`: ``bans_in_force(view, now, BanFilter)`` -> ``list[BanView]`` (with :class:`Coverage`),
  ``fleet_status(view, now)`` -> ``list[HostStatus]``, ``decisions_in_range(decisions, since, until,
  BanFilter)``, ``ip_history(target, decisions, reports, bans, now)`` -> :class:`IpHistory`,
  ``verify(view, decisions, now, within)`` -> :class:`VerifyResult`.
- :mod:`.manual`: ``manual_ban``/``manual_unban`` build operators' decisions after the safety rails
  (:mod:`fleet2ban.rails`). :mod:`.timeparse`: ``parse_duration``, ``parse_when``.
- :mod:`.digests`: coverage from enforcers' heartbeat digests, checked against the bans in force.

Kafka side (thin, over :mod:`fleet2ban.kafka.reader`): :mod:`.reader` (``connect``, ``into_view``,
``load_view``, ``load_coverage_view`` for ``bans list``, ``read_decisions`` seeking by time,
``read_target``, ``load_trail``) and :mod:`.writer`
(``publish_decision``, ``wait_for_mirror``).

A console follows the fleet like this::

    view = FleetView()
    sources = [Source("bans", topics.bans), Source("reports", topics.reports, since=now - 1h),
               Source("decisions", topics.decisions, since=now - 1h)]
    with TopicReader(cluster, sources, into_view(view)) as reader:
        reader.catch_up()
        while running:
            reader.poll(0.5)
            render(bans_in_force(view, utcnow()), fleet_status(view, utcnow()), view.recent_decisions)
"""

from __future__ import annotations

from fleet2ban.audit.model import (
    BanFilter,
    BanView,
    Coverage,
    Discrepancy,
    HostStatus,
    IpHistory,
    TimelineEntry,
    VerifyResult,
    to_json,
)
from fleet2ban.audit.queries import (
    bans_in_force,
    coverage,
    decisions_in_range,
    fleet_status,
    ip_history,
    verify,
)
from fleet2ban.audit.view import FleetView

__all__ = [
    "BanFilter",
    "BanView",
    "Coverage",
    "Discrepancy",
    "FleetView",
    "HostStatus",
    "IpHistory",
    "TimelineEntry",
    "VerifyResult",
    "bans_in_force",
    "coverage",
    "decisions_in_range",
    "fleet_status",
    "ip_history",
    "to_json",
    "verify",
]
