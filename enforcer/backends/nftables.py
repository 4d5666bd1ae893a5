"""The ``nftables`` backend: a table of its own, sets with kernel-side timeouts, driven in process.

Layout, all in ``table inet fleet2ban`` (nothing else is ever touched):

- per jail and family a set of addresses, ``<prefix><jail>-4`` / ``-6`` (``f2b-amps-4``: ``type
  ipv4_addr; flags timeout``), and where the rails let prefix bans through (``enforcer.min_prefix_v4 <
  32`` / ``min_prefix_v6 < 128``) a set of prefixes, ``f2b-amps-4-nets`` (``flags timeout, interval``).
  Two sets, because an interval set refuses overlapping elements ("interval overlaps with an existing
  one"): an address banned inside a banned /64 must coexist with it. Only a prefix nested in another
  prefix of the same jail is refused (reported ``failed``; the wider ban covers it). Every element carries
  its own timeout, so a ban expires in the kernel even if the enforcer is dead; ``size`` is
  ``enforcer.set_maxelem`` and the fill ratio is a metric.
- per jail a base chain ``f2b-amps`` (``type filter hook input priority -10; policy accept``) with one
  rule per set: ``tcp dport { 9007 } ip saddr @f2b-amps-4 drop`` (or ``reject with tcp reset``). A drop in
  any base chain is final, so a foreign table that accepts on the same hook does not undo a ban, and
  ours never accepts anything.

Every commit is one libnftables JSON transaction (atomic: all of it or none). A new ban is ``add
element``; a renewed one is ``add`` + ``delete`` + ``add`` with the new timeout in the same transaction
(re-adding an element leaves its timeout alone on kernels before 6.10); a removal is ``add`` + ``delete``
(a delete of an element the kernel has just expired would fail the transaction). When a transaction fails
because our table (or a set, a chain) is gone, the structure is put back and the transaction retried
once; when the kernel refuses it otherwise, it is split in halves until the refused changes are
isolated: they are reported failed and the rest is applied.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from enforcer.backends.base import Backend, Failure
from enforcer.backends.libnft import Nft, NftError
from enforcer.backends.xtables import FAMILIES, require_net_admin
from enforcer.exceptions import FirewallCapabilityError
from enforcer.plan import Add, Delete, JailSpec, KernelEntry, Key
from fleet2ban.contract import ContractError, normalize_target
from fleet2ban.settings import EnforcerSettings

log = logging.getLogger(__name__)

TABLE = "fleet2ban"
FAMILY = "inet"
PRIORITY = -10
"""Before the usual ``filter`` priority (0): a banned packet is dropped before other tables look at it."""
SNAPSHOT_TTL = 2.0
"""How long the listing read by :meth:`ensure` serves the :meth:`list` that follows it (same reconcile)."""
MISSING = "No such file or directory"
"""libnftables' words for a table, set or chain that does not exist (ENOENT)."""
MAX_SPLIT_TRANSACTIONS = 400
"""Bound on the transactions spent isolating refused changes in one commit."""


@dataclass(frozen=True)
class SetSpec:
    jail: str
    family: int
    nets: bool
    name: str

    @property
    def type(self) -> str:
        return "ipv4_addr" if self.family == 4 else "ipv6_addr"

    @property
    def flags(self) -> list[str]:
        return ["interval", "timeout"] if self.nets else ["timeout"]


def element_value(target: str) -> Any:
    """The JSON form of a ban target: an address string, or a prefix object."""
    if "/" not in target:
        return target
    addr, _, length = target.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


