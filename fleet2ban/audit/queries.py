"""The audit questions, as plain functions over a :class:`FleetView` and decoded records.

No Kafka here (see :mod:`fleet2ban.audit.reader` for that): the CLI and the web console call these with
what they read, and tests call them with records built by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from fleet2ban.audit.model import (
    BanFilter,
    BanView,
    Coverage,
    Discrepancy,
    HostStatus,
    IpHistory,
    TimelineEntry,
    VerifyResult,
)
from fleet2ban.audit.view import EnforcerState, FleetView
from fleet2ban.contract import BanState, Decision, Report, ban_key, normalize_target


def coverage(view: FleetView, key: str, live: list[EnforcerState]) -> Coverage:
    """Which of the ``live`` enforcers have ``key`` applied (of those its scope includes)."""
    applied: list[str] = []
    missing: list[str] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    entry = view.bans.get(key)
    scope = None if entry is None else entry.state.scope
    n = 0
    for e in live:
        if key in e.applied:
            applied.append(e.host)
            n += 1
            continue
        if scope is not None and e.host not in scope:
            continue  # a scoped ban: not for this host
        n += 1
        missing.append(e.host)
        if key in e.failed:
            failed[e.host] = e.failed[key].detail or "failed"
        elif key in e.skipped:
            skipped[e.host] = e.skipped[key].detail or "skipped"
    return Coverage(live=n, applied=applied, missing=missing, skipped=skipped, failed=failed, scope=scope)


def bans_in_force(view: FleetView, now: datetime, flt: BanFilter | None = None) -> list[BanView]:
    """``bans list``: the bans in force at ``now`` with their coverage, newest first."""
    match = flt.matcher() if flt is not None else None
    live = view.live_enforcers(now)
    everywhere = Coverage(live=len(live), applied=[e.host for e in live], missing=[])
    # the common case, applied on every live enforcer, shares one (immutable) Coverage
    common: set[str] | None = None
    for e in sorted(live, key=lambda e: len(e.applied)):
        common = set(e.applied) if common is None else common.intersection(e.applied)
    out: list[BanView] = []
    bans = view.bans
    for key in view.active(now, match):
        entry = bans[key]
        cov = everywhere if common is None or key in common else coverage(view, key, live)
        out.append(BanView(key, entry.state, entry.recorded_at, cov))
    out.sort(key=lambda b: (b.ban.at, b.key), reverse=True)
    return out


LAG_ALARM = 1000.0
"""Records behind at which a growing lag makes ``status`` exit 1."""


def _growing(lag: float | None, before: float | None, alarm: float) -> bool:
    return lag is not None and before is not None and lag >= alarm and lag > before


def fleet_status(view: FleetView, now: datetime, lag_alarm: float = LAG_ALARM) -> list[HostStatus]:
    """``status``: every component seen (heartbeats), and enforcers seen only through their reports."""
    out: list[HostStatus] = []
    seen_enforcers: set[str] = set()
    for (role, host, instance), hb in sorted(view.components.items()):
        applied: int | None = None
        failed = 0
        if role == "enforcer":
            seen_enforcers.add(host)
            enf = view.enforcers.get(host)
            if enf is not None:
                applied = len(enf.applied)
                if hb.applied_total is not None and hb.applied_total > len(hb.applied):
                    applied = max(applied, hb.applied_total)
                failed = len(enf.failed)
        out.append(
            HostStatus(
                role=hb.role,
                host=host,
                instance=instance,
                last_seen=hb.at,
                age_s=(now - hb.at).total_seconds(),
                silent=view.is_silent(hb, now),
                version=hb.version,
                started_at=hb.started_at,
                interval_s=hb.interval_s,
                lag=hb.lag,
                counters=dict(hb.counters),
                applied=applied,
                failed=failed,
                lag_growing=_growing(hb.lag, view.lag_before.get((role, host, instance)), lag_alarm),
            )
        )
    for host, enf in sorted(view.enforcers.items()):
        if host in seen_enforcers:
            continue
        last = enf.last_report_at
        out.append(
            HostStatus(
                role="enforcer",
                host=host,
                instance="",
                last_seen=None,
                age_s=(now - last).total_seconds() if last else None,
                silent=True,
                applied=len(enf.applied),
                failed=len(enf.failed),
            )
        )
    return out


def decisions_in_range(
    decisions: Iterable[Decision],
    since: datetime | None = None,
    until: datetime | None = None,
    flt: BanFilter | None = None,
) -> list[Decision]:
    """``bans history``: decisions with ``since <= at <= until`` that match ``flt``, oldest first."""
    match = flt.matcher() if flt is not None else None
    out = [
        d
        for d in decisions
        if (since is None or d.at >= since)
        and (until is None or d.at <= until)
        and (match is None or match(d.jail, d.origin, d.ip))
    ]
    out.sort(key=lambda d: (d.at, d.id))
    return out


def ip_history(
    target: str,
    decisions: Iterable[Decision],
    reports: Iterable[Report],
    bans: Iterable[BanState],
    now: datetime,
) -> IpHistory:
    """``bans show``: one target's decisions and enforcer reports in time order, and its bans in force."""
    t = normalize_target(target)
    ds = sorted((d for d in decisions if d.ip == t), key=lambda d: (d.at, d.id))
    rs = sorted((r for r in reports if r.ip == t), key=lambda r: (r.at, r.host))
    timeline = [TimelineEntry(d.at, "decision", decision=d) for d in ds]
    timeline += [TimelineEntry(r.at, "report", report=r) for r in rs]
    timeline.sort(key=lambda e: (e.at, e.kind != "decision"))
    in_force = sorted((b for b in bans if b.ip == t and b.active_at(now)), key=lambda b: b.jail)
    return IpHistory(target=t, decisions=ds, reports=rs, timeline=timeline, in_force=in_force)


