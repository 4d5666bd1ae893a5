"""What each page shows, as plain data built from the audit layer's answers (no Kafka, no HTTP).

- :func:`ban_page`: the bans in force filtered, sorted and paginated, with coverage computed only for
  the rows shown (100,000 bans render as fast as 100).
- :func:`ip_page`: one address's history (:func:`fleet2ban.audit.ip_history`) plus a chart of its
  failures per host with its decisions marked.
- :func:`history_page`: decisions in a range (:func:`fleet2ban.audit.decisions_in_range`) and a chart of
  bans per minute by jail.
- :func:`fleet_page`: every component (:func:`fleet2ban.audit.fleet_status`), silent ones first.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from urllib.parse import urlencode

from fleet2ban.audit import (
    BanFilter,
    Coverage,
    HostStatus,
    IpHistory,
    coverage,
    decisions_in_range,
    fleet_status,
    ip_history,
)
from fleet2ban.audit.timeparse import format_duration
from fleet2ban.audit.view import FleetView
from fleet2ban.console.charts import BarChart, stacked_bars
from fleet2ban.console.exceptions import BadQueryError
from fleet2ban.contract import BanState, ContractError, Decision, Event, Origin, Report

SortKey = Literal["since", "until", "ip", "jail", "failures", "origin", "coverage"]
SORT_KEYS: Final[tuple[SortKey, ...]] = ("since", "until", "ip", "jail", "failures", "origin", "coverage")
PER_PAGE: Final = 100
MAX_PER_PAGE: Final = 1000
RECENT_DECISIONS: Final = 8


# ------------------------------------------------------------------------------------------- bans


@dataclass(frozen=True)
class BanQuery:
    """The bans page's filter, sort and page, as in its query string."""

    jail: str | None = None
    origin: Origin | None = None
    ip: str | None = None
    incomplete: bool = False
    sort: SortKey = "since"
    desc: bool = True
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> BanQuery:
        """Parse the query string; :class:`BadQueryError` names the bad parameter."""

        def text(name: str) -> str | None:
            v = (params.get(name) or "").strip()
            return v or None

        origin = text("origin")
        if origin not in (None, "auto", "manual"):
            raise BadQueryError("origin must be auto or manual")
        sort = text("sort") or "since"
        if sort not in SORT_KEYS:
            raise BadQueryError(f"sort must be one of {', '.join(SORT_KEYS)}")
        order = text("order") or "desc"
        if order not in ("asc", "desc"):
            raise BadQueryError("order must be asc or desc")
        try:
            page = int(text("page") or 1)
            per_page = int(text("per_page") or PER_PAGE)
        except ValueError:
            raise BadQueryError("page and per_page must be numbers") from None
        q = cls(
            jail=text("jail"),
            origin=origin,  # type: ignore[arg-type]
            ip=text("ip"),
            incomplete=(text("coverage") == "incomplete"),
            sort=sort,
            desc=order == "desc",
            page=max(1, page),
            per_page=min(max(1, per_page), MAX_PER_PAGE),
        )
        try:
            q.ban_filter().validate()
        except ContractError as exc:
            raise BadQueryError(f"ip: {exc}") from None
        return q

    def ban_filter(self) -> BanFilter:
        return BanFilter(jail=self.jail, origin=self.origin, network=self.ip)

    def params(self, **changes: Any) -> dict[str, str]:
        q = replace(self, **changes)
        out: dict[str, str] = {}
        if q.jail:
            out["jail"] = q.jail
        if q.origin:
            out["origin"] = q.origin
        if q.ip:
            out["ip"] = q.ip
        if q.incomplete:
            out["coverage"] = "incomplete"
        if q.sort != "since":
            out["sort"] = q.sort
        if not q.desc:
            out["order"] = "asc"
        if q.page != 1:
            out["page"] = str(q.page)
        if q.per_page != PER_PAGE:
            out["per_page"] = str(q.per_page)
        return out

    def link(self, **changes: Any) -> str:
        """``?query`` for this query with some fields changed (sort links, pager)."""
        p = self.params(**changes)
        return "?" + urlencode(p) if p else "?"

    def sort_link(self, key: str) -> str:
        desc = not self.desc if key == self.sort else key in ("since", "failures", "until")
        return self.link(sort=key, desc=desc, page=1)


