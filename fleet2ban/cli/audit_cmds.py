"""Operators' commands: ``bans list|show|history|add|remove``, ``status`` and ``audit verify``.

A thin shell over :mod:`fleet2ban.audit`: read (or write) Kafka, ask the query layer, print a rich table
for people or ``--json`` for scripts. Exit codes: 0 ok; 1 findings (``audit verify``) or a refused ban;
2 usage, configuration, or a missing/unreachable broker (one line on stderr, within a few seconds).
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fleet2ban.audit import queries
from fleet2ban.audit.manual import check_not_allowed, manual_ban, manual_unban
from fleet2ban.audit.model import BanFilter, BanView, HostStatus, IpHistory, VerifyResult, to_json
from fleet2ban.audit.reader import (
    Progress,
    connect,
    load_coverage_view,
    load_trail,
    load_view,
    read_decisions,
    read_target,
)
from fleet2ban.audit.timeparse import format_duration, parse_duration, parse_when
from fleet2ban.audit.writer import publish_decision, read_allow_list, wait_for_mirror
from fleet2ban.cli.common import EXIT_FINDINGS, echo_json_line, handle_errors, settings_for
from fleet2ban.contract import ContractError, Decision, Origin, utcnow
from fleet2ban.exceptions import BrokerError, ConfigError
from fleet2ban.identity import Verifier
from fleet2ban.kafka import Cluster
from fleet2ban.safetext import printable
from fleet2ban.settings import Settings

bans_app = typer.Typer(help="Bans in force, their history, and manual bans.", no_args_is_help=True)
audit_app = typer.Typer(help="Check the audit trail.", no_args_is_help=True)

CONNECT_TIMEOUT_ENV = "FLEET2BAN_CONNECT_TIMEOUT"
TABLE_LIMIT = 200

JsonOpt = typer.Option(False, "--json", help="print JSON for scripts instead of a table")
WindowOpt = typer.Option("1h", "--reports-window", help="how far back to read reports (heartbeats)")


def _say_rejected(view: Any) -> None:
    """One line on stderr when ``reports`` records were dropped for a host signature that did not verify."""
    if view.rejected:
        typer.echo(
            f"{view.rejected} reports records dropped: their host signature did not verify"
            " (fleet2ban_identity_rejected; identity.public_keys)",
            err=True,
        )


def _connect(settings: Settings) -> Cluster:
    timeout = float(os.environ.get(CONNECT_TIMEOUT_ENV, "5"))
    return connect(settings.kafka, timeout=timeout)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _s(value: object) -> str:
    """Outside text for a rich markup string: printable (no terminal escapes, one line), markup escaped."""
    return escape(printable(str(value)))


def _add_row(table: Table, *cells: str | Text) -> None:
    """A table row whose plain-string cells are shown as they are: never read as rich markup (an
    operator named ``[/oops]`` or ``[link=...]``), never driving the terminal (ESC, C1, newlines)."""
    table.add_row(*(Text(printable(c)) if isinstance(c, str) else c for c in cells))


@contextlib.contextmanager
def _progress(enabled: bool, what: str) -> Iterator[Progress | None]:
    """A live ``reading … N records`` line on stderr when it is a terminal (never in --json mode)."""
    err = Console(stderr=True)
    if not enabled or not err.is_terminal:
        yield None
        return
    with err.status(f"reading {what}…") as status:

        def update(topic: str, n: int) -> None:
            status.update(f"reading {topic}: {n:,} records")

        yield update


def _when(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def _rel(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "-"
    delta = (ts - now).total_seconds()
    return f"in {format_duration(delta)}" if delta >= 0 else f"{format_duration(-delta)} ago"


def _origin(value: str | None) -> Origin | None:
    if value is None:
        return None
    if value not in ("auto", "manual"):
        raise ConfigError(f"--origin must be auto or manual (got {value!r})")
    return value  # type: ignore[return-value]


def _filter(jail: str | None, origin: str | None, ip: str | None) -> BanFilter:
    flt = BanFilter(jail=jail, origin=_origin(origin), network=ip)
    try:
        return flt.validate()
    except ContractError as exc:
        raise ConfigError(f"--ip: {exc}") from None


def _operator(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "unknown")


# ------------------------------------------------------------------------------------------ bans list


@bans_app.command("list")
@handle_errors
def bans_list(
    ctx: typer.Context,
    jail: str = typer.Option(None, "--jail", help="only this jail"),
    origin: str = typer.Option(None, "--origin", help="auto or manual"),
    ip: str = typer.Option(None, "--ip", help="only targets overlapping this address or CIDR"),
    reports_window: str = WindowOpt,
    limit: int = typer.Option(TABLE_LIMIT, "--limit", help="table rows at most (0 = all; --json prints all)"),
    as_json: bool = JsonOpt,
) -> None:
    """The bans in force now, fleet-wide, with coverage: live enforcers that report each applied."""
    settings = settings_for(ctx)
    flt = _filter(jail, origin, ip)
    window = parse_duration(reports_window)
    cluster = _connect(settings)
    now = utcnow()
    with _progress(not as_json, "bans and reports") as progress:
        view = load_coverage_view(
            cluster,
            now,
            reports_window=window,
            heartbeat_interval_s=settings.metrics.heartbeat_interval_s,
            progress=progress,
            verifier=Verifier.from_settings(settings.identity),
        )
    _say_rejected(view)
    bans = queries.bans_in_force(view, now, flt)
    if as_json:
        echo_json_line(to_json(bans))
        return
    _print_bans(bans, now, limit, len(view.live_enforcers(now)))


def _print_bans(bans: list[BanView], now: datetime, limit: int, live: int) -> None:
    out = _out()
    if not bans:
        out.print("No bans in force.")
        return
    table = Table("IP", "jail", "since", "until", "failures", "origin", "coverage", "missing on")
    shown = bans if limit <= 0 else bans[:limit]
    for b in shown:
        st = b.ban
        until = (
            "permanent" if st.expires_at is None else f"{_when(st.expires_at)} ({_rel(st.expires_at, now)})"
        )
        origin = st.origin if st.origin == "auto" else f"manual ({st.by or '?'})"
        cov = b.coverage
        style = "green" if cov.live and cov.complete else ("yellow" if cov.live else "dim")
        missing = ", ".join(
            f"{h} (failed)" if h in cov.failed else f"{h} (skipped)" if h in cov.skipped else h
            for h in cov.missing
        )
        _add_row(
            table,
            st.ip,
            st.jail,
            _when(st.at),
            until,
            str(st.failures),
            origin,
            Text(cov.text(), style=style),
            missing or "-",
        )
    out.print(table)
    more = (
        f"; {len(bans) - len(shown):,} more not shown (--limit 0 or --json)" if len(shown) < len(bans) else ""
    )
    out.print(f"{len(bans):,} bans in force; {live} live enforcer(s){more}")


# ------------------------------------------------------------------------------------------ bans show


@bans_app.command("show")
@handle_errors
def bans_show(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="an IP address (or a CIDR that was banned as such)"),
    reports_window: str = typer.Option("24h", "--reports-window", help="read reports at least this far back"),
    as_json: bool = JsonOpt,
) -> None:
    """One address's whole history: every decision with its evidence, every enforcer report, in order."""
    settings = settings_for(ctx)
    window = parse_duration(reports_window)
    try:
        from fleet2ban.contract import normalize_target

        t = normalize_target(target)
    except ContractError as exc:
        raise ConfigError(str(exc)) from None
    cluster = _connect(settings)
    now = utcnow()
    with _progress(not as_json, f"the history of {t}") as progress:
        recs = read_target(
            cluster,
            t,
            now,
            jails=[j.name for j in settings.jails],
            reports_window=window,
            progress=progress,
            verifier=Verifier.from_settings(settings.identity),
        )
    hist = queries.ip_history(t, recs.decisions, recs.reports, recs.bans, now)
    if as_json:
        echo_json_line(to_json(hist))
        return
    _print_history_of(hist, now, frozenset(j.name for j in settings.jails if j.source == "bans"))


