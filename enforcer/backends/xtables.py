"""python-iptables plumbing shared by the ``iptables`` and ``ipset`` backends.

python-iptables (module ``iptc``) drives libiptc, i.e. the *legacy* x_tables backend only
(shared/notes/firewall-and-fail2ban.md §3): on a host whose ``iptables`` command is iptables-nft, the
rules made here filter packets all the same but are visible only with ``iptables-legacy -S`` /
``ip6tables-legacy -S``. :func:`describe_variant` says so once at start-up.

Layout per jail and family: a chain ``<prefix><jail>`` (``f2b-amps``) in the filter table, jumped to from
``INPUT`` for the jail's TCP ports only (``-p tcp -m multiport --dports 9007 -j f2b-amps``). Every change
is made on a table with autocommit off and committed once, under ``/run/xtables.lock`` (the lock the
iptables commands take), so a batch is one atomic table replace that never races ``iptables-legacy``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

from enforcer.exceptions import BackendError, FirewallCapabilityError
from enforcer.plan import JailSpec

log = logging.getLogger(__name__)

XT_LOCK = "/run/xtables.lock"
CAP_NET_ADMIN = 12
MULTIPORT_MAX = 15
FAMILIES = (4, 6)


def load_iptc() -> ModuleType:
    """Import python-iptables, turning its import-time failures into one clear error."""
    try:
        import iptc
    except ImportError as exc:
        raise FirewallCapabilityError(
            f"python-iptables is not installed ({exc}): pip install python-iptables"
        ) from None
    except Exception as exc:  # XTablesError: no ldconfig / libxtables
        raise FirewallCapabilityError(
            f"python-iptables cannot load libxtables ({exc}): install the 'iptables' package "
            "(or set XTABLES_LIBDIR=/usr/lib/x86_64-linux-gnu/xtables)"
        ) from None
    module: ModuleType = iptc
    return module


def has_cap_net_admin() -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def require_net_admin(backend: str) -> None:
    if not has_cap_net_admin():
        raise FirewallCapabilityError(
            f"the {backend} backend needs CAP_NET_ADMIN (run as root, or grant the capability); "
            "use --backend dryrun to try it without privileges"
        )


def iptables_variant() -> str:
    """What the host's ``iptables`` command is: ``nf_tables``, ``legacy``, or ``missing``."""
    exe = shutil.which("iptables")
    if exe is None:
        return "missing"
    try:
        out = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    return "nf_tables" if "nf_tables" in out else "legacy"


def describe_variant(chains: Sequence[str]) -> str:
    """One plain sentence: where the rules live and how to see them."""
    shown = " ".join(chains[:1]) or ""
    see = f"`iptables-legacy -S {shown}` and `ip6tables-legacy -S {shown}`"
    variant = iptables_variant()
    if variant == "nf_tables":
        return (
            "this host's `iptables` command is iptables-nft (nf_tables); python-iptables writes to the "
            f"legacy x_tables backend, which filters packets as well but is invisible to `iptables`: see the "
            f"rules with {see} (or make `iptables` agree: update-alternatives --set iptables "
            "/usr/sbin/iptables-legacy; update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy)"
        )
    if variant == "missing":
        return f"no `iptables` command on this host; the rules are in the legacy x_tables backend ({see})"
    return f"rules are in the legacy x_tables backend, as this host's `iptables` shows them ({see})"


def nft_chain_clash(chains: Sequence[str]) -> list[str]:
    """Chains of ours that also exist under iptables-nft (someone created them there: never mixed)."""
    exe = shutil.which("iptables-nft")
    if exe is None:
        return []
    clash = []
    for chain in chains:
        for cmd in (exe, shutil.which("ip6tables-nft") or ""):
            if not cmd:
                continue
            proc = subprocess.run([cmd, "-S", chain], capture_output=True, timeout=10, check=False)
            if proc.returncode == 0:
                clash.append(f"{os.path.basename(cmd)}:{chain}")
    return clash


