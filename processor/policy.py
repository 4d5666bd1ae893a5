"""The jail core: fail2ban's jail semantics, fleet-wide, in event time (DESIGN §3). No I/O.

``Policy.apply(state, target, events, out)`` takes one target's state (or None) and the events of one
``events`` record, appends the decisions they cause to ``out`` and returns the new state (None when
nothing is left to remember). The Faust agent (``processor.app``), ``fleet2ban replay`` and the benchmark
all call it, so online and offline answers are the same by construction. For speed the state object is
updated in place: the caller hands it over and keeps the returned one.

Semantics, per (jail, target):

- A failure is an event whose reason is one of the jail's ``reasons`` and whose address is not in
  ``ignoreip``. The target is the address, or its ``/ban_prefix_v6`` network for IPv6.
- Window: the target is banned at the event time T of a failure when the counted failures with event
  time in ``(T - findtime, T]`` number at least ``maxretry`` (the exact sliding window). The decision's
  ``at`` is T; its ``failures``, ``first_failure_at``, ``hosts`` and ``evidence`` describe that window.
  When a late failure completes a window ending at a later failure, T is that later failure's time.
- Lateness: the *watermark* is the newest failure time seen for the target in the jail. A failure older
  than ``watermark - lateness`` is *late*: not counted (metric ``late``). Failures inside the bound are
  inserted in event-time order, whatever their arrival order.
- Duplicates: a failure whose line ``id`` is already in the window is not counted again (a restarted
  shipper resends lines; they keep their id).
- On a ban the window is cleared. While the ban is active (event time before ``expires_at``) failures
  are evidence only. A failure at or after ``expires_at`` first ends the ban (``unban`` at
  ``expires_at``); counting then starts afresh: failures before ``expires_at`` never count again.
- ``Policy.tick(state, target, now, out)`` ends bans whose ``expires_at`` is at or before ``now`` (the
  processor's clock) with the same ``unban`` decision the event path would give (same id, same ``at``),
  and forgets state that can no longer matter.
- Scope (``min_hosts``, default 1): a ban whose window's failures come from fewer distinct hosts than
  the jail's ``min_hosts`` is *scoped*: its decision's ``scope`` lists those hosts and only their
  enforcers apply it (what per-host fail2ban would do; one compromised host cannot ban an address
  fleet-wide). While a scoped ban is in force its window goes on counting: a ban from the window that
  brings the hosts seen (with the scope's) to ``min_hosts`` is fleet-wide (``scope`` None) and
  supersedes it in ``bans`` (same ban count); one that adds hosts without reaching it widens the scope.
  A fleet-wide ban clears the window, as before.
- ``bantime.increment``: the n-th ban of a target lasts ``increment(bantime, n - 1)`` (fail2ban's formula,
  see ``processor.increment``). Ban counts (reported in every decision, used by the increment) are kept
  ``ban_count_retention_s`` after the last ban (as fail2ban's ``dbpurgeage``, default one day) plus three
  times its length (fail2ban keeps a ban's count that long: its ``bips`` purge, so a week-long recidive
  ban still counts when the address comes back after it), then forgotten; every other piece of state is
  forgotten once it can no longer change a decision.
- Bounded input (issue 20): a failure dated more than ``max_future_s`` ahead of the processor's clock
  (``clock``, the wall clock; ``fleet2ban replay`` uses the same) is not counted: it would raise the
  watermark and make every real failure "late". It is counted (``future``, and per sending host in
  ``Counters.future_hosts``) and dropped. The same :class:`~fleet2ban.rails.Rails` as every enforcer's
  refuse targets that must never be banned (loopback, unspecified, broadcast, protected, too wide): such
  a target is not counted (``refused``), so no decision about it is published.
- Manual decisions (origin ``manual``): a ban replaces whatever is in force and is mirrored to ``bans``
  (never re-issued on ``decisions``); an unban lifts the ban, clears the window and is mirrored as a
  tombstone. After a manual unban only failures newer than both the watermark and the unban's ``at``
  count (the events and decisions topics are read concurrently: failures from before the unban that
  arrive after it must not resurrect the ban). A manual decision for an unknown jail, a ban the rails
  refuse, or one dated beyond ``max_future_s`` is not applied nor mirrored (``refused``/``future``).
- Repeat offenders (``source: bans``, fail2ban's ``recidive``): such a jail's failures are the automatic
  bans of the jails it counts (its ``jails``, default every jail with ``source: events``), fed to the
  same window code (``_failure``) as they are decided, in the banned target's own state: event time the
  ban's ``at``, line id the ban's id (a re-emitted ban counts once), hosts the ban's hosts, and a raw
  line naming the ban (the evidence of its decision). Everything above applies to it unchanged (window,
  lateness, ban while banned = evidence, expiry floor, ``bantime.increment``, ``overalljails``, manual
  decisions). It never counts its own bans; the settings refuse a cycle of jails counting each other.
  Manual bans do not count (an operator's ban already says how long; ``bans import`` writes manual bans).
  Events never reach it (``event_jails``). Its window is kept in the durable part of the state
  (``durable_part(keep_windows=...)``): it changes only when a ban does, which writes the state anyway.
- The live allow-list (``allow``, :class:`~fleet2ban.allowlist.AllowList`, issue 18): a failure of a
  target that an entry in force covers (by ``clock``) in a jail is not counted there (``allowed``: the
  line stays on ``events`` as evidence), and a manual ban of it is not applied. :meth:`Policy.lift`
  ends a ban in force that a new entry covers, with an ``unban`` that names the entry. Routes are cached:
  the caller calls :meth:`Policy.allow_changed` when the list changes or an entry expires.

Decisions have deterministic ids: a ban's from (jail, target, triggering line id), an expiry unban's from
the ban's id. Replaying the same events therefore gives the same decisions, and a re-emitted decision
is recognised downstream.
"""