def element_target(value: Any) -> str | None:
    """The normalized ban target of a listed element value; None for what we never write (ranges...)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict) and isinstance(value.get("prefix"), dict):
        text = f"{value['prefix'].get('addr')}/{value['prefix'].get('len')}"
    else:
        return None
    try:
        return normalize_target(text)
    except ContractError:
        return None


def parse_element(item: Any) -> tuple[Any, str | None, int | None]:
    """(raw value, target, seconds left or None when permanent) of one listed set element."""
    if isinstance(item, dict) and isinstance(item.get("elem"), dict):
        elem = item["elem"]
        value = elem.get("val")
        left = elem.get("expires", elem.get("timeout"))
        timeout = int(left) if isinstance(left, int | float) and elem.get("timeout") else None
        return value, element_target(value), timeout
    return item, element_target(item), None


@dataclass
class _Listing:
    """Our table as listed: sets and chains by name, each chain's rules' expressions."""

    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)


@dataclass
class _Repair:
    """What :meth:`NftablesBackend.ensure` changes in one transaction."""

    flush: set[str] = field(default_factory=set)  # chains to flush (wrong rules, or rules using a set remade)
    drop_chains: list[str] = field(default_factory=list)
    add_chains: list[str] = field(default_factory=list)
    drop_sets: list[str] = field(default_factory=list)
    add_sets: list[SetSpec] = field(default_factory=list)
    strays: list[dict[str, Any]] = field(default_factory=list)

    def count(self, chains: dict[str, JailSpec]) -> int:
        """How many repairs (a chain of ours reset counts once)."""
        n = len(self.drop_chains) + len(self.add_chains) + len(self.drop_sets) + len(self.add_sets)
        n += len(self.strays)
        return n + len({c for c in self.flush if c in chains and c not in self.drop_chains})


class NftablesBackend(Backend):
    name = "nftables"
    timeouts = True

    def __init__(self, jails: Sequence[JailSpec], settings: EnforcerSettings) -> None:
        super().__init__(jails, settings)
        self._nft: Nft | None = None
        self._snapshot: tuple[float, list[dict[str, Any]]] | None = None
        self._counts: dict[str, int] = {}
        self._warned: set[str] = set()
        self._set_names: dict[str, tuple[str, ...]] = {}

    @property
    def nft(self) -> Nft:
        if self._nft is None:
            self._nft = Nft()
        return self._nft

    # -- names and the wanted structure

    def set_name(self, jail: str, family: int, nets: bool = False) -> str:
        return f"{self.chain_name(jail)}-{family}{'-nets' if nets else ''}"

    def prefixes_allowed(self, family: int) -> bool:
        full = 32 if family == 4 else 128
        minimum = self.settings.min_prefix_v4 if family == 4 else self.settings.min_prefix_v6
        return minimum < full

    def sets(self) -> list[SetSpec]:
        out = []
        for spec in self.jails:
            for family in FAMILIES:
                out.append(SetSpec(spec.name, family, False, self.set_name(spec.name, family)))
                if self.prefixes_allowed(family):
                    out.append(SetSpec(spec.name, family, True, self.set_name(spec.name, family, True)))
        return out

    def set_for(self, jail: str, target: str) -> str:
        family = 6 if ":" in target else 4
        return self.set_name(jail, family, nets="/" in target)

    def _set_obj(self, s: SetSpec) -> dict[str, Any]:
        return {
            "family": FAMILY,
            "table": TABLE,
            "name": s.name,
            "type": s.type,
            "flags": s.flags,
            "size": self.settings.set_maxelem,
        }

    def _chain_obj(self, jail: str) -> dict[str, Any]:
        return {
            "family": FAMILY,
            "table": TABLE,
            "name": self.chain_name(jail),
            "type": "filter",
            "hook": "input",
            "prio": PRIORITY,
            "policy": "accept",
        }

    def _verdict(self) -> dict[str, Any]:
        return {"reject": {"type": "tcp reset"}} if self.settings.target == "REJECT" else {"drop": None}

    def rule_exprs(self, spec: JailSpec) -> list[list[dict[str, Any]]]:
        """The rules of a jail's chain, in the JSON form libnftables lists them back."""
        ports: Any = spec.ports[0] if len(spec.ports) == 1 else {"set": list(spec.ports)}
        dport = {
            "match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": ports}
        }
        out = []
        for s in self.sets():
            if s.jail != spec.name:
                continue
            proto = "ip" if s.family == 4 else "ip6"
            saddr = {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": proto, "field": "saddr"}},
                    "right": f"@{s.name}",
                }
            }
            out.append([dport, saddr, self._verdict()])
        return out

    def _rule_cmd(self, spec: JailSpec, expr: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "add": {
                "rule": {"family": FAMILY, "table": TABLE, "chain": self.chain_name(spec.name), "expr": expr}
            }
        }

    def _element_cmd(self, verb: str, set_name: str, elems: list[Any]) -> dict[str, Any]:
        return {verb: {"element": {"family": FAMILY, "table": TABLE, "name": set_name, "elem": elems}}}

    # -- reading the table

    def _listing(self) -> list[dict[str, Any]] | None:
        """Every object of our table (sets with their elements), or None when the table is missing."""
        try:
            return self.nft.query(f"list table {FAMILY} {TABLE}")
        except NftError as exc:
            if MISSING in str(exc):
                return None
            raise

    def table_exists(self) -> bool:
        try:
            self.nft.query(f"list table {FAMILY} {TABLE}", terse=True)
        except NftError as exc:
            if MISSING in str(exc):
                return False
            raise
        return True

    # -- backend operations

    def check(self) -> None:
        require_net_admin(self.name)
        try:
            self.nft.query("list tables")
        except NftError as exc:
            raise FirewallCapabilityError(
                f"the nftables backend cannot talk to the kernel's nf_tables ({exc}): a kernel with "
                "CONFIG_NF_TABLES is needed, or use the ipset backend"
            ) from None

    def describe(self) -> str:
        chains = ", ".join(self.chain_name(j.name) for j in self.jails)
        sets = ", ".join(s.name for s in self.sets())
        return (
            f"backend nftables (table {FAMILY} {TABLE}: chains {chains} hooked on input at priority "
            f"{PRIORITY}; sets {sets}; see them with `nft list table {FAMILY} {TABLE}`)"
        )

    def ensure(self) -> int:
        listing = self._listing()
        self._snapshot = None
        if listing is None:
            cmds: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
            cmds += [{"add": {"set": self._set_obj(s)}} for s in self.sets()]
            for spec in self.jails:
                cmds.append({"add": {"chain": self._chain_obj(spec.name)}})
                cmds += [self._rule_cmd(spec, e) for e in self.rule_exprs(spec)]
            self.nft.run(cmds)
            return 1
        have = self._sort_listing(listing)
        chains = {self.chain_name(j.name): j for j in self.jails}
        fix = _Repair()
        self._check_chains(fix, have.chains, chains)
        self._check_sets(fix, have.sets, {s.name: s for s in self.sets()})
        if fix.drop_sets:  # a set referred to by a rule cannot be deleted: empty the chains first
            fix.flush |= set(have.chains)
        for name, spec in chains.items():
            if (
                name not in fix.flush
                and name not in fix.add_chains
                and have.rules.get(name, []) != self.rule_exprs(spec)
            ):
                log.warning("chain %s held rules that are not ours: reset", name)
                fix.flush.add(name)
        cmds = self._repair_commands(fix, have.chains, chains)
        if cmds:
            self.nft.run(cmds)
        repairs = fix.count(chains)
        if not repairs:
            self._snapshot = (time.monotonic(), listing)
        return repairs

    def _sort_listing(self, listing: list[dict[str, Any]]) -> _Listing:
        """Our table's sets, chains and rules by name; a foreign object kind is warned about once."""
        have = _Listing()
        for obj in listing:
            if "set" in obj:
                have.sets[obj["set"]["name"]] = obj["set"]
            elif "chain" in obj:
                have.chains[obj["chain"]["name"]] = obj["chain"]
            elif "rule" in obj:
                have.rules.setdefault(obj["rule"]["chain"], []).append(obj["rule"].get("expr", []))
            elif "table" not in obj and (kind := next(iter(obj), "?")) not in self._warned:
                self._warned.add(kind)  # maps, counters...: they filter nothing unless a chain uses them
                log.warning("table %s %s holds a foreign %s: left alone", FAMILY, TABLE, kind)
        return have

    def _check_chains(
        self, fix: _Repair, have_chains: dict[str, dict[str, Any]], chains: dict[str, JailSpec]
    ) -> None:
        """Foreign chains go; ours hooked otherwise are remade; missing ones are added."""
        for name, have in have_chains.items():
            if name not in chains:
                log.warning("table %s %s holds a foreign chain %s: removed", FAMILY, TABLE, name)
                fix.flush.add(name)
                fix.drop_chains.append(name)
                continue
            want = self._chain_obj(chains[name].name)
            if any(have.get(k) != want[k] for k in ("type", "hook", "prio", "policy")):
                log.warning("chain %s is not hooked as ours (%s): recreated", name, have)
                fix.flush.add(name)
                fix.drop_chains.append(name)
                fix.add_chains.append(name)
        fix.add_chains += [n for n in chains if n not in have_chains]

    def _check_sets(
        self, fix: _Repair, have_sets: dict[str, dict[str, Any]], wanted_sets: dict[str, SetSpec]
    ) -> None:
        """Foreign sets go; ours of another type or flags are remade; elements we never write are
        removed; missing sets are added."""
        for name, have in have_sets.items():
            wanted = wanted_sets.get(name)
            if wanted is None:
                log.warning("table %s %s holds a foreign set %s: removed", FAMILY, TABLE, name)
                fix.drop_sets.append(name)
            elif have.get("type") != wanted.type or sorted(have.get("flags", [])) != sorted(wanted.flags):
                log.warning(
                    "set %s is %s %s, not %s %s: recreated",
                    name,
                    have.get("type"),
                    have.get("flags"),
                    wanted.type,
                    wanted.flags,
                )
                fix.drop_sets.append(name)
                fix.add_sets.append(wanted)
            else:
                self._check_elements(fix, name, have, wanted)
        fix.add_sets += [s for n, s in wanted_sets.items() if n not in have_sets]

    def _check_elements(self, fix: _Repair, name: str, have: dict[str, Any], wanted: SetSpec) -> None:
        if have.get("size") != self.settings.set_maxelem and name not in self._warned:
            self._warned.add(name)
            log.warning(
                "set %s has size %s, settings say %d: uninstall and restart to resize it",
                name,
                have.get("size"),
                self.settings.set_maxelem,
            )
        bad = []
        for item in have.get("elem", []):
            value, target, _ = parse_element(item)
            if target is None or self.set_for(wanted.jail, target) != name:
                bad.append(value)
        if bad:
            log.warning("set %s held %d elements fleet2ban never writes: removed", name, len(bad))
            fix.strays.append(self._element_cmd("delete", name, bad))

    def _repair_commands(
        self, fix: _Repair, have_chains: dict[str, dict[str, Any]], chains: dict[str, JailSpec]
    ) -> list[dict[str, Any]]:
        """One transaction: flush, delete, remake, add, in that order."""
        table = {"family": FAMILY, "table": TABLE}
        cmds: list[dict[str, Any]] = [
            {"flush": {"chain": {**table, "name": n}}} for n in sorted(fix.flush) if n in have_chains
        ]
        cmds += [{"delete": {"chain": {**table, "name": n}}} for n in fix.drop_chains]
        cmds += [{"delete": {"set": {**table, "name": n}}} for n in fix.drop_sets]
        cmds += [{"add": {"set": self._set_obj(s)}} for s in fix.add_sets]
        cmds += fix.strays
        cmds += [{"add": {"chain": self._chain_obj(chains[name].name)}} for name in fix.add_chains]
        for name, spec in chains.items():
            if name in fix.flush or name in fix.add_chains:
                cmds += [self._rule_cmd(spec, e) for e in self.rule_exprs(spec)]
        return cmds

    def _set_for_cached(self, jail: str, target: str) -> str:
        """:meth:`set_for`, memoised per jail: an index by family and prefix, not a name built per ban."""
        names = self._set_names.get(jail)
        if names is None:
            names = self._set_names[jail] = tuple(
                self.set_name(jail, family, nets) for family in (4, 6) for nets in (False, True)
            )
        return names[(":" in target) * 2 + ("/" in target)]

    def _batch(self, changes: Sequence[Add | Delete]) -> list[dict[str, Any]]:
        """The changes as one transaction, merged per set: every element to remove or renew is first made
        present (so its delete cannot fail), then deleted, then every element added with its timeout:
        10,000 new bans are one ``add element``. Built straight from the staged changes (no object per
        change): the same function builds a whole commit and each half of a refused one."""
        present: dict[str, list[Any]] = {}
        final: dict[str, list[Any]] = {}
        set_for = self._set_for_cached
        for c in changes:
            name = set_for(c.jail, c.target)
            value = element_value(c.target)
            if isinstance(c, Delete):
                present.setdefault(name, []).append(value)
                continue
            if c.renew:
                present.setdefault(name, []).append(value)
            final.setdefault(name, []).append(
                value if c.timeout is None else {"elem": {"val": value, "timeout": c.timeout}}
            )
        cmds = [self._element_cmd("add", n, v) for n, v in present.items()]
        cmds += [self._element_cmd("delete", n, v) for n, v in present.items()]
        cmds += [self._element_cmd("add", n, v) for n, v in final.items()]
        return cmds

    def commit(self) -> list[Failure]:
        adds, deletes = self._take_staged()
        if not adds and not deletes:
            return []
        self._snapshot = None
        changes: list[Add | Delete] = [*deletes, *adds]
        try:
            self.nft.run(self._batch(changes))
            return []
        except NftError as exc:
            first = str(exc)
        if MISSING in first:
            # Our table, a set or a chain is gone (`nft flush ruleset`, a deleted table): put the
            # structure back now rather than at the next full reconcile, which re-adds what it held.
            try:
                repairs = self.ensure()
                self._snapshot = None
                self.nft.run(self._batch(changes))
                log.warning(
                    "table %s %s was damaged (%s): %d repairs before this commit; the next full "
                    "reconcile re-adds the bans it held",
                    FAMILY,
                    TABLE,
                    first,
                    repairs,
                )
                return []
            except NftError as exc:
                first = str(exc)
        failures: list[Failure] = []
        budget = [MAX_SPLIT_TRANSACTIONS]
        self._split(changes, first, failures, budget)
        return failures

    def _split(
        self, changes: list[Add | Delete], error: str, failures: list[Failure], budget: list[int]
    ) -> None:
        """``changes`` were refused together with ``error``: apply what the kernel accepts, collect the rest."""
        if len(changes) == 1 or budget[0] <= 0:
            failures += [Failure(c.jail, c.target, f"nftables: {error}") for c in changes]
            return
        half = len(changes) // 2
        for part in (changes[:half], changes[half:]):
            budget[0] -= 1
            try:
                self.nft.run(self._batch(part))
            except NftError as exc:
                self._split(part, str(exc), failures, budget)

    def list(self) -> dict[Key, KernelEntry]:
        snap = self._snapshot
        self._snapshot = None
        if snap is not None and time.monotonic() - snap[0] < SNAPSHOT_TTL:
            listing: list[dict[str, Any]] | None = snap[1]
        else:
            listing = self._listing()
        out: dict[Key, KernelEntry] = {}
        if listing is None:
            self._counts = {}
            return out
        specs = {s.name: s for s in self.sets()}
        counts: dict[str, int] = {}
        for obj in listing:
            body = obj.get("set")
            if body is None or body.get("name") not in specs:
                continue
            spec = specs[body["name"]]
            items = body.get("elem", [])
            counts[spec.name] = len(items)
            for item in items:
                _, target, timeout = parse_element(item)
                if target is not None and self.set_for(spec.jail, target) == spec.name:
                    out[(spec.jail, target)] = KernelEntry(spec.jail, target, timeout)
        self._counts = counts
        return out

    def uninstall(self) -> builtins.list[str]:
        if not self.table_exists():
            return []
        self.nft.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        self._snapshot = None
        return [f"table {FAMILY} {TABLE} (its chains and sets)"]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, count in self._counts.items():
            fill = count / self.settings.set_maxelem
            out[f"set_fill_ratio:{name}"] = fill
            if fill >= self.settings.alarm_ratio:
                log.warning(
                    "set %s is %.0f%% full (%d of size %d): raise enforcer.set_maxelem",
                    name,
                    fill * 100,
                    count,
                    self.settings.set_maxelem,
                )
        return out

    def show(self) -> str:
        parts = [self.headline()]
        if not self.table_exists():
            parts.append(f"(no table {FAMILY} {TABLE} yet: the enforcer creates it when it starts)")
        else:
            parts.append(self.nft.text(f"list table {FAMILY} {TABLE}").rstrip())
        return "\n".join(parts)