def verify(view: FleetView, decisions: Iterable[Decision], now: datetime, within: timedelta) -> VerifyResult:
    """``audit verify``: check the trail between decisions, ``bans`` and the enforcers' reports.

    ``decisions`` must cover every decision the view's reports and bans refer to (the reader seeks far
    enough back). Checks, each finding a :class:`Discrepancy`:

    1. every ban an enforcer reports applied (a report or its heartbeat) traces to a ``ban`` decision
       (by decision id, or by ``JAIL|IP`` for heartbeats and reports without one);
    2. every ban in force for longer than ``within`` (since the processor recorded it) is applied on
       every enforcer seen (that its scope includes, for a scoped ban), and an ``applied`` report came within ``within`` of it; a silent enforcer
       is named as such, and for each ban it misses;
    3. no live enforcer keeps a ban applied longer than ``within`` after it was lifted or expired.
    """
    bound = within.total_seconds()
    ban_ids: set[str] = set()
    banned_keys: set[str] = set()
    for d in decisions:
        if d.action == "ban":
            ban_ids.add(d.id)
            banned_keys.add(ban_key(d.jail, d.ip))
    enforcers = sorted(view.enforcers)
    live_states = view.live_enforcers(now)
    live = [e.host for e in live_states]
    found, reports_checked = _untraced(view, live_states, ban_ids, banned_keys)
    unapplied, bans_checked = _unapplied(view, enforcers, now, bound)
    found += unapplied
    found += _lingering(view, live_states, now, bound)
    return VerifyResult(
        as_of=now,
        within_s=bound,
        bans_checked=bans_checked,
        enforcers=enforcers,
        live=live,
        reports_checked=reports_checked,
        discrepancies=found,
    )


def _untraced(
    view: FleetView, live_states: list[EnforcerState], ban_ids: set[str], banned_keys: set[str]
) -> tuple[list[Discrepancy], int]:
    """Check 1 of :func:`verify`: applied bans that trace to no ``ban`` decision; and how many reports
    were checked."""
    found: list[Discrepancy] = []
    checked = 0
    for did, rep in sorted(view.referenced.items()):
        checked += 1
        if did not in ban_ids:
            found.append(
                Discrepancy(
                    "untraced",
                    rep.host,
                    f"{rep.host} reported {rep.jail}|{rep.ip} applied under decision {did}, "
                    "which is not on the decisions topic",
                    key=ban_key(rep.jail, rep.ip),
                    decision_id=did,
                )
            )
    for host, key in sorted(view.unreferenced_applied):
        checked += 1
        if key not in banned_keys:
            found.append(
                Discrepancy("untraced", host, f"{host} reported {key} applied; no ban decision for it", key)
            )
    for e in live_states:
        for key in sorted(e.applied):
            if e.applied[key].decision_id is None and key not in banned_keys:
                found.append(
                    Discrepancy(
                        "untraced", e.host, f"{e.host} has {key} applied; no ban decision for it", key
                    )
                )
    return found, checked


