"""``fleet2ban``: the one command. Exit codes: 0 ok, 1 findings or failure, 2 usage or configuration."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from fleet2ban import __version__
from fleet2ban.cli import (
    allow_cmds,
    audit_cmds,
    console_cmds,
    dev_cmds,
    enforcer_cmds,
    import_cmds,
    notifier_cmds,
    processor_cmds,
    setup_cmds,
    shipper_cmds,
)
from fleet2ban.cli.common import GlobalOptions
from fleet2ban.safetext import printable


class OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument) as one line on stderr and exit 2, like every
    other error of the command (issue 20): never a multi-line box, never outside text raw."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as exc:  # click's ClickException family (UsageError, BadParameter...)
            if not standalone_mode:
                raise
            ctx = getattr(exc, "ctx", None)
            where = getattr(ctx, "command_path", None) or "fleet2ban"
            fmt = getattr(exc, "format_message", None)
            text = fmt() if callable(fmt) else str(exc)
            message = " ".join(printable(str(text)).replace("\\n", " ").split())
            if message:  # empty: a group called without a command, whose help is already printed
                typer.echo(f"fleet2ban: error: {message} (see {where} --help)", err=True)
            sys.exit(int(getattr(exc, "exit_code", 2)))
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("fleet2ban: aborted", err=True)
            sys.exit(1)
        if standalone_mode and isinstance(result, int):
            sys.exit(result)  # a command's typer.Exit(code): click returns it without standalone mode
        return result


app = typer.Typer(
    cls=OneLineErrors,
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


for _group in (
    setup_cmds,
    shipper_cmds,
    processor_cmds,
    enforcer_cmds,
    audit_cmds,
    allow_cmds,
    import_cmds,
    notifier_cmds,
    dev_cmds,
    console_cmds,
):
    _group.register(app)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