from __future__ import annotations

import ipaddress
import math
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields
from itertools import groupby
from operator import attrgetter, itemgetter

import msgspec

from fleet2ban.allowlist import AllowList, entry_text
from fleet2ban.contract import (
    EVIDENCE_MAX,
    RAW_LINE_MAX,
    AllowEntry,
    ContractError,
    Decision,
    Event,
    auto_decision_id,
    from_epoch,
    normalize_ip,
    normalize_target,
    rfc3339,
)
from fleet2ban.rails import Rails
from fleet2ban.settings import EnforcerSettings, JailSettings, counted_jails
from processor.increment import BanTimeFn, compile_increment

EPSILON = 1e-6
"""One microsecond: after a manual unban only failures strictly newer than the watermark count."""
DEFAULT_BAN_COUNT_RETENTION_S = 86400.0
"""How long a target's ban count is kept for ``bantime.increment`` (fail2ban's dbpurgeage default)."""
NEG_INF = -math.inf
OUTDATED_FACTOR = 3.0
"""A ban's count is kept this many times its length beyond ``ban_count_retention_s`` (fail2ban's
``_outDatedFactor``: its database purges a ban from ``bips`` once ``timeofban + 3 * bantime`` is older than
``dbpurgeage``)."""

# --------------------------------------------------------------------------------------------- state


Failure = tuple[float, str, str, str]
"""One counted failure in a window: (event time, line id, host, raw line). Windows are lists of these in
event-time order (equal times in arrival order). A plain tuple: bisect compares them in C."""
_HI = "\U0010ffff"
"""Sorts after any line id: ``bisect_right(window, (x, _HI))`` is the first failure newer than ``x``."""


class ActiveBan(msgspec.Struct, array_like=True):
    """The ban in force for a (jail, target)."""

    decision_id: str
    at: float
    expires_at: float | None
    origin: str = "auto"
    ban_count: int = 1
    ports: list[int] = msgspec.field(default_factory=list)
    evidence: int = 0
    """Failures seen while the ban was active (evidence only)."""
    scope: list[str] | None = None
    """The hosts a scoped ban covers (``min_hosts`` not reached); None: fleet-wide."""


class JailState(msgspec.Struct, array_like=True):
    """Everything one jail remembers about one target."""

    window: list[Failure] = msgspec.field(default_factory=list)
    watermark: float = NEG_INF
    floor: float = NEG_INF
    ban: ActiveBan | None = None
    ban_count: int = 0
    last_ban_at: float | None = None
    last_manual: str | None = None


class TargetState(msgspec.Struct):
    """The table value: per jail, what is remembered about one target (an address or a network)."""

    jails: dict[str, JailState] = msgspec.field(default_factory=dict)


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(TargetState)


def encode_state(state: TargetState) -> bytes:
    """Compact binary form for the Faust table (msgpack: it keeps ``-inf``)."""
    return _state_encoder.encode(state)


def decode_state(data: bytes) -> TargetState:
    return _state_decoder.decode(data)


