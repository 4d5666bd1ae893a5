"""Coverage from heartbeat digests: which live enforcers have every ban in force, without their reports.

An enforcer's heartbeat carries ``applied_digest`` (a digest of the bans in force at ``at`` that it has
applied) and ``bans_offsets`` (how far it had read ``bans``). A reader that folds ``bans`` computes the
same digest over the bans that were in force at the heartbeat's ``at`` in the topic *before those
offsets*: when the two agree, the host had applied every one of them, and its applied set at the
heartbeat is exactly that set; its reports after the heartbeat bring it up to date. When they differ
(a host missing some ban, a failed or refused ban, an older enforcer), the caller falls back to the
per-ban reports. No Kafka here.

:class:`PrefixTracker` remembers, while ``bans`` is read in offset order, the value each key had before
the first record at or past each host's offset in its partition, so one read of the topic serves every
host's prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from fleet2ban.audit.view import AppliedInfo, BanEntry, FleetView
from fleet2ban.contract import BanState, Heartbeat, Report, applied_digest, digest_item

_UNKNOWN = AppliedInfo(None, None)


def can_check(hb: Heartbeat) -> bool:
    """The heartbeat carries what a digest check needs."""
    return hb.applied_digest is not None and hb.bans_offsets is not None


@dataclass
class PrefixTracker:
    """Per host, the ``bans`` values that later records overwrote, as of the host's offsets."""

    offsets: dict[str, dict[int, int]]
    """host -> partition -> the offset its heartbeat had reached (records before it are its prefix)."""
    overrides: dict[str, dict[str, BanState | None]] = field(default_factory=dict)
    """host -> key -> its value in the host's prefix (None: absent), for keys changed after it."""
    _first: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        named = {p for offs in self.offsets.values() for p in offs}
        for host, offs in self.offsets.items():
            self.overrides[host] = {}
            for p in named:
                off = offs.get(p, 0)  # a partition a host does not name: it had read none of it
                self._first[p] = min(self._first.get(p, off), off)

    def past(self, partition: int, offset: int) -> bool:
        """Whether a record at (partition, offset) lies past some host's prefix (cheap: checked per record)."""
        first = self._first.get(partition)
        return first is None or offset >= first

    def before(self, partition: int, offset: int, key: str, prev: BanEntry | None) -> None:
        """Called before folding a record that lies :meth:`past` a prefix, with the key's current value."""
        for host, offs in self.offsets.items():
            if offset >= offs.get(partition, 0):
                ov = self.overrides[host]
                if key not in ov:
                    ov[key] = None if prev is None else prev.state


Memo = dict[str, int]
"""key -> :func:`fleet2ban.contract.digest_item` of its final ``bans`` value: shared across hosts."""


def in_force_digest(
    bans: Mapping[str, BanEntry],
    overrides: Mapping[str, BanState | None],
    at: datetime,
    memo: Memo,
    host: str | None = None,
) -> tuple[str, list[str]]:
    """The :func:`fleet2ban.contract.applied_digest` of the bans in force at ``at`` in a prefix of
    ``bans`` (the final values, with ``overrides`` put back), and their keys; with ``host``, only the
    bans whose scope includes it (what its enforcer applies)."""
    keys: list[str] = []
    items: list[int] = []
    for key, entry in bans.items():
        if key in overrides:
            continue
        if host is not None and not entry.state.applies_on(host):
            continue
        exp = entry.state.expires_at
        if exp is not None and exp <= at:
            continue
        item = memo.get(key)
        if item is None:
            item = memo[key] = digest_item(key, exp)
        keys.append(key)
        items.append(item)
    for key, old in overrides.items():
        if host is not None and old is not None and not old.applies_on(host):
            continue
        if old is not None and (old.expires_at is None or old.expires_at > at):
            keys.append(key)
            items.append(digest_item(key, old.expires_at))
    return applied_digest(items), keys


def cover(view: FleetView, hb: Heartbeat, keys: Iterable[str], after: Iterable[Report]) -> None:
    """Set a host's coverage in ``view``: its heartbeat, exactly ``keys`` applied at the heartbeat (its
    digest matched them), then its reports after the heartbeat, in order."""
    view.add_report(hb)
    enf = view.enforcers[hb.host]
    enf.applied = dict.fromkeys(keys, _UNKNOWN)
    enf.failed.clear()
    enf.skipped.clear()
    for rep in after:
        view.add_report(rep)
