"""The enforcer's pure core: which bans should be in the kernel, and what to change to get there.

No Kafka, no kernel: plain data in, plain data out.

- :func:`desired_state` turns the ``bans`` topic's view (``(jail, target) -> BanState``) into the entries
  that should be in force *now*: expired bans drop out (the enforcer's own clock), and the safety rails
  refuse what must never be banned (:class:`Rails`: ignoreip, the host's own and the brokers' addresses,
  loopback, link-local, too-wide prefixes, unknown jails, the cap on active bans). :class:`Rails` lives in
  :mod:`fleet2ban.rails` because the processor applies the same rails before it mirrors a ban.
  The live allow-list (:class:`fleet2ban.allowlist.AllowList`, issue 18) is a rail too: a ban whose
  target an entry in force covers (by the enforcer's clock) is refused (``allowed``), whatever ``bans``
  says, so an entry wins even over a stale ban.
  :func:`desired_one` is the same verdict for one ban: an incremental reconcile evaluates only the bans
  that changed (or expired) since the last one; the cap, a rule over every ban, is desired_state's alone.
  :class:`KeptDesired` is the desired state kept between reconciles and updated in place with those
  verdicts, with the heap of expiry times that says which bans expired since.
- :func:`plan` compares that with what a backend lists from the kernel and returns one batch of
  :class:`Changes`: adds (new entries, or entries whose kernel-side timeout no longer matches the ban:
  a re-applied or extended ban renews it), and deletes (expired, lifted, or stray entries). It is
  correct on any subset of keys when ``wants`` and ``kernel`` are restricted to the same keys.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec

from fleet2ban.allowlist import AllowList, entry_text
from fleet2ban.contract import BanState
from fleet2ban.rails import Rails
from fleet2ban.settings import JailSettings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Key = tuple[str, str]
"""(jail, normalized target): one ban as the enforcer tracks it."""

MAX_KERNEL_TIMEOUT = 2_147_483
"""The longest per-entry timeout ipset accepts (seconds, about 24.8 days); longer bans are renewed."""


@dataclass(frozen=True)
class JailSpec:
    """What the enforcer needs of a jail: its name and the TCP ports its chain is jumped to for."""

    name: str
    ports: tuple[int, ...]

    @classmethod
    def from_settings(cls, jail: JailSettings) -> JailSpec:
        return cls(jail.name, tuple(sorted(set(jail.ports))))


# The values made per ban (Want, Add, KernelEntry, ...) are frozen msgspec Structs, not frozen
# dataclasses: a dataclass's __init__ sets each field through object.__setattr__ (about 2 us per object,
# a tenth of that for a Struct), and gc=False keeps them out of the cyclic GC (they hold no containers).


class Want(msgspec.Struct, frozen=True, gc=False):
    """One entry that should be in the kernel."""

    jail: str
    target: str
    family: int
    expires_at: datetime | None
    decision_id: str

    @property
    def key(self) -> Key:
        return (self.jail, self.target)


class Refusal(msgspec.Struct, frozen=True, gc=False):
    """A ban the enforcer will not apply, and the rule that refused it."""

    jail: str
    target: str
    decision_id: str
    rule: str
    """Which rail: ``unknown-jail``, ``cap``, or a :mod:`fleet2ban.rails` kind (``loopback``...)."""
    detail: str


@dataclass
class Desired:
    wants: dict[Key, Want]
    refused: dict[Key, Refusal]
    expired: int = 0
    alarm: bool = False
    """More active bans than the alarm threshold (a share of the cap)."""


class KernelEntry(msgspec.Struct, frozen=True, gc=False):
    """One entry a backend listed from the kernel."""

    jail: str
    target: str
    timeout: int | None = None
    """Seconds left of its kernel-side timeout; None when permanent or when the backend has no timeouts."""

    @property
    def key(self) -> Key:
        return (self.jail, self.target)


class Add(msgspec.Struct, frozen=True, gc=False):
    jail: str
    target: str
    family: int
    timeout: int | None
    """Kernel-side timeout in whole seconds (rounded up); None = permanent."""
    decision_id: str = ""
    renew: bool = False
    """The entry is in the kernel already; this renews (or shortens) its timeout."""

    @property
    def key(self) -> Key:
        return (self.jail, self.target)


class Delete(msgspec.Struct, frozen=True, gc=False):
    jail: str
    target: str
    family: int

    @property
    def key(self) -> Key:
        return (self.jail, self.target)


@dataclass
class Changes:
    adds: list[Add] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.adds or self.deletes)

    def __len__(self) -> int:
        return len(self.adds) + len(self.deletes)


def family_of(target: str) -> int:
    return 6 if ":" in target else 4


def kernel_timeout(expires_at: datetime | None, now: datetime) -> int | None:
    """The kernel-side timeout for a ban expiring at ``expires_at``: whole seconds, at least 1, capped."""
    if expires_at is None:
        return None
    left = (expires_at - now).total_seconds()
    return max(1, min(MAX_KERNEL_TIMEOUT, math.ceil(left)))


def desired_one(
    key: Key,
    ban: BanState | None,
    now: datetime,
    rails: Rails,
    known: Container[str],
    allow: AllowList | None = None,
) -> Want | Refusal | None:
    """What one ban in the active set means at ``now``: a :class:`Want`, a :class:`Refusal` by a rail
    (``unknown-jail`` or a :mod:`fleet2ban.rails` kind; never ``cap``, which is a rule over every ban:
    :func:`desired_state` applies it), or None when there is no ban or it expired."""
    if ban is None or not ban.active_at(now):
        return None
    jail, target = key
    if jail not in known:
        return Refusal(
            jail, target, ban.decision_id, "unknown-jail", f"jail {jail!r} is not configured on this host"
        )
    reason = rails.refusal(jail, target)
    if reason is not None:
        return Refusal(jail, target, ban.decision_id, reason.split(":", 1)[0], reason)
    if allow is not None and allow.entries:
        entry = allow.match(jail, target, now)
        if entry is not None:
            return Refusal(jail, target, ban.decision_id, "allowed", f"allowed: {entry_text(entry)}")
    return Want(jail, target, family_of(target), ban.expires_at, ban.decision_id)


def cap_refusal(want: Want, max_bans: int) -> Refusal:
    return Refusal(
        want.jail,
        want.target,
        want.decision_id,
        "cap",
        f"{max_bans} active bans reached (enforcer.max_bans)",
    )


def desired_state(
    bans: Mapping[Key, BanState],
    now: datetime,
    rails: Rails,
    jails: Iterable[JailSpec],
    allow: AllowList | None = None,
) -> Desired:
    """The entries that should be in force at ``now``; refused bans with the rule that refused them.

    The cap keeps the oldest bans (by ``at``) and refuses the newest beyond it, so the set in force is
    stable while the cap is exceeded.
    """
    known = {j.name for j in jails}
    accepted: list[Want] = []
    refused: dict[Key, Refusal] = {}
    expired = 0
    for key, ban in bans.items():
        verdict = desired_one(key, ban, now, rails, known, allow)
        if verdict is None:
            expired += 1
        elif isinstance(verdict, Refusal):
            refused[key] = verdict
        else:
            accepted.append(verdict)
    if len(accepted) > rails.max_bans:
        accepted.sort(key=lambda w: (bans[w.key].at, w.key))
        for w in accepted[rails.max_bans :]:
            refused[w.key] = cap_refusal(w, rails.max_bans)
        accepted = accepted[: rails.max_bans]
    return Desired(
        wants={w.key: w for w in accepted},
        refused=refused,
        expired=expired,
        alarm=len(accepted) > rails.alarm_at,
    )


def renew_needed(kernel: int | None, wanted: int | None) -> bool:
    """Whether a kernel-side timeout is far enough from the wanted one to re-add the entry.

    Both count down at the same rate, so a steady difference of a second or two is rounding; a ban
    that was re-applied or extended (or shortened, or made permanent) differs by more.
    """
    if kernel is None or wanted is None:
        return kernel != wanted
    return abs(kernel - wanted) > max(2, wanted // 50)


def plan(
    wants: Mapping[Key, Want],
    kernel: Mapping[Key, KernelEntry],
    now: datetime,
    *,
    timeouts: bool,
) -> Changes:
    """One batch of changes that makes ``kernel`` equal to ``wants`` (``timeouts``: the backend keeps
    per-entry timeouts, so they are compared and renewed too)."""
    changes = Changes()
    adds = changes.adds
    for key in sorted(wants):
        w = wants[key]
        timeout = kernel_timeout(w.expires_at, now)
        have = kernel.get(key)
        if have is None:
            adds.append(Add(w.jail, w.target, w.family, timeout, w.decision_id))
        elif timeouts and renew_needed(have.timeout, timeout):
            adds.append(Add(w.jail, w.target, w.family, timeout, w.decision_id, renew=True))
    for key in sorted(kernel.keys() - wants.keys()):
        entry = kernel[key]
        changes.deletes.append(Delete(entry.jail, entry.target, family_of(entry.target)))
    return changes


def next_expiry(wants: Mapping[Key, Want]) -> datetime | None:
    """When the next ban in force expires (the enforcer wakes then to lift it)."""
    times = [w.expires_at for w in wants.values() if w.expires_at is not None]
    return min(times) if times else None


RENEW_SAFE = timedelta(seconds=2)
"""A kernel deadline within this of the ban's expiry never needs renewing (:func:`renew_needed`)."""