def durable_part(state: TargetState, keep_windows: Collection[str] = ()) -> TargetState | None:
    """What of a state cannot be rebuilt by replaying the recent events (None when nothing).

    Windows and watermarks are rebuilt by re-reading the last findtime + lateness of events; a ban in
    force, ban counts, the last ban's time and the floor (failures before an expiry or a manual unban
    never count again) are not, since the events that caused them can be long gone. The watermark is
    left out on purpose: a stored newer watermark would make the replayed events look late. The ban's
    running ``evidence`` count is left out too, so that failures while banned do not rewrite it.

    ``keep_windows``: jails whose window and watermark are kept whole (``source: bans`` jails, whose
    failures are bans: no events replay gives them back, and they change only when a ban does, which
    writes the state anyway)."""
    jails: dict[str, JailState] | None = None
    for name, js in state.jails.items():
        if name in keep_windows:
            if jails is None:
                jails = {}
            jails[name] = js
            continue
        ban = js.ban
        if ban is None and not js.ban_count and js.floor == NEG_INF and js.last_manual is None:
            continue
        if ban is not None and ban.evidence:
            ban = msgspec.structs.replace(ban, evidence=0)
        if jails is None:
            jails = {}
        jails[name] = JailState(
            floor=js.floor,
            ban=ban,
            ban_count=js.ban_count,
            last_ban_at=js.last_ban_at,
            last_manual=js.last_manual,
        )
    return None if jails is None else TargetState(jails)


# ------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Output:
    """One effect of the core: ``decision`` goes to ``bans`` (a ban's state, or a tombstone for an
    unban) and, when ``publish`` is true, to ``decisions``. Manual decisions are mirrored only."""

    decision: Decision
    publish: bool = True


@dataclass
class Counters:
    """What the core saw, for metrics (monotonic)."""

    events: int = 0
    failures: int = 0
    not_failure: int = 0
    ignored: int = 0
    duplicates: int = 0
    late: int = 0
    evidence: int = 0
    bans: int = 0
    unbans: int = 0
    manual: int = 0
    expired_forgotten: int = 0
    future: int = 0
    """Failures and manual decisions dated beyond ``max_future_s`` ahead of the clock: not applied."""
    refused: int = 0
    """Failures of targets, and manual decisions, that the rails refuse: never banned."""
    bans_counted: int = 0
    """Automatic bans fed to ``source: bans`` jails as their failures (also in ``failures`` etc.)."""
    allowed: int = 0
    """Failures of targets (per jail), and manual bans, that an allow-list entry covers: never banned."""
    future_hosts: dict[str, int] = field(default_factory=dict)
    """``future`` by sending host (bounded: beyond :data:`FUTURE_HOSTS_MAX` hosts, under ``"(other)"``)."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), int)}

    def note_future(self, host: str, n: int = 1) -> None:
        self.future += n
        hosts = self.future_hosts
        if host not in hosts and len(hosts) >= FUTURE_HOSTS_MAX:
            host = "(other)"
        hosts[host] = hosts.get(host, 0) + n


FUTURE_HOSTS_MAX = 1000
DEFAULT_MAX_FUTURE_S = 5.0


# ---------------------------------------------------------------------------------------------- jails


@dataclass(frozen=True)
class Jail:
    """A jail's settings, compiled for the hot path."""

    name: str
    reasons: frozenset[str]
    maxretry: int
    findtime: float
    bantime: float
    ports: tuple[int, ...]
    ignore: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    prefix_v6: int
    increment: BanTimeFn | None
    overalljails: bool
    source: str = "events"
    """``events``: failures are lines of the events topic; ``bans``: other jails' automatic bans."""
    counts: tuple[str, ...] = ()
    """For ``source: bans``: the jails whose bans count (resolved: never empty, never this jail)."""
    min_hosts: int = 1

    @classmethod
    def from_settings(cls, s: JailSettings, counts: tuple[str, ...] = ()) -> Jail:
        return cls(
            name=s.name,
            reasons=frozenset(r.strip() for r in s.reasons),
            maxretry=s.maxretry,
            findtime=s.findtime,
            bantime=s.bantime,
            ports=tuple(s.ports),
            ignore=tuple(s.ignoreip),
            prefix_v6=s.ban_prefix_v6,
            increment=compile_increment(s.bantime_increment),
            overalljails=s.bantime_increment.overalljails,
            source=s.source,
            counts=counts,
            min_hosts=s.min_hosts,
        )

    @property
    def permanent(self) -> bool:
        return self.bantime < 0

    def target(self, ip: str) -> str | None:
        """The ban target of an address in this jail, or None when ``ignoreip`` covers it."""
        if not self.ignore and (self.prefix_v6 >= 128 or ":" not in ip):
            return ip  # nothing to match nor widen: the address itself, without parsing it
        addr = ipaddress.ip_address(ip)
        for net in self.ignore:
            if addr.version == net.version and addr in net:
                return None
        if addr.version == 6 and self.prefix_v6 < 128:
            return str(ipaddress.ip_network(f"{addr}/{self.prefix_v6}", strict=False))
        return ip