def _print_history_of(hist: IpHistory, now: datetime, bans_jails: frozenset[str] = frozenset()) -> None:
    """``bans_jails``: jails whose failures are other jails' bans (their evidence lines name them)."""
    out = _out()
    if not hist.timeline:
        out.print(f"No decisions or reports about {_s(hist.target)}.")
        return
    if hist.in_force:
        for b in hist.in_force:
            until = "permanent" if b.expires_at is None else f"until {_when(b.expires_at)}"
            who = f" by {b.by}" if b.by else ""
            out.print(
                f"[bold red]{_s(hist.target)} is banned[/] in jail {_s(b.jail)} ({_s(b.origin)}{_s(who)}), {until}"
            )
    else:
        out.print(f"{_s(hist.target)} is not banned now.")
    table = Table("time", "what", "jail", "detail", show_lines=False)
    for e in hist.timeline:
        if e.decision is not None:
            d = e.decision
            until = "permanent" if d.expires_at is None else f"until {_when(d.expires_at)}"
            if d.action == "ban":
                counted = "bans counted" if d.jail in bans_jails else "failures"
                detail = f"{d.origin}; {until}; {counted} {d.failures}"
                if d.hosts:
                    detail += f" on {', '.join(d.hosts)}"
            else:
                detail = d.origin
            if d.by or d.reason:
                detail += f"; by {d.by or '?'}: {d.reason or ''}"
            detail += f"; id {d.id}"
            lines = [printable(detail), *(f"  {printable(line)}" for line in d.evidence)]
            _add_row(table, _when(d.at), Text(d.action.upper(), style="bold"), d.jail, Text("\n".join(lines)))
        elif e.report is not None:
            r = e.report
            text = f"{r.host}: {r.kind}"
            if r.detail:
                text += f" ({r.detail})"
            _add_row(table, _when(r.at), "report", r.jail, text)
    out.print(table)
    out.print(f"{len(hist.decisions)} decision(s), {len(hist.reports)} report(s)")


