"""``fleet2ban acls apply``: the fleet's Kafka ACLs (:mod:`fleet2ban.kafka.acls`) on a cluster."""

from __future__ import annotations

import typer

from fleet2ban.cli.common import handle_errors, settings_for
from fleet2ban.exceptions import ConfigError
from fleet2ban.kafka import admin_config, resolve
from fleet2ban.kafka.acls import ROLE_DESCRIPTIONS, apply_acls, fleet_grants, principal_of

acls_app = typer.Typer(help="The fleet's Kafka ACLs, one principal per role.", no_args_is_help=True)


@acls_app.command("apply")
@handle_errors
def acls_apply(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the ACLs, change nothing"),
    user_prefix: str = typer.Option(
        "fleet2ban-", "--user-prefix", help="SASL user names are <prefix><role> (fleet2ban-shipper, ...)"
    ),
    roles: list[str] = typer.Option(
        None,
        "--role",
        help="only this role's ACLs (repeatable): e.g. --role shipper --user-prefix amps1- for a per-host user",
    ),
) -> None:
    """Create the ACLs of every role (idempotent), for the topics under kafka.topic_prefix.

    Run it with the settings of the cluster's administrator (a super user, or Alter on the cluster).
    """
    settings = settings_for(ctx)
    grants = fleet_grants(settings.kafka.topic_prefix, settings.processor.app_id, settings.notifier.group_id)
    if roles:
        unknown = sorted(set(roles) - set(ROLE_DESCRIPTIONS))
        if unknown:
            raise ConfigError(f"unknown role {unknown[0]!r}: one of {', '.join(ROLE_DESCRIPTIONS)}")
        grants = [g for g in grants if g.role in roles]
    if dry_run:
        for g in grants:
            typer.echo(g.describe(principal_of(g.role, user_prefix)))
        return
    cluster = resolve(settings.kafka)
    n = apply_acls(admin_config(cluster), grants, user_prefix)
    typer.echo(f"applied {n} ACL bindings ({len(grants)} grants) at {cluster.bootstrap}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(acls_app, name="acls")