@dataclass(frozen=True)
class Route:
    """Where the failures of one address go: target -> the jails counting them there."""

    ip: str
    targets: dict[str, tuple[Jail, ...]]
    ignored: int
    """Jails that do not count this address: ignoreip, or a target the rails refuse."""
    refused: int = 0
    """Of ``ignored``: jails whose target the rails refuse."""
    allowed: int = 0
    """Of ``ignored``: jails whose target an allow-list entry covers."""

    @property
    def single(self) -> tuple[str, tuple[Jail, ...]] | None:
        """The one target of an address that no jail ignores (the common case), else None."""
        if self.ignored or len(self.targets) != 1:
            return None
        return next(iter(self.targets.items()))


_ts_key = itemgetter(0)
_ts_attr = attrgetter("ts")
_ip_key = attrgetter("ip")
_id_key = itemgetter(1)

_hosts_decoder = msgspec.json.Decoder(list[str])


def _ban_hosts(hosts: list[str]) -> str:
    """The hosts of a counted ban as the host field of a ``source: bans`` jail's failure (JSON: a host
    name is whatever a shipper says, so no separator could be trusted)."""
    return msgspec.json.encode(hosts).decode()


def ban_line(ban: Decision) -> str:
    """The evidence line of a ban counted by a ``source: bans`` jail: names the ban and its jail."""
    until = "permanent" if ban.expires_at is None else rfc3339(ban.expires_at)
    return (
        f"ban {ban.id} jail={ban.jail} at={rfc3339(ban.at)} until={until} failures={ban.failures}"
        f" hosts={','.join(ban.hosts)}"
    )[:RAW_LINE_MAX]


def _ignored(j: Jail, target: str) -> bool:
    """Whether ``j``'s ignoreip covers ``target`` (an address, or a network the size of a ban)."""
    net = ipaddress.ip_network(target, strict=False)
    return any(net.version == ig.version and net.subnet_of(ig) for ig in j.ignore)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- scope


def ban_scope(
    min_hosts: int, hosts: Sequence[str], in_force: ActiveBan | None
) -> tuple[list[str] | None, bool]:
    """(the scope of a ban on failures seen by ``hosts``, whether it supersedes the auto ban in force).

    The scope is every host: None, when the hosts that saw the failures (with those of a scoped ban in
    force: they saw failures too) number ``min_hosts`` or more; else just those hosts, as per-host
    fail2ban would ban. A new ban supersedes a scoped ban in force only when it covers more hosts."""
    seen = set(hosts)
    prior = in_force.scope if in_force is not None else None
    if prior is not None:
        seen.update(prior)
    scope = None if len(seen) >= min_hosts else sorted(seen)
    supersedes = prior is not None and (scope is None or len(scope) > len(prior))
    return scope, supersedes


# ---------------------------------------------------------------------------------------------- policy


