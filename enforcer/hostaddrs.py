"""What the enforcer knows of the hosts around it: this host's own addresses (``ip -j addr``) and the
Kafka brokers' (never banned: the safety rails)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from collections.abc import Iterable

from fleet2ban.logs import RateLimitedLog

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)


def own_addresses() -> list[str]:
    """Every address configured on this host's (namespace's) interfaces."""
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10, check=False
        )
        data = json.loads(out.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        data = []
    addrs = [a["local"] for link in data for a in link.get("addr_info", []) if "local" in a]
    if not addrs:
        try:
            addrs = [str(i[4][0]) for i in socket.getaddrinfo(socket.gethostname(), None)]
        except OSError:
            addrs = []
    return addrs


def broker_addresses(hostports: Iterable[str]) -> list[str]:
    """The addresses Kafka brokers' host names resolve to (``host:port`` items)."""
    out: list[str] = []
    for hp in hostports:
        host = hp.rsplit(":", 1)[0].strip("[]")
        try:
            out += [str(i[4][0]) for i in socket.getaddrinfo(host, None)]
        except OSError:
            rlog.warning(f"resolve-{host}", "cannot resolve Kafka broker %s", host)
    return list(dict.fromkeys(out))
