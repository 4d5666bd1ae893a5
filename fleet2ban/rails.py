"""Safety rails for ban targets: a pure check, shared by the operator CLI and the enforcer.

A ban target is one address (``10.1.2.3``) or a network (``2001:db8::/64``). :func:`check_target`
returns every reason a target must not be banned (an empty list means it may be). It never touches
Kafka or the kernel: callers pass what they protect.

- The CLI (``fleet2ban bans add``) calls it with the jail's ``ignoreip``, ``enforcer.protect`` and the
  ``enforcer.min_prefix_v4/v6`` settings, *before* anything is written to ``decisions``.
- An enforcer adds what only it knows (its own addresses, the Kafka brokers' addresses) to ``protect``.

What is refused, always: loopback, link-local, unspecified (``0.0.0.0``, ``::``), multicast and
broadcast addresses; a target that overlaps (contains or lies inside) a protected/ignored network; a
network wider than the configured minimum prefix length.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fleet2ban.contract import ContractError, normalize_target

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RailKind = Literal["invalid", "loopback", "link-local", "unspecified", "multicast", "protected", "too-wide"]

_ALWAYS: tuple[tuple[RailKind, IPNetwork], ...] = (
    ("loopback", ipaddress.ip_network("127.0.0.0/8")),
    ("loopback", ipaddress.ip_network("::1/128")),
    ("link-local", ipaddress.ip_network("169.254.0.0/16")),
    ("link-local", ipaddress.ip_network("fe80::/10")),
    ("unspecified", ipaddress.ip_network("0.0.0.0/32")),
    ("unspecified", ipaddress.ip_network("::/128")),
    ("multicast", ipaddress.ip_network("224.0.0.0/4")),
    ("multicast", ipaddress.ip_network("ff00::/8")),
    ("multicast", ipaddress.ip_network("255.255.255.255/32")),
)


@dataclass(frozen=True)
class RailViolation:
    """One reason a target must not be banned."""

    kind: RailKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def check_target(
    target: str,
    *,
    protect: Iterable[IPNetwork] = (),
    min_prefix_v4: int = 24,
    min_prefix_v6: int = 48,
) -> list[RailViolation]:
    """Every reason ``target`` must not be banned; ``[]`` when it may be.

    ``protect``: networks never to ban (a jail's ``ignoreip``, ``enforcer.protect``, the host's own and
    the brokers' addresses). A target that overlaps one of them in either direction is refused, so a
    ``/24`` containing an ignored address is refused too. ``min_prefix_v4/v6``: refuse networks wider than
    this (a ``/16`` when the minimum is 24).
    """
    try:
        net = ipaddress.ip_network(normalize_target(target), strict=False)
    except (ContractError, ValueError) as exc:
        return [RailViolation("invalid", str(exc))]
    out: list[RailViolation] = []
    min_prefix = min_prefix_v4 if net.version == 4 else min_prefix_v6
    if net.prefixlen < min_prefix:
        out.append(
            RailViolation(
                "too-wide", f"{net} is wider than /{min_prefix} (enforcer.min_prefix_v{net.version})"
            )
        )
    for kind, special in _ALWAYS:
        if special.version == net.version and net.overlaps(special):
            out.append(RailViolation(kind, f"{net} overlaps {special}"))
    for p in protect:
        if p.version == net.version and net.overlaps(p):
            out.append(RailViolation("protected", f"{net} overlaps protected/ignored {p}"))
    return out
