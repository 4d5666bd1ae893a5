"""Set-up commands: ``fleet2ban broker`` (the embedded broker) and ``fleet2ban topics create``."""

from __future__ import annotations

import threading

import typer
from rich.console import Console
from rich.table import Table

from fleet2ban.broker import EmbeddedBroker
from fleet2ban.cli.common import EXIT_FINDINGS, handle_errors, settings_for, sigterm_as_interrupt
from fleet2ban.kafka import ensure_topics, resolve
from fleet2ban.settings import dump_settings, env_names, to_yaml

topics_app = typer.Typer(help="Create and check the fleet's Kafka topics.", no_args_is_help=True)
config_app = typer.Typer(help="Show the effective settings and the names they go by.", no_args_is_help=True)


@handle_errors
def broker(
    ctx: typer.Context,
    port: int = typer.Option(0, "--port", help="loopback port (0 = a free one)"),
    create_topics: bool = typer.Option(
        True, "--create-topics/--no-create-topics", help="create the fleet's topics once it is up"
    ),
) -> None:
    """Run the embedded Kafka-protocol broker (tansu, memory only) on loopback until Ctrl-C/SIGTERM."""
    settings = settings_for(ctx)
    sigterm_as_interrupt()
    with EmbeddedBroker(port=port or None) as b:
        if create_topics:
            ensure_topics(resolve(settings.kafka.model_copy(update={"flavor": "tansu"}), b.bootstrap))
        typer.echo(b.bootstrap)
        typer.echo(
            f"embedded broker ready: export FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS={b.bootstrap}", err=True
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            typer.echo("stopping embedded broker", err=True)


@topics_app.command("create")
@handle_errors
def topics_create(
    ctx: typer.Context,
    bootstrap: str = typer.Option(None, "--bootstrap", help="kafka.bootstrap_servers"),
    partitions: int = typer.Option(None, "--partitions", help="kafka.partitions"),
) -> None:
    """Create the topics with the design's partitions, retention and cleanup policy (idempotent).

    Exits 1 when an existing topic differs (partition count or cleanup policy).
    """
    settings = settings_for(ctx, **{"kafka.bootstrap_servers": bootstrap, "kafka.partitions": partitions})
    cluster = resolve(settings.kafka)
    checks = ensure_topics(cluster)
    table = Table("topic", "status", "detail")
    for c in checks:
        table.add_row(c.name, c.status, c.detail)
    Console().print(table)
    if any(c.status == "mismatch" for c in checks):
        raise typer.Exit(EXIT_FINDINGS)


@config_app.command("show")
@handle_errors
def config_show(ctx: typer.Context) -> None:
    """Print the effective settings (file + environment + flags) as YAML, secrets masked."""
    typer.echo(to_yaml(dump_settings(settings_for(ctx))), nl=False)


@config_app.command("env")
def config_env() -> None:
    """List every FLEET2BAN_* environment variable the settings accept (nested names joined by __)."""
    for name in sorted(env_names()):
        typer.echo(name)


def register(app: typer.Typer) -> None:
    app.command("broker")(broker)
    app.add_typer(topics_app, name="topics")
    app.add_typer(config_app, name="config")
