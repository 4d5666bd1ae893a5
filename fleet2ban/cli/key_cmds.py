"""``fleet2ban identity keygen`` (also ``fleet2ban keys generate``): a host's Ed25519 signing key
(:mod:`fleet2ban.identity`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from fleet2ban.cli.common import handle_errors
from fleet2ban.exceptions import ConfigError
from fleet2ban.identity import generate_key

keys_app = typer.Typer(
    help="Host signing keys (identity.key_path, identity.public_keys).", no_args_is_help=True
)


@keys_app.command("generate")
@handle_errors
def keys_generate(
    host: str = typer.Option(..., "--host", help="the host the key is for (shipper.host / enforcer.host)"),
    out: Path = typer.Option(..., "--out", help="where to write the private key (PEM, mode 0600)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a new Ed25519 private key for HOST; print its public key as settings on stdout.

    Put the file on the host (identity.key_path) and the printed line under identity.public_keys of
    every reader's settings; for a rotation, list the old and the new key until the host uses the new one.
    """
    if out.exists() and not force:
        raise ConfigError(f"{out} exists (use --force to overwrite it)")
    pem, public = generate_key()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    typer.echo(f"identity:\n  public_keys:\n    {host}: [{public}]")


identity_app = typer.Typer(
    help="Host identity: each host signs its events and reports (identity.key_path, identity.public_keys).",
    no_args_is_help=True,
)
identity_app.command("keygen")(keys_generate)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(identity_app, name="identity")
