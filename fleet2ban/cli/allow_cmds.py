"""``fleet2ban allow add|remove|list``: the live allow-list (issue 18).

A thin shell: :mod:`fleet2ban.allowlist` builds and reads entries, :mod:`fleet2ban.audit.writer` writes
them to the ``allow`` topic with their audit record on ``decisions``. Exit codes: 0 ok; 1 ``remove`` of an
entry that is not there; 2 usage, configuration or an unreachable broker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from rich.table import Table

from fleet2ban.allowlist import entry_text, jail_name, new_entry, new_entry_id
from fleet2ban.audit.model import to_json
from fleet2ban.audit.timeparse import parse_duration
from fleet2ban.audit.writer import publish_allow, read_allow_list
from fleet2ban.cli.audit_cmds import JsonOpt, _add_row, _connect, _operator, _out, _rel, _s, _when
from fleet2ban.cli.common import EXIT_FINDINGS, echo_json_line, handle_errors, settings_for
from fleet2ban.contract import (
    ALL_JAILS,
    AllowEntry,
    ContractError,
    allow_decision,
    allow_key,
    normalize_target,
    utcnow,
)
from fleet2ban.exceptions import ConfigError

allow_app = typer.Typer(
    help="The live allow-list: addresses and networks never banned (with an optional expiry).",
    no_args_is_help=True,
)


@allow_app.command("add")
@handle_errors
def allow_add(
    ctx: typer.Context,
    network: str = typer.Argument(..., help="an IP address or a CIDR"),
    jail: str = typer.Option(None, "--jail", help="only in this jail (default: every jail)"),
    ttl: str = typer.Option(None, "--ttl", help="how long it applies (10m, 2h, 7d); default: until removed"),
    reason: str = typer.Option(None, "--reason", help="why (recorded in the audit log)"),
    by: str = typer.Option(None, "--by", help="operator name (default: the login name)"),
    as_json: bool = JsonOpt,
) -> None:
    """Never ban NETWORK (in every jail, or one): bans in force that it covers are lifted everywhere."""
    settings = settings_for(ctx)

    def build(now: datetime) -> AllowEntry:
        return new_entry(
            network,
            jail=jail,
            ttl=parse_duration(ttl) if ttl else None,
            reason=reason,
            by=_operator(by),
            now=now,
            jails=[j.name for j in settings.jails],
        )

    build(utcnow())  # bad input is refused before any broker is asked
    cluster = _connect(settings)
    entry = build(utcnow())  # dated when it is written, the connection made
    publish_allow(cluster, entry.key(), entry, allow_decision(entry, "allow"))
    if as_json:
        echo_json_line(to_json(entry))
        return
    until = "until removed" if entry.expires_at is None else f"until {_when(entry.expires_at)}"
    _out().print(f"added {_s(entry_text(entry))}, {until} (entry {_s(entry.id)})")


@allow_app.command("remove")
@handle_errors
def allow_remove(
    ctx: typer.Context,
    network: str = typer.Argument(..., help="the address or CIDR of the entry"),
    jail: str = typer.Option(None, "--jail", help="the entry's jail (default: the every-jail entry)"),
    reason: str = typer.Option(None, "--reason", help="why (recorded in the audit log)"),
    by: str = typer.Option(None, "--by", help="operator name (default: the login name)"),
    as_json: bool = JsonOpt,
) -> None:
    """Remove an allow-list entry (exit 1 when there is none for NETWORK in that jail)."""
    settings = settings_for(ctx)
    try:
        net = normalize_target(network)
    except ContractError as exc:
        raise ConfigError(str(exc)) from None
    name = jail_name(jail, [j.name for j in settings.jails])
    cluster = _connect(settings)
    key = allow_key(name, net)
    allow = read_allow_list(cluster)
    current = allow.entries.get(key)
    if current is None:
        others = sorted(e.jail for e in allow.entries.values() if e.network == net)
        hint = f" (there is one in: {', '.join(others)}; give --jail)" if others else ""
        where = "every jail" if name == ALL_JAILS else f"jail {name}"
        _out().print(f"no allow-list entry for {_s(net)} in {_s(where)}{_s(hint)}")
        raise typer.Exit(EXIT_FINDINGS)
    now = utcnow()
    audit = allow_decision(
        current,
        "unallow",
        id=new_entry_id(),
        at=now,
        by=_operator(by),
        reason=(reason or "").strip() or None,
    )
    publish_allow(cluster, key, None, audit)
    if as_json:
        echo_json_line(to_json({"removed": current, "decision": audit}))
        return
    _out().print(f"removed {_s(entry_text(current))} (by {_s(audit.by)})")


@allow_app.command("list")
@handle_errors
def allow_list(
    ctx: typer.Context,
    show_all: bool = typer.Option(False, "--all", help="also entries that have expired"),
    as_json: bool = JsonOpt,
) -> None:
    """The allow-list entries in force (``--all``: expired ones too, until someone removes them)."""
    settings = settings_for(ctx)
    cluster = _connect(settings)
    now = utcnow()
    allow = read_allow_list(cluster)
    entries = allow.active(now)
    if show_all:
        entries += sorted(
            (e for e in allow.entries.values() if not e.active_at(now)), key=lambda e: e.network
        )
    if as_json:
        echo_json_line(to_json([{**_fields(e), "active": e.active_at(now)} for e in entries]))
        return
    table = Table("network", "jail", "expires", "by", "at", "reason")
    for e in entries:
        expires = "never" if e.expires_at is None else _rel(e.expires_at, now)
        _add_row(table, e.network, e.jail, expires, e.by or "", _when(e.at), e.reason or "")
    out = _out()
    out.print(table)
    out.print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")


def _fields(e: Any) -> dict[str, Any]:
    import msgspec

    out = msgspec.to_builtins(e)
    assert isinstance(out, dict)
    return out


def register(app: typer.Typer) -> None:
    app.add_typer(allow_app, name="allow")


__all__: list[Any] = ["register"]
