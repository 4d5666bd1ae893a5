"""Safety rails for ban targets: a pure check, shared by the operator CLI and the enforcer.

A ban target is one address (``10.1.2.3``) or a network (``2001:db8::/64``). :func:`check_target`
returns every reason a target must not be banned (an empty list means it may be). It never touches
Kafka or the kernel: callers pass what they protect.

- The CLI (``fleet2ban bans add``) calls it with the jail's ``ignoreip``, ``enforcer.protect`` and the
  ``enforcer.min_prefix_v4/v6`` settings, *before* anything is written to ``decisions``.
- An enforcer adds what only it knows (its own addresses, the Kafka brokers' addresses) to ``protect``.
- The processor applies the same :class:`Rails` to every decision it would mirror to ``bans``, manual or
  automatic, so the audit never shows in force what every enforcer refuses (DESIGN §8).

The live allow-list (:mod:`fleet2ban.allowlist`, the ``allow`` topic) is a rail of the same kind that
changes while components run and expires by clock: the processor asks it in its core, every enforcer in
:func:`enforcer.plan.desired_one` (rule ``allowed``), and the CLI and the console before a manual ban
(:func:`fleet2ban.audit.manual.check_not_allowed`).

What is refused, always: loopback, link-local, unspecified (``0.0.0.0/8`` "this network", ``::``),
multicast and broadcast addresses; a target that overlaps (contains or lies inside) a protected/ignored
network; a network wider than the configured minimum prefix length; a target that is not in the
contract's canonical form (:func:`fleet2ban.contract.normalize_target`).
"""

from __future__ import annotations

import ipaddress
import math
import socket
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from fleet2ban.contract import ContractError, normalize_target
from fleet2ban.settings import EnforcerSettings, JailSettings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RailKind = Literal["invalid", "loopback", "link-local", "unspecified", "multicast", "protected", "too-wide"]

_ALWAYS: tuple[tuple[RailKind, IPNetwork], ...] = (
    ("loopback", ipaddress.ip_network("127.0.0.0/8")),
    ("loopback", ipaddress.ip_network("::1/128")),
    ("link-local", ipaddress.ip_network("169.254.0.0/16")),
    ("link-local", ipaddress.ip_network("fe80::/10")),
    ("unspecified", ipaddress.ip_network("0.0.0.0/8")),
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
    allow_loopback: bool = False,
) -> list[RailViolation]:
    """Every reason ``target`` must not be banned; ``[]`` when it may be.

    ``protect``: networks never to ban (a jail's ``ignoreip``, ``enforcer.protect``, the host's own and
    the brokers' addresses). A target that overlaps one of them in either direction is refused, so a
    ``/24`` containing an ignored address is refused too. ``min_prefix_v4/v6``: refuse networks wider than
    this (a ``/16`` when the minimum is 24). ``allow_loopback``: ``enforcer.allow_loopback``, for the dev
    fleet without network namespaces only (its clients are 127.0.0.x).
    """
    try:
        net = ipaddress.ip_network(normalize_target(target), strict=False)
    except (ContractError, ValueError) as exc:
        return [RailViolation("invalid", str(exc))]
    if net.prefixlen == 0:
        return [RailViolation("too-wide", f"{net} is every address")]
    out: list[RailViolation] = []
    min_prefix = min_prefix_v4 if net.version == 4 else min_prefix_v6
    if net.prefixlen < min_prefix:
        out.append(
            RailViolation(
                "too-wide", f"{net} is wider than /{min_prefix} (enforcer.min_prefix_v{net.version})"
            )
        )
    for kind, special in _ALWAYS:
        if kind == "loopback" and allow_loopback:
            continue
        if special.version == net.version and net.overlaps(special):
            out.append(RailViolation(kind, f"{net} overlaps {special}"))
    for p in protect:
        if p.version == net.version and net.overlaps(p):
            out.append(RailViolation("protected", f"{net} overlaps protected/ignored {p}"))
    return out


FAST_PATH_SPECIAL: Final[tuple[IPNetwork, ...]] = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", "::/8", "fe80::/10", "ff00::/8")
)
"""A superset of the special-purpose ranges the rails refuse: an address outside these (and outside every
protected network) is allowed without the full check. Kept a superset by a test against the rails."""


