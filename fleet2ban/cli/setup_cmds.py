"""Set-up commands: ``fleet2ban broker`` (a local Apache Kafka), ``topics create``, ``config``."""

from __future__ import annotations

import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fleet2ban.cli import acl_cmds, key_cmds
from fleet2ban.cli.common import (
    EXIT_FINDINGS,
    handle_errors,
    local_kafka_for,
    settings_for,
    sigterm_as_interrupt,
)
from fleet2ban.exceptions import ConfigError
from fleet2ban.kafka import ensure_topics, resolve
from fleet2ban.kafka.local import fetch_jars
from fleet2ban.kafka.security import SecureSpec, provision
from fleet2ban.settings import dump_settings, env_names, to_yaml

topics_app = typer.Typer(help="Create and check the fleet's Kafka topics.", no_args_is_help=True)
config_app = typer.Typer(help="Show the effective settings and the names they go by.", no_args_is_help=True)


@handle_errors
def broker(
    ctx: typer.Context,
    nodes: int = typer.Option(None, "--nodes", help="broker.nodes: 1, or 3 (replication factor 3)"),
    port: int = typer.Option(None, "--port", help="broker.port: first client port (0 = free ports)"),
    data: Path = typer.Option(None, "--data", help="broker.data_dir (default: a temp folder, removed)"),
    version: str = typer.Option(None, "--version", help="broker.version: the Apache Kafka release"),
    create_topics: bool = typer.Option(
        True, "--create-topics/--no-create-topics", help="create the fleet's topics once it is up"
    ),
    fetch_only: bool = typer.Option(
        False, "--fetch-only", help="only fetch the jars from Maven Central (once) and exit"
    ),
    secure: bool = typer.Option(
        False,
        "--secure",
        help="SASL_SSL (SCRAM-SHA-512, a throw-away CA), ACLs on, one principal per role; needs --data,"
        " where it writes ca.pem and a settings file per role (shipper.yaml, ...)",
    ),
) -> None:
    """Run Apache Kafka (KRaft) from its Maven Central jars on loopback until Ctrl-C/SIGTERM.

    Prints the bootstrap on stdout once the cluster serves metadata, produce and consume. The first run
    fetches the jars (about 45 MB) into broker.cache_dir.
    """
    settings = settings_for(
        ctx,
        **{"broker.nodes": nodes, "broker.port": port, "broker.data_dir": data, "broker.version": version},
    )
    if fetch_only:  # says what it fetches; nothing when the jars are there
        fetch_jars(settings.broker.version, settings.broker.cache_dir)
        return
    if secure and settings.broker.data_dir is None:
        raise ConfigError("--secure needs --data DIR (broker.data_dir): it writes ca.pem and settings there")
    sigterm_as_interrupt()
    spec = (
        SecureSpec.load_or_create(settings.broker.data_dir) if secure and settings.broker.data_dir else None
    )
    local = local_kafka_for(settings, security=spec)
    kafka = settings.kafka.model_copy(update={"replication_factor": local.replication_factor})
    with local as k:
        if spec is not None:
            files = provision(
                spec,
                k.bootstrap,
                kafka.model_dump(include={"topic_prefix", "partitions", "replication_factor"}, mode="json"),
                processor_app_id=settings.processor.app_id,
                notifier_group_id=settings.notifier.group_id,
                create_topics=create_topics,
            )
            typer.echo(
                f"secure: CA {spec.ca_path}; settings per role: " + ", ".join(str(p) for p in files.values()),
                err=True,
            )
        elif create_topics:
            ensure_topics(resolve(kafka, k.bootstrap))
        typer.echo(k.bootstrap)
        typer.echo(
            f"Apache Kafka {k.version} ready ({len(k.nodes)} node(s), data in {k.data_dir}): "
            f"export FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS={k.bootstrap}",
            err=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            typer.echo("stopping Apache Kafka", err=True)


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
    acl_cmds.register(app)
    key_cmds.register(app)