# --------------------------------------------------------------------------------------- bans history


@bans_app.command("history")
@handle_errors
def bans_history(
    ctx: typer.Context,
    since: str = typer.Option(
        "24h", "--since", help="a duration ago (1h, 2d) or a date/time (UTC unless given)"
    ),
    until: str = typer.Option("now", "--until", help="a duration ago or a date/time"),
    jail: str = typer.Option(None, "--jail", help="only this jail"),
    origin: str = typer.Option(None, "--origin", help="auto or manual"),
    ip: str = typer.Option(None, "--ip", help="only targets overlapping this address or CIDR"),
    limit: int = typer.Option(TABLE_LIMIT, "--limit", help="table rows at most (0 = all; --json prints all)"),
    as_json: bool = JsonOpt,
) -> None:
    """Decisions (bans and unbans) in a time range, read by seeking to the range's start."""
    settings = settings_for(ctx)
    now = utcnow()
    t0, t1 = parse_when(since, now), parse_when(until, now)
    if t1 < t0:
        raise ConfigError(f"--until ({_when(t1)}) is before --since ({_when(t0)})")
    flt = _filter(jail, origin, ip)
    cluster = _connect(settings)
    if t0 > now:
        decisions: list[Decision] = []
    else:
        with _progress(not as_json, "decisions") as progress:
            decisions = read_decisions(cluster, t0, t1, progress=progress)
    found = queries.decisions_in_range(decisions, t0, t1, flt)
    if as_json:
        echo_json_line(to_json(found))
        return
    out = _out()
    if not found:
        out.print(f"No decisions between {_when(t0)} and {_when(t1)}.")
        return
    table = Table("time", "action", "IP", "jail", "until", "failures", "hosts", "origin", "reason")
    shown = found if limit <= 0 else found[-limit:]
    for d in shown:
        until_txt = (
            "" if d.action == "unban" else "permanent" if d.expires_at is None else _when(d.expires_at)
        )
        _add_row(
            table,
            _when(d.at),
            d.action,
            d.ip,
            d.jail,
            until_txt,
            str(d.failures) if d.action == "ban" else "",
            ", ".join(d.hosts),
            d.origin if d.origin == "auto" else f"manual ({d.by or '?'})",
            d.reason or "",
        )
    out.print(table)
    more = f"; the latest {len(shown):,} shown (--limit 0 or --json)" if len(shown) < len(found) else ""
    out.print(f"{len(found):,} decision(s) between {_when(t0)} and {_when(t1)}{more}")


# ----------------------------------------------------------------------------------- bans add / remove


@bans_app.command("add")
@handle_errors
def bans_add(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="an IP address or a CIDR"),
    jail: str = typer.Option(None, "--jail", help="jail (default: the first configured)"),
    duration: str = typer.Option(None, "--for", help="how long (10m, 2h, 7d); default: the jail's bantime"),
    permanent: bool = typer.Option(False, "--permanent", help="never expires"),
    reason: str = typer.Option(..., "--reason", help="why (recorded in the audit log)"),
    by: str = typer.Option(None, "--by", help="operator name (default: the login name)"),
    wait: float = typer.Option(0.0, "--wait", help="seconds to wait until the processor mirrors it to bans"),
    as_json: bool = JsonOpt,
) -> None:
    """Ban an address or network by hand (refused for loopback, link-local, ignored or too-wide targets)."""
    settings = settings_for(ctx)
    if permanent and duration:
        raise ConfigError("give --for or --permanent, not both")
    now = utcnow()
    decision = manual_ban(
        settings,
        target,
        jail=jail,
        duration=parse_duration(duration) if duration else None,
        permanent=permanent,
        reason=reason,
        by=_operator(by),
        now=now,
    )
    _write(settings, decision, wait, as_json, now)