def merged_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Inclusive integer ranges merged where they overlap or touch: (sorted starts, their ends), for a
    bisect (one lookup per address instead of a scan of every protected network)."""
    starts: list[int] = []
    ends: list[int] = []
    for lo, hi in sorted(ranges):
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


VERDICTS_MAX: Final = 1_000_000
"""Memoised rail verdicts per (jail, target); every full desired-state computation asks again for every
ban in force."""


@dataclass(frozen=True)
class Rails:
    """What must never be banned, per jail (DESIGN §4 and §8): the processor and every enforcer build one
    from the same settings and ask :meth:`refusal` before a ban reaches ``bans`` or the kernel."""

    protect: tuple[IPNetwork, ...] = ()
    """Never banned, in any jail: enforcer.protect, and on an enforcer the host's and brokers' addresses."""
    ignore: Mapping[str, tuple[IPNetwork, ...]] = field(default_factory=dict)
    """Per jail: its ignoreip."""
    min_prefix_v4: int = 24
    min_prefix_v6: int = 48
    max_bans: int = 100_000
    alarm_ratio: float = 0.8
    allow_loopback: bool = False
    """``enforcer.allow_loopback`` (the dev fleet without namespaces)."""
    _verdicts: dict[tuple[str, str], str | None] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )
    """Memo of :meth:`refusal` (the enforcer rebuilds its rails, hence forgets, at every full reconcile)."""
    _ranges: dict[tuple[str, int], tuple[list[int], list[int]]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )
    """Per (jail, IP version): the fast path's excluded ranges merged, as sorted starts and their ends."""

    @classmethod
    def build(
        cls,
        settings: EnforcerSettings,
        jails: Sequence[JailSettings],
        own: Iterable[str] = (),
        brokers: Iterable[str] = (),
    ) -> Rails:
        protect: list[IPNetwork] = list(settings.protect)
        for text in (*own, *brokers):
            try:
                protect.append(ipaddress.ip_network(normalize_target(text), strict=False))
            except (ContractError, ValueError):
                continue
        return cls(
            protect=tuple(dict.fromkeys(protect)),
            ignore={j.name: tuple(j.ignoreip) for j in jails},
            min_prefix_v4=settings.min_prefix_v4,
            min_prefix_v6=settings.min_prefix_v6,
            max_bans=settings.max_bans,
            alarm_ratio=settings.alarm_ratio,
            allow_loopback=settings.allow_loopback,
        )

    def _clearly_allowed(self, jail: str, target: str) -> bool:
        """Fast path for one canonical address far from anything protected or special (checked by integer
        ranges); everything else goes through :func:`check_target` for the verdict and its words."""
        if "/" in target or "%" in target:
            return False
        try:  # a dotted quad without leading zeros is canonical IPv4 (inet_pton refuses anything else)
            value, version = int.from_bytes(socket.inet_pton(socket.AF_INET, target)), 4
        except (OSError, ValueError):  # ValueError: an embedded NUL (hostile input reaches here)
            try:
                addr = ipaddress.ip_address(target)
            except ValueError:
                return False
            if str(addr) != target:  # not canonical (e.g. IPv4-mapped, upper case): the full check says so
                return False
            value, version = int(addr), addr.version
        ranges = self._ranges.get((jail, version))
        if ranges is None:
            nets = (*FAST_PATH_SPECIAL, *self.protect, *self.ignore.get(jail, ()))
            ranges = self._ranges[(jail, version)] = merged_ranges(
                (int(n.network_address), int(n.broadcast_address)) for n in nets if n.version == version
            )
        starts, ends = ranges
        i = bisect_right(starts, value) - 1
        return i < 0 or value > ends[i]

    @property
    def alarm_at(self) -> int:
        return max(1, math.floor(self.max_bans * self.alarm_ratio))

    def refusal(self, jail: str, target: str) -> str | None:
        """Why ``target`` must not be banned in ``jail``, or None when it may be. A target not in its
        canonical form is refused as ``invalid`` (only canonical text may reach a backend)."""
        key = (jail, target)
        verdicts = self._verdicts
        if key in verdicts:
            return verdicts[key]
        if self._clearly_allowed(jail, target):
            verdict = None
        else:
            try:
                canonical = normalize_target(target) == target
            except ContractError:
                canonical = False
            if not canonical:
                verdict = f"invalid: {target[:64]!r} is not a canonical address or network"
            else:
                violations = check_target(
                    target,
                    protect=(*self.protect, *self.ignore.get(jail, ())),
                    min_prefix_v4=self.min_prefix_v4,
                    min_prefix_v6=self.min_prefix_v6,
                    allow_loopback=self.allow_loopback,
                )
                verdict = "; ".join(str(v) for v in violations) or None
        if len(verdicts) >= VERDICTS_MAX:  # a pure function of the key: start the memo afresh
            verdicts.clear()
        verdicts[key] = verdict
        return verdict
