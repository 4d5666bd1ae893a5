"""``fleet2ban notifier``: decisions to webhooks, Slack and e-mail (fleet2ban.notify)."""

from __future__ import annotations

import typer

from fleet2ban.cli.common import (
    EXIT_USAGE,
    cluster_for,
    fail,
    handle_errors,
    settings_for,
    sigterm_as_interrupt,
)
from fleet2ban.metrics import serve_metrics


@handle_errors
def notifier(
    ctx: typer.Context,
    metrics_port: int = typer.Option(None, "--metrics-port", help="metrics.port (0 = off)"),
) -> None:
    """Send ban and unban decisions to the configured destinations, at least once (until Ctrl-C/SIGTERM)."""
    from fleet2ban.notify.agent import Notifier

    settings = settings_for(ctx, **{"metrics.port": metrics_port})
    if not settings.notifier.destinations:
        raise fail("no destinations: set notifier.destinations (see fleet2ban config show)", EXIT_USAGE)
    sigterm_as_interrupt()
    with cluster_for(settings, wait=True, uses=("decisions", "reports")) as cluster:
        agent = Notifier(settings, cluster)
        server = serve_metrics(settings.metrics.port, settings.metrics.bind, agent.health)
        try:
            agent.run()
        except KeyboardInterrupt:
            agent.stop_event.set()
        finally:
            if server is not None:
                server.stop()


def register(app: typer.Typer) -> None:
    app.command("notifier")(notifier)
