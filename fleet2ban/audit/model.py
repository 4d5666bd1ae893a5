"""The typed answers of the audit layer: what the CLI prints and the web console renders.

All are frozen msgspec structs: ``msgspec.json.encode(answer)`` (or :func:`to_json`) is the ``--json``
form, with RFC 3339 times, and the same objects feed rich tables or HTML templates.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import msgspec

from fleet2ban.contract import BanState, ContractError, Decision, Origin, Report, Role, target_network
from fleet2ban.safetext import json_safe


class BanFilter(msgspec.Struct, frozen=True):
    """Which bans or decisions a query keeps. ``network``: targets overlapping this CIDR (or address)."""

    jail: str | None = None
    origin: Origin | None = None
    network: str | None = None

    def _net(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        return target_network(self.network) if self.network else None

    def validate(self) -> BanFilter:
        """Raise :class:`ContractError` when ``network`` is not an address or CIDR."""
        self._net()
        return self

    def matcher(self) -> Callable[[str, str, str], bool]:
        """A fast predicate ``(jail, origin, ip) -> bool`` (the network parsed once)."""
        net = self._net()
        jail_f, origin_f = self.jail, self.origin

        def match(jail: str, origin: str, ip: str) -> bool:
            if jail_f is not None and jail != jail_f:
                return False
            if origin_f is not None and origin != origin_f:
                return False
            if net is not None:
                try:
                    target = target_network(ip)
                except ContractError:
                    return False
                if target.version != net.version or not target.overlaps(net):
                    return False
            return True

        return match

    def matches(self, jail: str, origin: str, ip: str) -> bool:
        return self.matcher()(jail, origin, ip)


class Coverage(msgspec.Struct, frozen=True):
    """Where one ban is in force: among the live enforcers, which have it applied and which do not."""

    live: int
    """How many enforcers are alive (heartbeat within the silence bound) among those the ban applies on."""
    applied: list[str]
    """Live enforcer hosts reporting it applied."""
    missing: list[str]
    """Live enforcer hosts not reporting it applied (``skipped``/``failed`` ones included, see below)."""
    skipped: dict[str, str] = msgspec.field(default_factory=dict)
    """Host -> why it declined (its own safety rails), for hosts in ``missing``."""
    failed: dict[str, str] = msgspec.field(default_factory=dict)
    """Host -> error text, for hosts in ``missing``."""
    scope: list[str] | None = None
    """A scoped ban's hosts (jail ``min_hosts``): live enforcers outside it are neither applied nor
    missing; None: every host."""

    @property
    def complete(self) -> bool:
        return not self.missing

    def text(self) -> str:
        scope = "" if self.scope is None else f" (scope {','.join(self.scope)})"
        return f"{len(self.applied)}/{self.live}{scope}"


class BanView(msgspec.Struct, frozen=True):
    """One ban in force (the ``bans`` record) with its coverage across the fleet."""

    key: str
    ban: BanState
    recorded_at: datetime | None
    """When the processor wrote it to ``bans`` (the record's timestamp)."""
    coverage: Coverage


class HostStatus(msgspec.Struct, frozen=True):
    """One component seen on ``reports`` (from its heartbeats)."""

    role: Role | Literal["unknown"]
    host: str
    instance: str
    last_seen: datetime | None
    """The latest heartbeat's time (``None``: only action reports, no heartbeat)."""
    age_s: float | None
    silent: bool
    """No heartbeat within ``max(silence_factor * interval_s, min_silence_s)``."""
    version: str = ""
    started_at: datetime | None = None
    interval_s: float | None = None
    lag: float | None = None
    counters: dict[str, float] = msgspec.field(default_factory=dict)
    applied: int | None = None
    """For enforcers: how many bans it has applied (its heartbeat, updated by later reports)."""
    failed: int = 0
    """For enforcers: bans whose last report from this host is ``failed``."""
    lag_growing: bool = False
    """Its lag (records behind) is at least the alarm bound and grew since its heartbeat before."""


TimelineKind = Literal["decision", "report"]


class TimelineEntry(msgspec.Struct, frozen=True):
    """One line of an address's history: a decision, or an enforcer's report about it."""

    at: datetime
    kind: TimelineKind
    decision: Decision | None = None
    report: Report | None = None


class IpHistory(msgspec.Struct, frozen=True):
    """Everything known about one address (or network): ``fleet2ban bans show``."""

    target: str
    decisions: list[Decision]
    reports: list[Report]
    timeline: list[TimelineEntry]
    in_force: list[BanState]
    """Its bans in force now (one per jail at most)."""


DiscrepancyKind = Literal["untraced", "missing", "late", "failed", "lingering", "silent"]


class Discrepancy(msgspec.Struct, frozen=True):
    """One finding of ``audit verify``.

    - ``untraced``: an enforcer reports a ban applied that no decision explains;
    - ``missing``: a ban in force for longer than the bound is not applied on an enforcer;
    - ``late``: it was applied, but later than the bound after the decision was recorded;
    - ``failed``: the enforcer reported failing to apply it;
    - ``lingering``: an enforcer still has a ban applied longer than the bound after it was lifted;
    - ``silent``: an enforcer stopped sending heartbeats (it cannot be checked, and misses new bans).
    """

    kind: DiscrepancyKind
    host: str
    detail: str
    key: str | None = None
    decision_id: str | None = None


class VerifyResult(msgspec.Struct, frozen=True):
    as_of: datetime
    within_s: float
    bans_checked: int
    enforcers: list[str]
    live: list[str]
    reports_checked: int
    discrepancies: list[Discrepancy]

    @property
    def ok(self) -> bool:
        return not self.discrepancies


_json = msgspec.json.Encoder()


def to_json(obj: Any) -> bytes:
    """JSON text of any answer (structs, lists of structs), times in RFC 3339; what a terminal would act
    on escaped (:func:`fleet2ban.safetext.json_safe`)."""
    if isinstance(obj, VerifyResult):
        return json_safe(_json.encode({"ok": obj.ok, **msgspec.structs.asdict(obj)}))
    return json_safe(_json.encode(obj))
