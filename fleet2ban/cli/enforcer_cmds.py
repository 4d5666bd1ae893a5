"""``fleet2ban enforcer``: apply the fleet's bans to this host's firewall; ``--show`` and ``--uninstall``."""

from __future__ import annotations

import logging

import typer

from enforcer.backends import BACKENDS, make_backend
from enforcer.backends.xtables import nft_chain_clash
from enforcer.exceptions import FirewallCapabilityError
from enforcer.plan import JailSpec
from fleet2ban.cli.common import (
    EXIT_USAGE,
    cluster_for,
    fail,
    handle_errors,
    settings_for,
    sigterm_as_interrupt,
)
from fleet2ban.metrics import serve_metrics
from fleet2ban.settings import EnforcerSettings

log = logging.getLogger("fleet2ban.enforcer")


@handle_errors
def enforcer(
    ctx: typer.Context,
    backend: str = typer.Option(None, "--backend", help=f"enforcer.backend: {', '.join(BACKENDS)}"),
    host: str = typer.Option(None, "--host", help="enforcer.host: this host's name in reports"),
    target: str = typer.Option(None, "--target", help="enforcer.target: DROP or REJECT"),
    reconcile_interval: float = typer.Option(
        None, "--reconcile-interval", help="enforcer.reconcile_interval_s: seconds between full reconciles"
    ),
    metrics_port: int = typer.Option(
        None, "--metrics-port", help="metrics.port: /metrics and /healthz (0 = off)"
    ),
    show: bool = typer.Option(
        False, "--show", help="list the chains, rules and sets this enforcer owns, and exit"
    ),
    uninstall: bool = typer.Option(
        False, "--uninstall", help="remove every chain, jump rule and set this enforcer owns, and exit"
    ),
) -> None:
    """Follow the bans topic from the beginning and keep this host's firewall equal to it.

    Backends: auto (default: nftables where this host's firewall is nftables, ipset where it is legacy
    x_tables; --show says which and why), nftables (table inet fleet2ban, sets with kernel-side timeouts,
    applied in process), ipset (one set per jail and family with kernel-side timeouts, matched by a
    python-iptables rule in the legacy x_tables backend), iptables (a rule per ban, legacy x_tables),
    dryrun (logs only, no privileges). See what is installed with `fleet2ban enforcer --show`.
    """
    settings = settings_for(
        ctx,
        **{
            "enforcer.backend": backend,
            "enforcer.host": host,
            "enforcer.target": target.upper() if target else None,
            "enforcer.reconcile_interval_s": reconcile_interval,
            "metrics.port": metrics_port,
        },
    )
    if show and uninstall:
        raise fail("--show and --uninstall exclude each other", EXIT_USAGE)
    jails = [JailSpec.from_settings(j) for j in settings.jails if j.enabled]
    fw = make_backend(settings.enforcer.backend, jails, settings.enforcer)
    fw.check()
    if show:
        typer.echo(fw.show())
        return
    if uninstall:
        removed = fw.uninstall()
        if settings.enforcer.backend == "auto":
            removed += uninstall_others(fw.name, jails, settings.enforcer)
        typer.echo("\n".join(f"removed {r}" for r in removed) or "nothing to remove")
        return

    from enforcer.agent import Agent

    if fw.auto_reason:
        log.info("enforcer.backend auto picked %s: %s", fw.name, fw.auto_reason)
    xtables = fw.name in ("ipset", "iptables")
    clash = nft_chain_clash([fw.chain_name(j.name) for j in jails]) if xtables else []
    if clash:
        log.warning(
            "chains named like ours exist under iptables-nft (%s): they are not ours and are left alone; "
            "fleet2ban's rules live in the legacy backend only",
            ", ".join(clash),
        )
    sigterm_as_interrupt()
    with cluster_for(settings, create_topics=not settings.kafka.bootstrap_servers, wait=True) as cluster:
        agent = Agent(settings, cluster, fw)
        server = serve_metrics(settings.metrics.port, settings.metrics.bind, agent.health)
        try:
            agent.run()
        except KeyboardInterrupt:
            log.info("enforcer stopping; bans stay in the kernel (set entries keep expiring on time)")
        finally:
            if server is not None:
                server.stop()


def uninstall_others(picked: str, jails: list[JailSpec], settings: EnforcerSettings) -> list[str]:
    """With ``auto``, ``--uninstall`` also removes what the backend it did not pick owns (a host that
    moved from ipset to nftables keeps no stale chains); a backend this host cannot run is skipped."""
    removed: list[str] = []
    for other in ("nftables", "ipset"):
        if other == picked:
            continue
        try:
            backend = make_backend(other, jails, settings)
            backend.check()
            removed += backend.uninstall()
        except FirewallCapabilityError as exc:
            log.debug("--uninstall: no %s here (%s)", other, exc)
    return removed


def register(app: typer.Typer) -> None:
    app.command("enforcer")(enforcer)
