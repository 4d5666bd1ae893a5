"""The live allow-list (issue 18): a pure view of the ``allow`` topic, and the operators' entries.

No Kafka, no kernel. :class:`AllowList` folds ``allow`` records (``JAIL|NETWORK`` -> :class:`AllowEntry`
or a tombstone) and answers :meth:`AllowList.match`: the entry, in force at a given time, that covers a
ban target in a jail. The processor asks it before it counts a failure or mirrors a manual ban, and
lifts the bans an entry covers; every enforcer asks it as a safety rail before a ban reaches the kernel,
so an entry wins even over a stale ban. An entry stops applying at its ``expires_at`` by the asker's
clock: nobody has to remove it.

A target is covered when it overlaps the entry's network in either direction (as the rails treat
``ignoreip``): a ``/24`` ban that contains one allowed address would block it, so it is refused too.

:func:`new_entry` builds an operator's entry (``fleet2ban allow add``, the console) after its checks.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from fleet2ban.contract import (
    ALL_JAILS,
    MAX_BAN_SECONDS,
    AllowEntry,
    ContractError,
    decode_allow,
    exempts_most,
    normalize_target,
    split_allow_key,
)
from fleet2ban.exceptions import ConfigError

Range = tuple[int, int, int]
"""(IP version, first address, last address) as integers."""

REASON_MAX = 500
"""Longest reason kept (characters)."""


def _range(target: str) -> Range:
    net = ipaddress.ip_network(target, strict=False)
    return (net.version, int(net.network_address), int(net.broadcast_address))


class AllowList:
    """The entries of the ``allow`` topic, by key; :meth:`match` answers per (jail, target, time)."""

    def __init__(self, entries: Iterable[AllowEntry] = ()) -> None:
        self.entries: dict[str, AllowEntry] = {}
        self._ranges: dict[str, Range] = {}
        self.version = 0
        """Bumped at every change (callers that cache verdicts compare it)."""
        for e in entries:
            self.put(e)

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, entry: AllowEntry) -> None:
        key = entry.key()
        self.entries[key] = entry
        self._ranges[key] = _range(entry.network)
        self.version += 1

    def remove(self, key: str) -> AllowEntry | None:
        self._ranges.pop(key, None)
        gone = self.entries.pop(key, None)
        self.version += 1
        return gone

    def ingest(self, key: bytes | str | None, value: bytes | None) -> tuple[str, AllowEntry | None]:
        """Apply one ``allow`` record: (its key, the entry now in force for it, None for a tombstone).
        Raises ContractError for a record that breaks the contract (the list is unchanged then)."""
        if key is None:
            raise ContractError("allow record without a key")
        jail, network = split_allow_key(key)
        k = f"{jail}|{network}"
        if value is None:
            self.remove(k)
            return k, None
        entry = decode_allow(value)
        if entry.key() != k:
            raise ContractError(f"allow key {k!r} does not match its value")
        self.put(entry)
        return k, entry

    def match(self, jail: str, target: str, now: datetime) -> AllowEntry | None:
        """The entry in force at ``now`` that covers ``target`` (an address or network) in ``jail``."""
        if not self.entries:
            return None
        try:
            version, lo, hi = _range(target)
        except ValueError:
            return None
        ranges = self._ranges
        for key, e in self.entries.items():
            v, elo, ehi = ranges[key]
            if v == version and lo <= ehi and elo <= hi and e.applies_to(jail) and e.active_at(now):
                return e
        return None

    def active(self, now: datetime) -> list[AllowEntry]:
        """The entries in force at ``now``, by network then jail."""
        found = [e for e in self.entries.values() if e.active_at(now)]
        return sorted(found, key=lambda e: (_range(e.network), e.jail))

    def next_expiry(self, now: datetime) -> datetime | None:
        """When the next entry in force stops applying (None: none will)."""
        times = [
            e.expires_at for e in self.entries.values() if e.expires_at is not None and e.expires_at > now
        ]
        return min(times) if times else None


def new_entry_id() -> str:
    return f"al-{uuid.uuid4().hex[:20]}"


def new_entry(
    network: str,
    *,
    jail: str | None,
    ttl: timedelta | None,
    reason: str | None,
    by: str,
    now: datetime,
    jails: Iterable[str],
) -> AllowEntry:
    """An operator's allow-list entry (``None`` ``ttl``: until removed). Raises ConfigError for an
    unparsable network, the whole address space, an unknown jail, a TTL out of range, or no author."""
    try:
        net = normalize_target(network)
    except ContractError as exc:
        raise ConfigError(str(exc)) from None
    if ipaddress.ip_network(net, strict=False).prefixlen == 0:
        raise ConfigError(f"{net} is every address: an allow-list entry for it would switch banning off")
    space = exempts_most([ipaddress.ip_network(net, strict=False)])
    if space is not None:
        raise ConfigError(
            f"{net} is half or more of {space}: an allow-list entry for it would switch banning off for most"
            " of the Internet"
        )
    name = jail_name(jail, jails)
    if ttl is not None and not timedelta(0) < ttl <= timedelta(seconds=MAX_BAN_SECONDS):
        raise ConfigError("--ttl must be positive and at most ten years (no --ttl: until removed)")
    if not by.strip():
        raise ConfigError("an allow-list entry records who made it: give --by")
    text = (reason or "").strip()[:REASON_MAX] or None
    return AllowEntry(
        id=new_entry_id(),
        network=net,
        at=now,
        jail=name,
        expires_at=None if ttl is None else now + ttl,
        by=by.strip(),
        reason=text,
    )


def jail_name(jail: str | None, jails: Iterable[str]) -> str:
    """``jail`` when configured, ``*`` when None or ``*``; ConfigError otherwise."""
    if jail is None or jail.strip() in ("", ALL_JAILS):
        return ALL_JAILS
    known = list(jails)
    if jail not in known:
        raise ConfigError(f"unknown jail {jail[:40]!r} (configured: {', '.join(known) or 'none'})")
    return jail


def entry_text(e: AllowEntry) -> str:
    """One line saying which entry and why (in unban decisions and refusal reports)."""
    jail = "every jail" if e.jail == ALL_JAILS else f"jail {e.jail}"
    why = f": {e.reason}" if e.reason else ""
    return f"allow-list entry {e.network} ({jail}) by {e.by or '?'}{why}"
