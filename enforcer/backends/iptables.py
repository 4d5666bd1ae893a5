"""The ``iptables`` backend: python-iptables, one chain per jail and family, one rule per banned target.

``-A f2b-amps -s 203.0.113.9/32 -p tcp -j DROP`` (or ``-j REJECT --reject-with tcp-reset``). A batch of
adds and deletes is one table commit (libiptc replaces the table at once: about 0.6 s to build 10,000
rules, 10 ms to commit). Rules carry no timeout: the agent removes them when bans expire on its clock.
The cost of a linear list grows with its length on the packet path (see bench/); use ``ipset`` for
thousands of bans.
"""

from __future__ import annotations

import builtins
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from enforcer.backends.base import Backend, Failure
from enforcer.backends.xtables import FAMILIES, XTables, describe_variant, require_net_admin, xtables_lock
from enforcer.exceptions import BackendError
from enforcer.plan import Add, Delete, JailSpec, KernelEntry, Key, family_of
from fleet2ban.contract import normalize_target
from fleet2ban.settings import EnforcerSettings

log = logging.getLogger(__name__)


def rule_target(src: str | None) -> str | None:
    """The ban target of a rule's source (``10.0.0.1/255.255.255.255`` -> ``10.0.0.1``), None if any."""
    if not src:
        return None
    addr, _, mask = src.partition("/")
    try:
        if mask and not mask.isdigit():
            prefix = bin(int(ipaddress.ip_address(mask))).count("1")
        else:
            prefix = int(mask) if mask else (128 if ":" in addr else 32)
        net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    except ValueError:
        return None
    if net.prefixlen == 0:
        return None
    return normalize_target(str(net))


class IptablesBackend(Backend):
    name = "iptables"
    timeouts = False

    def __init__(self, jails: Sequence[JailSpec], settings: EnforcerSettings) -> None:
        super().__init__(jails, settings)
        self._xt: XTables | None = None

    @property
    def xt(self) -> XTables:
        if self._xt is None:
            self._xt = XTables(self.jails, self.chain_name, self.settings.target)
        return self._xt

    def check(self) -> None:
        require_net_admin(self.name)
        with xtables_lock():
            self.xt.refresh()  # raises a clear error when the legacy tables cannot be opened

    def describe(self) -> str:
        return f"backend iptables (python-iptables, a rule per ban): {describe_variant(self._chains())}"

    def _chains(self) -> list[str]:
        return [self.chain_name(j.name) for j in self.jails]

    def _is_ours(self, rule: Any) -> str | None:
        """The target of a rule in our form (source, -p tcp, our verdict, nothing else), else None."""
        if not self.xt.target_matches(rule):
            return None
        if [m for m in rule.matches if m.name != "tcp"] or rule.in_interface or rule.out_interface:
            return None
        if rule.dst not in (None, "0.0.0.0/0.0.0.0", "::/0"):
            return None
        return rule_target(rule.src)

    def _ban_rule(self, family: int, target: str) -> Any:
        r = self.xt.rule(family)
        r.src = target
        self.xt.set_target(r)
        return r

    def ensure(self) -> int:
        repairs = 0
        with xtables_lock():
            self.xt.refresh()
            for family in FAMILIES:
                changed = 0
                for spec in self.jails:
                    changed += self.xt.ensure_chain(family, spec)
                    chain = self.xt.iptc.Chain(self.xt.table(family), self.chain_name(spec.name))
                    seen: set[str] = set()
                    for rule in list(chain.rules):
                        target = self._is_ours(rule)
                        if target is None or target in seen or family_of(target) != family:
                            log.warning(
                                "removing a foreign or duplicate rule from %s (IPv%d)", chain.name, family
                            )
                            chain.delete_rule(rule)
                            changed += 1
                        else:
                            seen.add(target)
                if changed:
                    self.xt.commit(family)
                repairs += changed
        return repairs

    def commit(self) -> list[Failure]:
        adds, deletes = self._take_staged()
        if not adds and not deletes:
            return []
        failures: list[Failure] = []
        with xtables_lock():
            self.xt.refresh()
            for family in FAMILIES:
                fam_adds = [a for a in adds if a.family == family and not a.renew]
                fam_deletes = [d for d in deletes if d.family == family]
                if not fam_adds and not fam_deletes:
                    continue
                try:
                    self._apply(family, fam_adds, fam_deletes)
                    self.xt.commit(family)
                except BackendError as exc:
                    failures += [Failure(a.jail, a.target, str(exc)) for a in fam_adds]
                    failures += [Failure(d.jail, d.target, str(exc)) for d in fam_deletes]
        return failures

    def _apply(self, family: int, adds: list[Add], deletes: list[Delete]) -> None:
        table = self.xt.table(family)
        chains: dict[str, Any] = {}

        def chain_of(jail: str) -> Any:
            if jail not in chains:
                name = self.chain_name(jail)
                if not table.is_chain(name):
                    raise BackendError(
                        f"chain {name} (IPv{family}) is missing; the next reconcile restores it"
                    )
                chains[jail] = self.xt.iptc.Chain(table, name)
            return chains[jail]

        for d in deletes:
            try:
                chain_of(d.jail).delete_rule(self._ban_rule(family, d.target))
            except BackendError:
                raise
            except Exception:  # no such rule: already gone
                log.debug("rule for %s was not in %s", d.target, self.chain_name(d.jail))
        for a in adds:
            chain_of(a.jail).append_rule(self._ban_rule(family, a.target))

    def list(self) -> dict[Key, KernelEntry]:
        out: dict[Key, KernelEntry] = {}
        with xtables_lock():
            self.xt.refresh()
            for family in FAMILIES:
                for spec in self.jails:
                    for rule in self.xt.chain_rules(family, spec.name):
                        target = self._is_ours(rule)
                        if target is not None:
                            out[(spec.name, target)] = KernelEntry(spec.name, target)
        return out

    def uninstall(self) -> builtins.list[str]:
        return self.xt.uninstall_chains()

    def show(self) -> str:
        chains = self._chains()
        parts = [self.headline()]
        for family in FAMILIES:
            parts.append(f"-- IPv{family} (iptables-legacy):")
            parts.append(self.xt.legacy_listing(family, chains))
        return "\n".join(parts)