__all__ = [
    "MAX_KERNEL_TIMEOUT",
    "RENEW_SAFE",
    "Add",
    "Changes",
    "Delete",
    "Desired",
    "JailSpec",
    "KeptDesired",
    "KernelEntry",
    "Key",
    "Rails",
    "Refusal",
    "Want",
    "cap_refusal",
    "desired_one",
    "desired_state",
    "family_of",
    "kernel_timeout",
    "never_renews",
    "next_expiry",
    "plan",
    "renew_needed",
]


def never_renews(deadline: datetime | None, expires_at: datetime | None) -> bool:
    """Whether an entry whose kernel timeout runs out at ``deadline`` never needs renewing for a ban
    expiring at ``expires_at``, at any time before it expires (so an incremental reconcile need not look
    at it again until then).

    Both timeouts count down together: at any time their whole seconds (rounded up, then clamped to
    ``[1, MAX_KERNEL_TIMEOUT]``) differ by at most ``ceil(|deadline - expires_at|)``, and
    :func:`renew_needed` never fires on a difference of 2 or less. A timeout clamped by
    ``MAX_KERNEL_TIMEOUT`` (a ban longer than about 24.8 days) or a drifted kernel entry does not
    qualify: it is looked at on every reconcile.
    """
    if deadline is None or expires_at is None:
        return deadline is None and expires_at is None
    return -RENEW_SAFE <= deadline - expires_at <= RENEW_SAFE


