"""``fleet2ban``: the one command. Exit codes: 0 ok, 1 findings or failure, 2 usage or configuration."""

from __future__ import annotations

from pathlib import Path

import typer

from fleet2ban import __version__
from fleet2ban.cli import (
    audit_cmds,
    console_cmds,
    dev_cmds,
    enforcer_cmds,
    processor_cmds,
    setup_cmds,
    shipper_cmds,
)
from fleet2ban.cli.common import GlobalOptions

app = typer.Typer(
    name="fleet2ban",
    help="fail2ban for a fleet of AMPS servers, on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fleet2ban {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Path = typer.Option(
        None, "--config", "-c", envvar="FLEET2BAN_CONFIG", help="YAML settings file", show_envvar=True
    ),
    bootstrap: str = typer.Option(None, "--bootstrap", "-b", help="kafka.bootstrap_servers"),
    topic_prefix: str = typer.Option(None, "--topic-prefix", help="kafka.topic_prefix"),
    log_level: str = typer.Option(None, "--log-level", help="log.level: DEBUG, INFO, WARNING, ERROR"),
    log_format: str = typer.Option(None, "--log-format", help="log.format: human or json"),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    ctx.obj = GlobalOptions(
        config=config,
        overrides={
            "kafka.bootstrap_servers": bootstrap,
            "kafka.topic_prefix": topic_prefix,
            "log.level": log_level.upper() if log_level else None,
            "log.format": log_format,
        },
    )


for _group in (setup_cmds, shipper_cmds, processor_cmds, enforcer_cmds, audit_cmds, dev_cmds, console_cmds):
    _group.register(app)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
