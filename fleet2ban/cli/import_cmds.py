"""``fleet2ban bans import`` and ``fleet2ban bans export``: the bans operators already have, in and out.

The parsing and the rails are :mod:`fleet2ban.audit.importer` (pure); here: the options, writing the
decisions in batches, reading the bans in force, and what is printed.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from fleet2ban.audit import importer
from fleet2ban.audit.reader import into_view
from fleet2ban.audit.timeparse import parse_duration
from fleet2ban.audit.view import FleetView
from fleet2ban.audit.writer import publish_decisions
from fleet2ban.cli.audit_cmds import _connect, _operator, bans_app
from fleet2ban.cli.common import EXIT_FINDINGS, echo_json_line, handle_errors, settings_for
from fleet2ban.contract import BanState, rfc3339, utcnow
from fleet2ban.exceptions import ConfigError
from fleet2ban.kafka import Source, TopicReader
from fleet2ban.safetext import printable

DEFAULT_F2B_DB = Path("/var/lib/fail2ban/fail2ban.sqlite3")


@bans_app.command("import")
@handle_errors
def bans_import(
    ctx: typer.Context,
    file: Path = typer.Argument(None, help="the file (default for fail2ban-db: " + str(DEFAULT_F2B_DB) + ")"),
    fmt: str = typer.Option(..., "--format", help="fail2ban-db | csv | json | lines"),
    jail: str = typer.Option(None, "--jail", help="put every ban in this jail (else each entry's own jail)"),
    ttl: str = typer.Option(
        None, "--ttl", help="length of entries without an end (default: the jail's bantime)"
    ),
    reason: str = typer.Option(None, "--reason", help="recorded with each ban (default: imported from FILE)"),
    by: str = typer.Option(None, "--by", help="operator name (default: the login name)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print what would be written; write nothing"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: one per ban (--dry-run), else a summary"),
) -> None:
    """Import bans in force from fail2ban's database, a CSV/JSON file or a blocklist, as manual bans.

    Every address passes the same safety rails as ``bans add``; refused ones are listed (exit 1 when any
    was refused). Expired fail2ban bans are skipped and counted; permanent ones stay permanent.
    """
    settings = settings_for(ctx)
    if fmt not in importer.FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(importer.FORMATS)} (got {fmt!r})")
    path = file or (DEFAULT_F2B_DB if fmt == "fail2ban-db" else None)
    if path is None:
        raise ConfigError("give the FILE to import")
    now = utcnow()
    planned = importer.plan(
        importer.read_items(path, fmt),
        settings,
        now=now,
        jail=jail,
        ttl=parse_duration(ttl) if ttl else None,
        reason=reason or f"imported from {path.name} ({fmt})",
        by=_operator(by),
    )
    for r in planned.refused:
        typer.echo(f"refused {printable(r.target)} ({printable(r.where)}): {printable(r.why)}", err=True)
    if dry_run:
        if as_json:
            for d in planned.decisions:
                echo_json_line(_ban_json(d.ip, d.jail, d.expires_at, d.reason))
        else:
            for d in planned.decisions:
                until = "permanent" if d.expires_at is None else f"until {rfc3339(d.expires_at)}"
                typer.echo(f"would ban {d.ip} in jail {d.jail} {until}")
    else:
        publish_decisions(_connect(settings), planned.decisions)
    summary = {
        "written": 0 if dry_run else len(planned.decisions),
        "would_write": len(planned.decisions) if dry_run else 0,
        "refused": len(planned.refused),
        "expired": planned.expired,
        "duplicates": planned.duplicates,
    }
    if as_json and not dry_run:
        echo_json_line(json.dumps(summary))
    elif not as_json:
        verb = "would write" if dry_run else "wrote"
        typer.echo(
            f"{verb} {len(planned.decisions)} manual ban(s); refused {summary['refused']}, "
            f"expired {summary['expired']}, duplicates {summary['duplicates']}",
            err=True,
        )
    if planned.refused:
        raise typer.Exit(EXIT_FINDINGS)


def _ban_json(ip: str, jail: str, expires: datetime | None, reason: str | None) -> str:
    return json.dumps(
        {
            "ip": ip,
            "jail": jail,
            "expires_at": None if expires is None else rfc3339(expires),
            "reason": reason,
        },
        ensure_ascii=True,
    )


@bans_app.command("export")
@handle_errors
def bans_export(
    ctx: typer.Context,
    fmt: str = typer.Option("csv", "--format", help="csv | json | lines"),
    jail: str = typer.Option(None, "--jail", help="only this jail"),
) -> None:
    """Write the bans in force (read from ``bans``) to stdout: what ``bans import`` reads back."""
    settings = settings_for(ctx)
    if fmt not in ("csv", "json", "lines"):
        raise ConfigError(f"--format must be csv, json or lines (got {fmt!r})")
    cluster = _connect(settings)
    view = FleetView()
    with TopicReader(cluster, [Source("bans", cluster.topics.bans)], into_view(view)) as reader:
        reader.catch_up()
    now = utcnow()
    states: list[BanState] = sorted(
        (
            e.state
            for e in view.bans.values()
            if (e.state.expires_at is None or e.state.expires_at > now)
            and (jail is None or e.state.jail == jail)
        ),
        key=lambda s: (s.jail, s.ip),
    )
    out: Any = sys.stdout
    for line in importer.render_export(importer.export_rows(states), fmt):  # type: ignore[arg-type]
        out.write(line + "\n")


def register(app: typer.Typer) -> None:
    """The commands live in ``bans`` (registered by :mod:`fleet2ban.cli.audit_cmds`)."""