@bans_app.command("remove")
@handle_errors
def bans_remove(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="the banned address or CIDR"),
    jail: str = typer.Option(None, "--jail", help="jail (default: the first configured)"),
    reason: str = typer.Option(..., "--reason", help="why (recorded in the audit log)"),
    by: str = typer.Option(None, "--by", help="operator name (default: the login name)"),
    wait: float = typer.Option(0.0, "--wait", help="seconds to wait until the processor lifts it from bans"),
    as_json: bool = JsonOpt,
) -> None:
    """Lift a ban by hand (an ``unban`` decision with origin manual)."""
    settings = settings_for(ctx)
    now = utcnow()
    decision = manual_unban(settings, target, jail=jail, reason=reason, by=_operator(by), now=now)
    _write(settings, decision, wait, as_json, now)


def _write(settings: Settings, decision: Decision, wait: float, as_json: bool, now: datetime) -> None:
    cluster = _connect(settings)
    if decision.action == "ban":
        try:
            allow = read_allow_list(cluster)
        except BrokerError:  # e.g. no Read on the allow topic: the processor and the enforcers check it
            allow = None
        if allow is not None:
            check_not_allowed(decision, allow, now)
    written = publish_decision(cluster, decision)
    mirrored: bool | None = None
    if wait > 0:
        wait_for_mirror(cluster, decision, wait, since=now)
        mirrored = True
    if as_json:
        echo_json_line(
            to_json(
                {
                    "decision": decision,
                    "partition": written.partition,
                    "offset": written.offset,
                    "mirrored": mirrored,
                }
            )
        )
        return
    what = "ban" if decision.action == "ban" else "unban"
    until = ""
    if decision.action == "ban":
        until = " permanently" if decision.expires_at is None else f" until {_when(decision.expires_at)}"
    _out().print(
        f"recorded manual {what} of {_s(decision.ip)} in jail {_s(decision.jail)}{until} by {_s(decision.by)} "
        f"(decision {_s(decision.id)})"
        + ("; in force in bans" if mirrored and what == "ban" else "")
        + ("; lifted in bans" if mirrored and what == "unban" else "")
    )


# --------------------------------------------------------------------------------------------- status


@handle_errors
def status(
    ctx: typer.Context,
    window: str = typer.Option("1h", "--window", help="components seen within this long are listed"),
    wide: bool = typer.Option(False, "--wide", help="more columns: instance, version, started, counters"),
    as_json: bool = JsonOpt,
) -> None:
    """The fleet: one line per processor, shipper and enforcer seen (heartbeats), and which went silent.

    Exit 1 when no processor is live, a component is silent, or a lag of 1,000 records or more grows.
    """
    settings = settings_for(ctx)
    w = parse_duration(window)
    cluster = _connect(settings)
    now = utcnow()
    with _progress(not as_json, "heartbeats") as progress:
        view = load_view(
            cluster,
            now,
            reports_window=w,
            progress=progress,
            verifier=Verifier.from_settings(settings.identity),
        )
    _say_rejected(view)
    hosts = queries.fleet_status(view, now)
    problems = _status_problems(hosts)
    if as_json:
        echo_json_line(to_json(hosts))
    else:
        _print_status(hosts, w, wide, problems)
    if problems:
        raise typer.Exit(EXIT_FINDINGS)


def _status_problems(hosts: list[HostStatus]) -> list[str]:
    out = []
    if not any(h.role == "processor" and not h.silent for h in hosts):
        out.append("no live processor: no failure is counted and no ban decided")
    out += [f"{h.role} {printable(h.host)} is silent" for h in hosts if h.silent]
    out += [f"{h.role} {printable(h.host)}: lag {h.lag:,.0f} and growing" for h in hosts if h.lag_growing]
    out += [
        f"{h.role} {printable(h.host)}: its clock runs ahead, Kafka refuses its records as timestamped in the"
        f" future ({h.counters.get('clock_rejected', 0):,.0f} so far): fix its clock (NTP)"
        for h in hosts
        if h.counters.get("clock_ahead") and not h.silent
    ]
    return out


_ROLE_ORDER = {"processor": 0, "shipper": 1, "enforcer": 2}


def _state(h: HostStatus) -> str:
    if h.silent:
        return "Silent"
    if h.lag_growing:
        return "Lagging"
    if h.counters.get("clock_ahead"):
        return "Clock ahead"
    return "Ready"