def _unapplied(
    view: FleetView, enforcers: list[str], now: datetime, bound: float
) -> tuple[list[Discrepancy], int]:
    """Check 2 of :func:`verify`: silent enforcers, then every ban in force for longer than ``bound`` that
    an enforcer it applies on has not applied (or applied late, or failed to); and how many bans were
    checked."""
    found: list[Discrepancy] = []
    silent_hosts: set[str] = set()
    for host in enforcers:
        enf = view.enforcers[host]
        if enf.heartbeat is None or view.is_silent(enf.heartbeat, now):
            last = enf.heartbeat.at if enf.heartbeat else enf.last_report_at
            silent_hosts.add(host)
            since = f"since {last.isoformat(timespec='seconds')}" if last else "(no heartbeat seen)"
            found.append(Discrepancy("silent", host, f"enforcer {host} is silent {since}"))
    checked = 0
    for key in sorted(view.active(now)):
        entry = view.bans[key]
        recorded = entry.recorded_at or entry.state.at
        age = (now - recorded).total_seconds()
        if age <= bound:
            continue
        checked += 1
        for host in enforcers:
            d = _ban_on_host(
                view.enforcers[host], key, entry.state, recorded, age, bound, host in silent_hosts
            )
            if d is not None:
                found.append(d)
    return found, checked


def _ban_on_host(
    enf: EnforcerState, key: str, st: BanState, recorded: datetime, age: float, bound: float, silent: bool
) -> Discrepancy | None:
    """What is wrong with ban ``key`` (in force for ``age`` seconds since ``recorded``) on one enforcer."""
    host = enf.host
    info = enf.applied.get(key)
    if info is None and not st.applies_on(host):
        return None  # a scoped ban (jail min_hosts): not missing where its scope does not reach
    if info is not None:
        if info.at is None or info.decision_id not in (None, st.decision_id):
            return None
        # an enforcer (re)started after the ban applies it at start: measure from there
        base = recorded
        started = enf.heartbeat.started_at if enf.heartbeat is not None else None
        if started is not None and recorded < started <= info.at:
            base = started
        delay = (info.at - base).total_seconds()
        if delay <= bound:
            return None
        return Discrepancy(
            "late",
            host,
            f"{host} applied {key} {delay:.1f}s after it was recorded (bound {bound:g}s)",
            key,
            st.decision_id,
        )
    if key in enf.skipped:
        return None  # the host's own rails declined it (its own address, a broker ...): by design
    if key in enf.failed:
        return Discrepancy(
            "failed",
            host,
            f"{host} failed to apply {key}: {enf.failed[key].detail or 'no detail'}",
            key,
            st.decision_id,
        )
    note = " (enforcer silent)" if silent else ""
    return Discrepancy(
        "missing", host, f"{host} has not applied {key}, in force for {age:.0f}s{note}", key, st.decision_id
    )


def _lingering(
    view: FleetView, live_states: list[EnforcerState], now: datetime, bound: float
) -> list[Discrepancy]:
    """Check 3 of :func:`verify`: a live enforcer that keeps a ban applied longer than ``bound`` after it
    was lifted or expired (only a heartbeat sent after the bound can prove it)."""
    found: list[Discrepancy] = []
    for e in live_states:
        for key in sorted(e.applied):
            if key in view.bans:
                st = view.bans[key].state
                if st.expires_at is None or st.expires_at > now:
                    continue
                gone_at: datetime | None = st.expires_at
            elif key in view.lifted:
                gone_at = view.lifted[key]
            else:
                continue
            if gone_at is None or e.heartbeat is None:
                continue
            lingered = (e.heartbeat.at - gone_at).total_seconds()
            if lingered > bound:
                found.append(
                    Discrepancy(
                        "lingering",
                        e.host,
                        f"{e.host} still has {key} applied {lingered:.0f}s after it was lifted",
                        key,
                    )
                )
    return found