@dataclass(frozen=True)
class BanRow:
    key: str
    ban: BanState
    recorded_at: datetime | None
    coverage: Coverage

    @property
    def coverage_text(self) -> str:
        return f"{len(self.coverage.applied)}/{self.coverage.live} hosts"

    @property
    def missing_text(self) -> list[str]:
        c = self.coverage
        return [
            f"{h} (failed: {c.failed[h]})"
            if h in c.failed
            else f"{h} (skipped: {c.skipped[h]})"
            if h in c.skipped
            else h
            for h in c.missing
        ]


@dataclass(frozen=True)
class BanPage:
    query: BanQuery
    rows: list[BanRow]
    total: int
    """Bans in force matching the filter."""
    in_force: int
    """Bans in force in all."""
    incomplete: int
    """Of the matching ones, how many are not applied on every live enforcer."""
    live_enforcers: list[str]
    page: int
    pages: int
    jails: list[str]
    recent: list[Decision] = field(default_factory=list)
    """The latest decisions seen on the topic (newest first), whether or not mirrored to bans yet."""


@functools.lru_cache(maxsize=262_144)
def _ip_sort_key(ip: str) -> tuple[int, int, int]:
    """Numeric order of a target (IPv4 before IPv6, then address, then prefix length)."""
    addr, _, plen = ip.partition("/")
    try:
        if ":" in addr:
            return (6, int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big"), int(plen or 128))
        return (4, int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big"), int(plen or 32))
    except (OSError, ValueError):
        return (9, 0, 0)


def _sort_value(q: BanQuery, now: datetime, counts: Counter[str]) -> Callable[[BanState, str], Any]:
    far = now + timedelta(days=365 * 1000)
    funcs: dict[str, Callable[[BanState, str], Any]] = {
        "since": lambda st, k: st.at,
        "until": lambda st, k: st.expires_at or far,
        "ip": lambda st, k: _ip_sort_key(st.ip),
        "jail": lambda st, k: (st.jail, st.at),
        "failures": lambda st, k: (st.failures, st.at),
        "origin": lambda st, k: (st.origin, st.at),
        "coverage": lambda st, k: (counts[k], st.at),
    }
    return funcs[q.sort]


def ban_page(view: FleetView, now: datetime, q: BanQuery) -> BanPage:
    """Filter, sort and paginate the bans in force in one pass over the view; coverage is computed
    for the shown rows only, and the first pages are picked with a heap rather than a full sort."""
    match = q.ban_filter().matcher() if (q.jail or q.origin or q.ip) else None
    live = view.live_enforcers(now)
    entries = view.bans
    complete: set[str] = set()
    counts: Counter[str] = Counter()
    if live:
        complete = set(live[0].applied)
        for e in live[1:]:
            complete.intersection_update(e.applied)
        if q.sort == "coverage":
            for e in live:
                counts.update(e.applied.keys())
    sort_value = _sort_value(q, now, counts)
    items: list[tuple[Any, str]] = []
    jails: set[str] = set()
    in_force = incomplete = 0
    for key, entry in entries.items():
        st = entry.state
        exp = st.expires_at
        if exp is not None and exp <= now:
            continue
        in_force += 1
        jails.add(st.jail)
        if match is not None and not match(st.jail, st.origin, st.ip):
            continue
        if live and key not in complete:
            incomplete += 1
        elif q.incomplete:
            continue
        items.append((sort_value(st, key), key))
    total = len(items)
    pages = max(1, math.ceil(total / q.per_page))
    page = min(q.page, pages)
    need = page * q.per_page
    if need * 8 < total:
        top = heapq.nlargest(need, items) if q.desc else heapq.nsmallest(need, items)
    else:
        items.sort(reverse=q.desc)
        top = items
    shown = [k for _, k in top[(page - 1) * q.per_page : need]]
    rows = [BanRow(k, entries[k].state, entries[k].recorded_at, coverage(view, k, live)) for k in shown]
    return BanPage(
        query=replace(q, page=page),
        rows=rows,
        total=total,
        in_force=in_force,
        incomplete=incomplete,
        live_enforcers=[e.host for e in live],
        page=page,
        pages=pages,
        jails=sorted(jails),
        recent=list(itertools.islice(reversed(view.recent_decisions), RECENT_DECISIONS)),
    )


# ------------------------------------------------------------------------------------------- fleet


@dataclass(frozen=True)
class FleetPage:
    components: list[HostStatus]
    silent: int
    by_role: dict[str, int]


def fleet_page(view: FleetView, now: datetime) -> FleetPage:
    hosts = fleet_status(view, now)
    order = {"enforcer": 0, "shipper": 1, "processor": 2}
    hosts.sort(key=lambda h: (not h.silent, order.get(h.role, 9), h.host, h.instance))
    by_role: dict[str, int] = {}
    for h in hosts:
        by_role[h.role] = by_role.get(h.role, 0) + 1
    return FleetPage(hosts, sum(1 for h in hosts if h.silent), by_role)


# ------------------------------------------------------------------------------------------- one IP


@dataclass(frozen=True)
class IpPage:
    history: IpHistory
    chart: BarChart | None
    failures_by_host: dict[str, int]
    events: int
    window_start: datetime
    window_end: datetime
    recent_lines: list[Event] = field(default_factory=list)


def ip_page(
    target: str,
    decisions: Iterable[Decision],
    reports: Iterable[Report],
    bans: Iterable[BanState],
    events: list[Event],
    now: datetime,
    window: timedelta,
    recent: int = 50,
) -> IpPage:
    """One target's history and its failures per host over ``window`` (events read from ``events``)."""
    hist = ip_history(target, decisions, reports, bans, now)
    # zoom on the data: from a little before the first failure or decision within the window
    horizon = now - window
    times = [e.ts for e in events] + [d.at for d in hist.decisions if d.at >= horizon]
    first = min(times, default=horizon)
    start = max(horizon, first - max(timedelta(seconds=30), (now - first) * 0.05))
    markers = [
        (d.at, "mark-ban" if d.action == "ban" else "mark-unban", f"{d.action} ({d.jail}, {d.origin})")
        for d in hist.decisions
    ]
    by_host: dict[str, int] = {}
    for e in events:
        by_host[e.host] = by_host.get(e.host, 0) + 1
    chart = stacked_bars(((e.ts, e.host) for e in events), start, now, markers=markers) if events else None
    latest = sorted(events, key=lambda e: e.ts, reverse=True)[:recent]
    return IpPage(hist, chart, dict(sorted(by_host.items())), len(events), start, now, latest)


# ------------------------------------------------------------------------------------------ history


@dataclass(frozen=True)
class HistoryPage:
    since: datetime
    until: datetime
    decisions: list[Decision]
    """Newest first, at most ``limit``."""
    total: int
    bans: int
    unbans: int
    chart: BarChart
    limit: int


def history_page(
    decisions: Iterable[Decision],
    since: datetime,
    until: datetime,
    flt: BanFilter | None = None,
    limit: int = 500,
) -> HistoryPage:
    found = decisions_in_range(decisions, since, until, flt)
    bans = [d for d in found if d.action == "ban"]
    chart = stacked_bars(((d.at, d.jail) for d in bans), since, until, min_bucket_s=60, max_buckets=240)
    newest = list(reversed(found))[:limit]
    unbans = sum(1 for d in found if d.action == "unban")  # allow-list changes are neither
    return HistoryPage(since, until, newest, len(found), len(bans), unbans, chart, limit)


# -------------------------------------------------------------------------------------- formatting


def when(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def ago(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "-"
    delta = (now - ts).total_seconds()
    return f"{format_duration(delta)} ago" if delta >= 0 else f"in {format_duration(-delta)}"


def until_text(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "permanent"
    delta = (ts - now).total_seconds()
    return f"in {format_duration(delta)}" if delta > 0 else "expired"
