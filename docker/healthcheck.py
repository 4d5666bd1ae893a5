"""Container health check: ``GET /healthz`` on this component's metrics port; exit 0 healthy, 1 not.

The port and bind address come from the same settings the component reads (``FLEET2BAN_CONFIG`` file,
``FLEET2BAN_METRICS__PORT`` / ``FLEET2BAN_METRICS__BIND``), so the check follows the configuration. With
``metrics.port`` 0 the component serves no health endpoint, and there is nothing to ask: exit 0.
Used by the image's HEALTHCHECK (Docker, Compose); Kubernetes uses its own probes on the same endpoint.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from fleet2ban.exceptions import ConfigError
from fleet2ban.settings import load_settings

TIMEOUT_S = 4.0


def health_url(port: int, bind: str) -> str:
    """The URL to ask: loopback when the server listens on every address, else the bound address."""
    host = bind.strip()
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def check() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    if not settings.metrics.port:
        print("healthcheck: metrics.port is 0, no health endpoint to ask")
        return 0
    url = health_url(settings.metrics.port, settings.metrics.bind)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            body = resp.read(2048).decode("utf-8", "replace")
            print(f"healthcheck: {url}: {resp.status} {body}")
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"healthcheck: {url}: {exc.code} {exc.read(2048).decode('utf-8', 'replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(check())