@dataclass
class Policy:
    """The compiled jails plus the lateness bound; stateless apart from its counters and caches."""

    jails: tuple[Jail, ...]
    lateness: float = 5.0
    ban_count_retention_s: float = DEFAULT_BAN_COUNT_RETENTION_S
    counters: Counters = field(default_factory=Counters)
    rails: Rails | None = None
    """What must never be banned (the enforcers' rails, without their host-only addresses); None: no rails."""
    max_future_s: float = math.inf
    """Failures and manual decisions dated further than this ahead of ``clock()`` are not applied."""
    clock: Callable[[], float] = time.time
    allow: AllowList | None = None
    """The live allow-list (None: none); call :meth:`allow_changed` after changing it."""
    _routes: dict[str, Route] = field(default_factory=dict, repr=False)
    _routes_until: float = field(default=math.inf, repr=False)
    """When the cached routes go stale: the next allow-list expiry they depend on."""
    event_jails: tuple[Jail, ...] = field(default=(), init=False, repr=False)
    """The jails that count failures in events (``source: events``)."""
    recidive: dict[str, tuple[Jail, ...]] = field(default_factory=dict, init=False, repr=False)
    """Jail name -> the ``source: bans`` jails that count its automatic bans."""
    bans_jails: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    """Names of the ``source: bans`` jails (their windows are durable: ``durable_part``)."""

    def __post_init__(self) -> None:
        self.event_jails = tuple(j for j in self.jails if j.source == "events")
        self.bans_jails = frozenset(j.name for j in self.jails if j.source == "bans")
        for r in self.jails:
            for name in r.counts if r.source == "bans" else ():
                self.recidive[name] = (*self.recidive.get(name, ()), r)

    @classmethod
    def from_settings(
        cls,
        jails: Sequence[JailSettings],
        lateness: float = 5.0,
        *,
        enforcer: EnforcerSettings | None = None,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
        clock: Callable[[], float] = time.time,
    ) -> Policy:
        """The policy of these jails, with the same rails as every enforcer (``enforcer``: the settings
        whose ``protect``/``min_prefix_v4/v6`` they use; the defaults when None)."""
        rails = Rails.build(enforcer if enforcer is not None else EnforcerSettings(host="-"), jails)
        counts = counted_jails(list(jails))
        enabled = tuple(Jail.from_settings(j, counts.get(j.name, ())) for j in jails if j.enabled)
        return cls(enabled, lateness, rails=rails, max_future_s=max_future_s, clock=clock)

    def future_limit(self) -> float:
        """Event times beyond this (epoch seconds) are not accepted now."""
        return self.clock() + self.max_future_s

    def jail(self, name: str) -> Jail | None:
        for j in self.jails:
            if j.name == name:
                return j
        return None

    # -------------------------------------------------------------------------------------- routing

    def allow_changed(self) -> None:
        """The allow-list changed (or an entry expired): routes are computed afresh."""
        self._routes.clear()
        allow = self.allow
        nxt = allow.next_expiry(from_epoch(self.clock())) if allow is not None else None
        self._routes_until = math.inf if nxt is None else nxt.timestamp()

    def allow_expiry(self, now: float) -> None:
        """Route afresh once an allow-list entry the cached routes depend on has expired (the timer)."""
        if self._routes_until <= now:
            self.allow_changed()

    def allowed(self, jail: str, target: str, now: float | None = None) -> AllowEntry | None:
        """The allow-list entry in force (at ``now``, default the clock) covering ``target`` in ``jail``."""
        allow = self.allow
        if allow is None or not allow.entries:
            return None
        return allow.match(jail, target, from_epoch(self.clock() if now is None else now))

    def route(self, ip: str) -> Route:
        """Targets of an address (cached). Raises ContractError when ``ip`` is not an address."""
        r = self._routes.get(ip)
        if r is None:
            norm = normalize_ip(ip)
            targets: dict[str, list[Jail]] = {}
            ignoreip = refused = allowed = 0
            rails = self.rails
            for j in self.event_jails:
                t = j.target(norm)
                if t is None:
                    ignoreip += 1
                elif rails is not None and rails.refusal(j.name, t) is not None:
                    refused += 1  # a target no enforcer would ban
                elif self.allowed(j.name, t) is not None:
                    allowed += 1
                else:
                    targets.setdefault(t, []).append(j)
            ignored = ignoreip + refused + allowed
            r = Route(norm, {t: tuple(js) for t, js in targets.items()}, ignored, refused, allowed)
            if len(self._routes) > 100_000:
                self._routes.clear()
            self._routes[ip] = r
        return r

    def process(
        self,
        get: Callable[[str], TargetState | None],
        put: Callable[[str, TargetState | None], None],
        ip: str,
        events: Sequence[Event],
        out: list[Output],
    ) -> None:
        """Route the events of one address to their targets' states (read with ``get``, written back
        with ``put``, which receives None when a state is to be forgotten)."""
        events = self._bounded(events)
        if events:
            self._routed(get, put, ip, events, out)

    def process_events(
        self,
        get: Callable[[str], TargetState | None],
        put: Callable[[str, TargetState | None], None],
        events: Sequence[Event],
        out: list[Output],
    ) -> None:
        """:meth:`process` over the events of one ``events`` record, any mix of addresses, in order.

        Each run of consecutive events of one address goes through the same routing and jail core as
        :meth:`process`; events of different addresses meet no common state unless they share a target
        (an IPv6 prefix), and then they reach it in the record's order."""
        events = self._bounded(events)
        routed = self._routed
        for ip, run in groupby(events, _ip_key):  # the runs, found in C
            routed(get, put, ip, list(run), out)

    def _bounded(self, events: Sequence[Event]) -> Sequence[Event]:
        """``events`` without those dated beyond ``max_future_s`` ahead of the clock (counted apart)."""
        if self.max_future_s == math.inf or not events:
            return events
        limit = self.future_limit()
        if max(map(_ts_attr, events)).timestamp() <= limit:  # the common case, in C
            return events
        c = self.counters
        kept = []
        for ev in events:
            if ev.ts.timestamp() > limit:
                c.note_future(ev.host)
            else:
                kept.append(ev)
        return kept

    def _routed(
        self,
        get: Callable[[str], TargetState | None],
        put: Callable[[str, TargetState | None], None],
        ip: str,
        events: Sequence[Event],
        out: list[Output],
    ) -> None:
        r = self._routes.get(ip) or self.route(ip)
        c = self.counters
        c.events += len(events)
        if r.ignored:
            c.ignored += (r.ignored - r.refused - r.allowed) * len(events)
            c.refused += r.refused * len(events)
            c.allowed += r.allowed * len(events)
        for target, jails in r.targets.items():
            state = get(target)
            new = self.apply(state, target, events, out, jails)
            if new is not None or state is not None:
                put(target, new)

    # ------------------------------------------------------------------------------------------ core

    def apply(
        self,
        state: TargetState | None,
        target: str,
        events: Iterable[Event],
        out: list[Output],
        jails: Sequence[Jail] | None = None,
    ) -> TargetState | None:
        """Apply failures of one target (all events are of addresses that map to ``target``)."""
        jails = self.event_jails if jails is None else jails
        c = self.counters
        failure = self._failure
        for ev in events:
            reason = ev.reason
            t = None
            for j in jails:
                if reason not in j.reasons:
                    c.not_failure += 1
                    continue
                if t is None:
                    t = ev.ts.timestamp()
                if state is None:
                    state = TargetState()
                js = state.jails.get(j.name)
                if js is None:
                    js = state.jails[j.name] = JailState()
                failure(j, js, state, target, ev, t, out)
        return state

    def _failure(  # noqa: PLR0912  # the counting rule itself, one branch per case of fail2ban's; run per failure
        self, j: Jail, js: JailState, state: TargetState, target: str, ev: Event, t: float, out: list[Output]
    ) -> None:
        c = self.counters
        if t > js.watermark:  # noqa: PLR1730 - hot path: cheaper than max()
            js.watermark = t
        ban = js.ban
        if ban is not None:
            if ban.expires_at is not None and t >= ban.expires_at:
                self._expire(j.name, js, target, out)
            elif ban.scope is None:
                ban.evidence += 1
                c.evidence += 1
                return
            # a scoped ban in force: failures go on counting, so that other hosts can corroborate
        if t < js.floor or t < js.watermark - self.lateness:
            c.late += 1
            return
        window = js.window
        ev_id = ev.id
        if window and t <= window[-1][0]:
            # a duplicate line has the id, hence the time, of one already counted: look at equal times
            # (none when ``t`` is newer than the window, the common case)
            i = bisect_left(window, (t,))
            if window[i][0] == t and ev_id in map(_id_key, window[i : bisect_right(window, (t, _HI), i)]):
                c.duplicates += 1
                return
        c.failures += 1
        raw = ev.raw
        failure: Failure = (t, ev_id, ev.host, raw if len(raw) <= RAW_LINE_MAX else raw[:RAW_LINE_MAX])
        findtime = j.findtime
        if not window or t >= window[-1][0]:
            window.append(failure)
            n = len(window)
            if n >= j.maxretry and n - bisect_right(window, (t - findtime, _HI)) >= j.maxretry:
                self._ban(j, js, state, target, n - 1, out)
                if not js.window:  # banned fleet-wide (a scoped ban keeps its window)
                    return
        else:
            insort(window, failure, key=_ts_key)
            self._check_late_insert(j, js, state, target, t, out)
            if not js.window:
                return
        cutoff = js.watermark - self.lateness - findtime
        if window[0][0] <= cutoff:
            del window[: bisect_right(window, (cutoff, _HI))]

    def _check_late_insert(
        self, j: Jail, js: JailState, state: TargetState, target: str, t: float, out: list[Output]
    ) -> None:
        """After inserting a failure at ``t`` before newer ones: the first window (ending at a failure at
        or after ``t``) that now holds ``maxretry`` failures bans."""
        window = js.window
        findtime = j.findtime
        i = bisect_right(window, (t, _HI)) - 1  # the last failure at time t
        n = len(window)
        while i < n:
            end = window[i][0]
            if end >= t + findtime:
                return
            last = bisect_right(window, (end, _HI)) - 1  # latest arrival among equal times
            count = last + 1 - bisect_right(window, (end - findtime, _HI))
            if count >= j.maxretry:
                self._ban(j, js, state, target, last, out)
                return
            i = last + 1

    def _ban(
        self, j: Jail, js: JailState, state: TargetState, target: str, last: int, out: list[Output]
    ) -> None:
        window = js.window
        end, trigger_id, _, _ = window[last]
        first = bisect_right(window, (end - j.findtime, _HI))
        counted = window[first : last + 1]
        hosts = (
            sorted({f[2] for f in counted})
            if j.source == "events"
            else sorted({h for f in counted for h in _hosts_decoder.decode(f[2])})
        )
        scope, supersedes = ban_scope(j.min_hosts, hosts, js.ban)
        if js.ban is not None and not supersedes:
            return  # a scoped ban in force already covers every host that saw these failures
        earlier = sum(s.ban_count for s in state.jails.values()) if j.overalljails else js.ban_count
        if supersedes:  # the same offence, on more hosts: not a repeat offence
            earlier -= 1
        decision_id = auto_decision_id(j.name, target, trigger_id)
        if j.permanent:
            expires: float | None = None
        else:
            bantime = j.bantime if j.increment is None else j.increment(j.bantime, earlier, decision_id)
            expires = end + bantime
        ban_count = earlier + 1
        decision = Decision(
            id=decision_id,
            action="ban",
            ip=target,
            jail=j.name,
            at=from_epoch(end),
            ports=list(j.ports),
            expires_at=None if expires is None else from_epoch(expires),
            failures=len(counted),
            first_failure_at=from_epoch(counted[0][0]),
            last_failure_at=from_epoch(end),
            hosts=hosts,
            ban_count=ban_count,
            origin="auto",
            evidence=[f[3] for f in counted[-EVIDENCE_MAX:]],
            scope=scope,
        )
        js.ban = ActiveBan(
            decision_id,
            end,
            expires,
            "auto",
            ban_count,
            list(j.ports),
            evidence=len(window) - last - 1,
            scope=scope,
        )
        if not supersedes:
            js.ban_count += 1
        js.last_ban_at = end
        if scope is None:
            js.window = []  # a scoped ban keeps counting (other hosts may corroborate)
        self.counters.bans += 1
        out.append(Output(decision))
        if supersedes:  # the same offence widened to the fleet: already counted by the repeat-offender jails
            return
        for r in self.recidive.get(j.name, ()):
            self._count_ban(r, state, target, decision, out)

    def _count_ban(self, r: Jail, state: TargetState, target: str, ban: Decision, out: list[Output]) -> None:
        """Feed an automatic ban to a ``source: bans`` jail as one of its failures, through the same
        window core (``_failure``): event time the ban's ``at``, line id the ban's decision id (so a
        re-emitted ban counts once), hosts the ban's hosts, and a raw line naming the ban (evidence)."""
        if r.ignore and _ignored(r, target):
            self.counters.ignored += 1
            return
        if self.rails is not None and self.rails.refusal(r.name, target) is not None:
            self.counters.refused += 1
            return
        js = state.jails.get(r.name)
        if js is None:
            js = state.jails[r.name] = JailState()
        self.counters.bans_counted += 1
        ev = Event(
            host=_ban_hosts(ban.hosts),
            ip=target,
            id=ban.id,
            ts=ban.at,
            port=0,
            client="",
            reason="ban",
            raw=ban_line(ban),
        )
        self._failure(r, js, state, target, ev, ban.at.timestamp(), out)

    def _expire(self, jail: str, js: JailState, target: str, out: list[Output]) -> None:
        ban = js.ban
        assert ban is not None and ban.expires_at is not None
        x = ban.expires_at
        out.append(
            Output(
                Decision(
                    id=auto_decision_id(jail, target, ban.decision_id, "unban"),
                    action="unban",
                    ip=target,
                    jail=jail,
                    at=from_epoch(x),
                    ports=list(ban.ports),
                    ban_count=ban.ban_count,
                    origin="auto",
                    reason="expired",
                )
            )
        )
        js.ban = None
        js.window = []
        js.floor = max(js.floor, x)
        self.counters.unbans += 1

    # ------------------------------------------------------------------------------------ the clock

    def tick(
        self,
        state: TargetState | None,
        target: str,
        now: float,
        out: list[Output],
        forget: bool = True,
        forget_now: float | None = None,
    ) -> TargetState | None:
        """End the bans that expired at or before ``now``; forget what can no longer matter.

        Forgetting assumes that no failure older than ``forget_now - lateness`` arrives afterwards.
        ``forget_now`` defaults to ``now``; a worker passes the event time it has read up to instead, so
        that failures read late (a backlog after an outage or a restart) still meet the ones before."""
        if state is None:
            return None
        for name in list(state.jails):
            js = state.jails[name]
            ban = js.ban
            if ban is not None:
                if ban.expires_at is not None and ban.expires_at <= now:
                    self._expire(name, js, target, out)
                else:
                    continue
            if forget and self._forgettable(name, js, now if forget_now is None else min(now, forget_now)):
                del state.jails[name]
                self.counters.expired_forgotten += 1
        return state if state.jails else None

    def _horizon(self, name: str, js: JailState) -> float:
        """When an unbanned jail state stops mattering (``inf`` while it still can)."""
        j = self.jail(name)
        findtime = j.findtime if j is not None else 0.0
        keep = max(js.floor, js.window[-1][0] + findtime if js.window else NEG_INF)
        keep += self.lateness
        if js.last_ban_at is not None:
            length = max(0.0, js.floor - js.last_ban_at)  # how long the last ban lasted (once it ended)
            keep = max(keep, js.last_ban_at + OUTDATED_FACTOR * length + self.ban_count_retention_s)
        return keep

    def _forgettable(self, name: str, js: JailState, now: float) -> bool:
        return js.ban is None and self._horizon(name, js) <= now

    def deadline(self, state: TargetState | None) -> float | None:
        """The next ``now`` at which ``tick`` has something to do for this state (None: never)."""
        if state is None:
            return None
        best = math.inf
        for name, js in state.jails.items():
            if js.ban is not None:
                if js.ban.expires_at is not None:
                    best = min(best, js.ban.expires_at)
            else:
                best = min(best, self._horizon(name, js))
        return None if best == math.inf else best

    # -------------------------------------------------------------------------------- manual decisions

    def manual(self, state: TargetState | None, decision: Decision, out: list[Output]) -> TargetState | None:
        """Apply an operator's decision (origin ``manual``) and mirror it to ``bans``."""
        if decision.origin != "manual":
            return state
        target = normalize_target(decision.ip)
        c = self.counters
        if decision.at.timestamp() > self.future_limit():
            c.note_future(f"manual by {decision.by or '?'}")
            return state
        if decision.action not in ("ban", "unban"):
            return state  # allow-list audit records: the allow topic carries the entries
        j = self.jail(decision.jail)
        if j is None or (
            decision.action == "ban" and self.rails is not None and self.rails.refusal(j.name, target)
        ):
            c.refused += 1
            return state
        if decision.action == "ban" and self.allowed(j.name, target) is not None:
            c.allowed += 1
            return state
        if state is None:
            state = TargetState()
        js = state.jails.get(decision.jail)
        if js is None:
            js = state.jails[decision.jail] = JailState()
        if js.last_manual == decision.id:
            return state  # a redelivered decision: already applied
        js.last_manual = decision.id
        self.counters.manual += 1
        if decision.action == "ban":
            js.ban_count += 1
            at = decision.at.timestamp()
            js.ban = ActiveBan(
                decision.id,
                at,
                decision.expires_at.timestamp() if decision.expires_at is not None else None,
                "manual",
                js.ban_count,
                list(decision.ports or j.ports),
            )
            js.last_ban_at = at
            js.window = []
        else:
            js.ban = None
            js.window = []
            # forgive every failure up to the unban: those already seen (watermark) and those still on
            # their way from other hosts or through the other topic (event time up to the decision's at)
            js.floor = max(js.floor, js.watermark + EPSILON, decision.at.timestamp() + EPSILON)
        if target != decision.ip:
            decision = msgspec.structs.replace(decision, ip=target)
        out.append(Output(decision, publish=False))
        return state

    def lift(
        self, state: TargetState | None, target: str, now: float, out: list[Output]
    ) -> TargetState | None:
        """End the bans in force on ``target`` that an allow-list entry covers at ``now``: an ``unban``
        (published and tombstoned) whose reason names the entry, and the window forgiven as after a
        manual unban. The entry's id makes the decision's id, so a repeated lift is recognised."""
        if state is None:
            return None
        for name, js in state.jails.items():
            ban = js.ban
            if ban is None or (ban.expires_at is not None and ban.expires_at <= now):
                continue  # expired ones are tick's
            entry = self.allowed(name, target, now)
            if entry is None:
                continue
            out.append(
                Output(
                    Decision(
                        id=auto_decision_id(name, target, f"{entry.id}|{ban.decision_id}", "unban"),
                        action="unban",
                        ip=target,
                        jail=name,
                        at=from_epoch(now),
                        ports=list(ban.ports),
                        ban_count=ban.ban_count,
                        origin="auto",
                        by=entry.by,
                        reason=entry_text(entry),
                    )
                )
            )
            js.ban = None
            js.window = []
            js.floor = max(js.floor, js.watermark + EPSILON, now)
            self.counters.unbans += 1
        return state


__all__ = [
    "ActiveBan",
    "ContractError",
    "Counters",
    "Failure",
    "Jail",
    "JailState",
    "Output",
    "Policy",
    "Route",
    "TargetState",
    "decode_state",
    "durable_part",
    "encode_state",
]
