"""The web console: bans in force with their coverage, one IP's evidence, history and the fleet, live.

A small Starlette app served by uvicorn (``fleet2ban console``). It reuses the audit layer
(:mod:`fleet2ban.audit`) for every query and adds no Kafka code of its own:

- :mod:`.live`: a thread follows ``bans``/``reports``/``decisions`` into a ``FleetView`` (reconnecting
  after a broker outage);
- :mod:`.pages` and :mod:`.charts`: what each page shows, as plain data (pure, tested without a browser);
- :mod:`.app`: routes, templates (Jinja2, autoescaped), the event stream, login and manual decisions;
- :mod:`.security`: bind/token rules, sessions, CSRF, security headers;
- :mod:`.server`: uvicorn in the foreground or in a thread.
"""

from __future__ import annotations

from fleet2ban.console.app import ConsoleConfig, create_app
from fleet2ban.console.live import LiveFleet, LiveStatus
from fleet2ban.console.server import ServerThread, Windows, build, running, serve

__all__ = [
    "ConsoleConfig",
    "LiveFleet",
    "LiveStatus",
    "ServerThread",
    "Windows",
    "build",
    "create_app",
    "running",
    "serve",
]