class KeptDesired:
    """The desired state kept between reconciles (:attr:`desired`), so that an incremental one costs
    O(changes): :meth:`update` re-evaluates only the keys that may have changed, and a heap of expiry
    times (lazy deletion: an entry is stale when the key's want has another expiry or there is none)
    says which bans expired (:meth:`pop_due`) and when the next one does (:meth:`due`)."""

    def __init__(self, desired: Desired) -> None:
        self.desired = desired
        self.cap_refused = sum(1 for r in desired.refused.values() if r.rule == "cap")
        """How many bans the cap refused when :attr:`desired` was computed over every ban."""
        self._expiries: list[tuple[datetime, Key]] = []
        self._rebuild_expiries(desired.wants)

    def _rebuild_expiries(self, wants: dict[Key, Want]) -> None:
        self._expiries = [(w.expires_at, key) for key, w in wants.items() if w.expires_at is not None]
        heapq.heapify(self._expiries)

    def due(self) -> datetime | None:
        """When the next wanted ban expires (stale heap entries are dropped on the way)."""
        wants, heap = self.desired.wants, self._expiries
        while heap:
            at, key = heap[0]
            want = wants.get(key)
            if want is not None and want.expires_at == at:
                return at
            heapq.heappop(heap)
        return None

    def pop_due(self, now: datetime) -> set[Key]:
        """The wanted keys whose ban expired by ``now`` (their heap entries are consumed)."""
        wants, heap, out = self.desired.wants, self._expiries, set()
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            want = wants.get(key)
            if want is not None and want.expires_at == at:
                out.add(key)
        return out

    def update(
        self,
        keys: set[Key],
        bans: Mapping[Key, BanState],
        now: datetime,
        rails: Rails,
        known: Container[str],
        allow: AllowList | None = None,
    ) -> bool:
        """Re-evaluate ``keys`` into the kept desired state; False (nothing changed) when the cap is in
        play: the desired state of every ban must be computed instead (:func:`desired_state`)."""
        if self.cap_refused:
            return False
        verdicts = {key: desired_one(key, bans.get(key), now, rails, known, allow) for key in keys}
        kept = self.desired
        wants, refused = kept.wants, kept.refused
        count = len(wants)
        for key, verdict in verdicts.items():
            count += isinstance(verdict, Want) - (key in wants)
        if count > rails.max_bans:
            return False
        heap = self._expiries
        for key, verdict in verdicts.items():
            old = wants.pop(key, None)
            refused.pop(key, None)
            if isinstance(verdict, Want):
                wants[key] = verdict
                at = verdict.expires_at
                if at is not None and (old is None or old.expires_at != at):
                    heapq.heappush(heap, (at, key))
            elif isinstance(verdict, Refusal):
                refused[key] = verdict
        kept.alarm = len(wants) > rails.alarm_at
        if len(heap) > 2 * len(wants) + 1024:  # stale entries of re-applied bans: start afresh
            self._rebuild_expiries(wants)
        return True