@contextlib.contextmanager
def xtables_lock(timeout: float = 10.0) -> Iterator[None]:
    """Hold ``/run/xtables.lock`` like the iptables commands do (``-w``)."""
    fd = os.open(XT_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise BackendError(f"cannot take {XT_LOCK} (held by another iptables?)") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


class XTables:
    """The filter tables of both families (autocommit off) and the jails' chains and jump rules."""

    def __init__(self, jails: Sequence[JailSpec], chain_name: Callable[[str], str], target: str) -> None:
        self.iptc = load_iptc()
        self.jails = list(jails)
        self.chain_name = chain_name
        self.target = target

    # -- tables and rules

    def table(self, family: int) -> Any:
        iptc = self.iptc
        try:
            if family == 4:
                return iptc.Table(iptc.Table.FILTER, autocommit=False)
            return iptc.Table6(iptc.Table6.FILTER, autocommit=False)
        except Exception as exc:
            text = str(exc)
            if "Permission denied" in text:
                raise FirewallCapabilityError(
                    "python-iptables: permission denied on the filter table (needs root or CAP_NET_ADMIN)"
                ) from None
            raise FirewallCapabilityError(
                f"python-iptables cannot open the IPv{family} filter table ({text}). It drives only the "
                "legacy x_tables backend, which this kernel does not seem to provide: use a kernel with "
                "CONFIG_IP_NF_IPTABLES_LEGACY (module ip_tables / ip6_tables), or the dryrun backend"
            ) from None

    def rule(self, family: int) -> Any:
        return self.iptc.Rule() if family == 4 else self.iptc.Rule6()

    def set_target(self, rule: Any) -> None:
        """Our verdict: DROP, or REJECT with a TCP reset (the jump only sends TCP here)."""
        rule.protocol = "tcp"
        rule.target = self.iptc.Target(rule, self.target)
        if self.target == "REJECT":
            rule.target.reject_with = "tcp-reset"

    def target_matches(self, rule: Any) -> bool:
        if rule.protocol != "tcp" or rule.target is None or rule.target.name != self.target:
            return False
        if self.target == "REJECT":
            params = rule.target.get_all_parameters()
            return bool(params.get("reject-with", [""])[0] == "tcp-reset")
        return True

    def refresh(self) -> None:
        for family in FAMILIES:
            self.table(family).refresh()

    def commit(self, family: int) -> None:
        table = self.table(family)
        try:
            table.commit()
        except Exception as exc:
            table.refresh()
            raise BackendError(f"IPv{family} filter table commit failed: {exc}") from None
        table.refresh()

    # -- structure

    def jump_rules(self, family: int, chain: str) -> list[Any]:
        table = self.table(family)
        if not table.is_chain("INPUT"):
            return []
        return [r for r in self.iptc.Chain(table, "INPUT").rules if r.target and r.target.name == chain]

    def _jump_ports(self, rule: Any) -> str | None:
        if rule.protocol != "tcp" or rule.src not in (None, "0.0.0.0/0.0.0.0", "::/0"):
            return None
        matches = [m for m in rule.matches if m.name != "tcp"]
        if len(matches) != 1 or matches[0].name != "multiport":
            return None
        dports: list[str] = matches[0].get_all_parameters().get("dports", [])
        return dports[0] if len(dports) == 1 else None

    def wanted_jumps(self, spec: JailSpec) -> list[str]:
        ports = [str(p) for p in spec.ports]
        return [",".join(ports[i : i + MULTIPORT_MAX]) for i in range(0, len(ports), MULTIPORT_MAX)]

    def ensure_chain(self, family: int, spec: JailSpec) -> int:
        """Create the jail's chain and its jump rules when missing or wrong (staged); count repairs."""
        table = self.table(family)
        chain = self.chain_name(spec.name)
        repairs = 0
        if not table.is_chain(chain):
            table.create_chain(chain)
            repairs += 1
        jumps = self.jump_rules(family, chain)
        have = sorted(p for p in (self._jump_ports(r) for r in jumps) if p is not None)
        want = sorted(self.wanted_jumps(spec))
        if have != want or len(jumps) != len(want):
            input_chain = self.iptc.Chain(table, "INPUT")
            for r in jumps:
                input_chain.delete_rule(r)
            for ports in reversed(self.wanted_jumps(spec)):
                j = self.rule(family)
                j.protocol = "tcp"
                m = j.create_match("multiport")
                m.dports = ports
                j.target = self.iptc.Target(j, chain)
                input_chain.insert_rule(j)
            repairs += 1
        return repairs

    def chain_rules(self, family: int, jail: str) -> list[Any]:
        table = self.table(family)
        chain = self.chain_name(jail)
        if not table.is_chain(chain):
            return []
        return list(self.iptc.Chain(table, chain).rules)

    def remove_chain(self, family: int, jail: str) -> bool:
        """Delete the jail's jump rules and chain (staged); whether there was anything to remove."""
        table = self.table(family)
        chain = self.chain_name(jail)
        found = False
        if table.is_chain("INPUT"):
            input_chain = self.iptc.Chain(table, "INPUT")
            for r in self.jump_rules(family, chain):
                input_chain.delete_rule(r)
                found = True
        if table.is_chain(chain):
            self.iptc.Chain(table, chain).flush()
            table.delete_chain(chain)
            found = True
        return found

    def uninstall_chains(self) -> list[str]:
        """Remove every jail's jump rules and chain in both families, committed; what was removed."""
        removed: list[str] = []
        with xtables_lock():
            self.refresh()
            for family in FAMILIES:
                found = [s.name for s in self.jails if self.remove_chain(family, s.name)]
                if found:
                    self.commit(family)
                    removed += [f"IPv{family} chain {self.chain_name(j)}" for j in found]
        return removed

    def legacy_listing(self, family: int, chains: Sequence[str]) -> str:
        """``iptables-legacy -S`` of INPUT's jumps and our chains (for ``--show``)."""
        exe = shutil.which("iptables-legacy" if family == 4 else "ip6tables-legacy")
        if exe is None:
            return "(iptables-legacy not installed)"
        out: list[str] = []
        proc = subprocess.run([exe, "-S", "INPUT"], capture_output=True, text=True, check=False)
        out += [ln for ln in proc.stdout.splitlines() if any(f"-j {c}" in ln for c in chains)]
        for c in chains:
            proc = subprocess.run([exe, "-S", c], capture_output=True, text=True, check=False)
            out += proc.stdout.splitlines() if proc.returncode == 0 else [f"(no chain {c})"]
        return "\n".join(out)
