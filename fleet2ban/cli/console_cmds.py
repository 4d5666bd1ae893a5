"""``fleet2ban console``: the web console (bans in force, one IP, history, fleet), live in a browser."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import typer

from fleet2ban.audit.timeparse import parse_duration
from fleet2ban.cli.common import cluster_for, handle_errors, settings_for, sigterm_as_interrupt
from fleet2ban.console.security import load_tls, load_token, parse_bind, require_token_for
from fleet2ban.console.server import Windows, build, serve

log = logging.getLogger("fleet2ban.console")


@handle_errors
def console(
    ctx: typer.Context,
    bind: str = typer.Option("127.0.0.1:8080", "--bind", help="HOST:PORT to serve on (loopback by default)"),
    allow_write: bool = typer.Option(
        False,
        "--allow-write",
        help="allow manual ban/unban from the page (recorded with the operator's name)",
    ),
    token_file: Path = typer.Option(
        None, "--token-file", help="file holding the login token; required when --bind is not loopback"
    ),
    tls_cert: Path = typer.Option(
        None,
        "--tls-cert",
        help="PEM certificate (chain) to serve HTTPS; required when --bind is not loopback",
    ),
    tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert"),
    reports_window: str = typer.Option(
        "1h", "--reports-window", help="reports (heartbeats) read this far back"
    ),
    decisions_window: str = typer.Option(
        "1h", "--decisions-window", help="recent decisions kept for the feed"
    ),
    ip_window: str = typer.Option("6h", "--ip-window", help="how far back an IP's failures are charted"),
) -> None:
    """Serve the web console. Read-only unless --allow-write; off loopback only with --token-file and
    --tls-cert/--tls-key (the token and the session cookie never travel in clear text)."""
    settings = settings_for(ctx)
    host, port = parse_bind(bind)
    token = load_token(token_file) if token_file else None
    tls = load_tls(tls_cert, tls_key)
    require_token_for(host, token, tls is not None)
    windows = Windows(
        parse_duration(reports_window), parse_duration(decisions_window), parse_duration(ip_window)
    )
    with contextlib.ExitStack() as stack:
        kafka = settings.kafka
        if not kafka.bootstrap_servers:  # a local demo: a local Apache Kafka, empty
            cluster = stack.enter_context(
                cluster_for(settings, uses=("events", "decisions", "bans", "reports"))
            )
            kafka = kafka.model_copy(update={"bootstrap_servers": cluster.bootstrap})
        app, live = build(
            settings, kafka, host=host, token=token, allow_write=allow_write, windows=windows, tls=tls
        )
        live.start()
        stack.callback(live.stop)
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "console on %s://%s:%d/ (%s%s), following %s",
            "https" if tls else "http",
            shown,
            port,
            "read-write" if allow_write else "read-only",
            ", token required" if token else "",
            kafka.bootstrap_servers,
        )
        # uvicorn handles SIGINT/SIGTERM while serving, then re-raises the signal: ours turns it into
        # KeyboardInterrupt here, so the follower (and a local Kafka) stop in order, exit code 0.
        sigterm_as_interrupt()
        with contextlib.suppress(KeyboardInterrupt):
            serve(app, host, port, settings.log.level, tls)
        log.info("console stopped")


def register(app: typer.Typer) -> None:
    app.command("console")(console)