def _info(h: HostStatus) -> str:
    """The one number that matters most for the role."""
    c = h.counters
    if h.role == "processor":
        return f"parts={c.get('partitions', 0):g} decided={c.get('decisions', 0):,.0f}"
    if h.role == "shipper":
        return f"shipped={c.get('events_shipped', 0):,.0f}"
    if h.role == "enforcer":
        applied = "?" if h.applied is None else f"{h.applied:,}"
        return f"applied={applied}" + (f" failed={h.failed}" if h.failed else "")
    return ""


def _short_age(age_s: float | None) -> str:
    if age_s is None:
        return "-"
    s = max(0, round(age_s))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _print_status(hosts: list[HostStatus], window: timedelta, wide: bool, problems: list[str]) -> None:
    """One short line per component, in the manner of ``kubectl get`` (80 columns; ``--wide`` for more)."""
    if not hosts:
        typer.echo(
            f"No components seen in the last {format_duration(window.total_seconds())} (no heartbeats)."
        )
    else:
        cols = ["ROLE", "HOST", "STATE", "SEEN", "LAG", "INFO"]
        if wide:
            cols += ["INSTANCE", "VERSION", "UP", "COUNTERS"]
        rows = []
        for h in sorted(hosts, key=lambda h: (_ROLE_ORDER.get(h.role, 9), h.host, h.instance)):
            row = [
                h.role,
                printable(h.host)[:24],
                _state(h),
                _short_age(h.age_s),
                "-" if h.lag is None else f"{h.lag:,.0f}",
                _info(h),
            ]
            if wide:
                up = None if h.started_at is None or h.last_seen is None else (h.last_seen - h.started_at)
                row += [
                    printable(h.instance)[:32] or "-",
                    printable(h.version) or "-",
                    _short_age(up.total_seconds() if up is not None else None),
                    _counter_text(h) or "-",
                ]
            rows.append(row)
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        for r in [cols, *rows]:
            typer.echo("   ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip())
    for p in problems:
        typer.echo(f"! {p}")


_SHOWN = ("events_shipped", "active", "applied", "failed")


def _counter_text(h: HostStatus) -> str:
    keys = [k for k in sorted(h.counters) if k not in _SHOWN and "." not in k][:4]
    return ", ".join(f"{k}={h.counters[k]:g}" for k in keys)


# --------------------------------------------------------------------------------------- audit verify


@audit_app.command("verify")
@handle_errors
def audit_verify(
    ctx: typer.Context,
    within: str = typer.Option("5s", "--within", help="bound from decision to applied on every host"),
    window: str = typer.Option("1h", "--window", help="reports (heartbeats, actions) read this far back"),
    as_json: bool = JsonOpt,
) -> None:
    """Check the trail: applied bans trace to decisions, bans in force are applied on every enforcer
    within the bound, lifted bans are gone. Prints the discrepancies; exits 1 when there are any."""
    settings = settings_for(ctx)
    bound = parse_duration(within)
    w = parse_duration(window)
    cluster = _connect(settings)
    now = utcnow()
    with _progress(not as_json, "bans, reports and decisions") as progress:
        view = load_view(
            cluster,
            now,
            reports_window=w,
            progress=progress,
            verifier=Verifier.from_settings(settings.identity),
        )
        decisions = load_trail(cluster, view, now, w, progress=progress)
    _say_rejected(view)
    result = queries.verify(view, decisions, now, bound)
    if as_json:
        echo_json_line(to_json(result))
    else:
        _print_verify(result)
    if not result.ok:
        raise typer.Exit(EXIT_FINDINGS)


def _print_verify(r: VerifyResult) -> None:
    out = _out()
    head = (
        f"{r.bans_checked} ban(s) in force checked on {len(r.enforcers)} enforcer(s) "
        f"({len(r.live)} live), {r.reports_checked} applied report(s) traced, bound {r.within_s:g}s"
    )
    if r.ok:
        out.print(f"[green]OK[/]: {head}; no discrepancies.")
        return
    table = Table("kind", "host", "detail")
    for d in r.discrepancies:
        _add_row(table, Text(d.kind, style="bold red"), d.host, d.detail)
    out.print(table)
    out.print(f"[red]FAILED[/]: {len(r.discrepancies)} discrepancy(ies); {head}")


def register(app: typer.Typer) -> None:
    app.add_typer(bans_app, name="bans")
    app.command("status")(status)
    app.add_typer(audit_app, name="audit")


__all__: list[Any] = ["register"]
