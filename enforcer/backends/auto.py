"""``enforcer.backend: auto``: nftables where this host's firewall is nftables, ipset where it is legacy.

The evidence is the kernel's, read in the enforcer's own network namespace, so it holds inside a container
too (whose ``iptables`` command says nothing about the host's), the way Kubernetes' iptables-wrapper
decides:

1. nftables cannot be used here (no libnftables, or the kernel refuses nf_tables): ipset.
2. Rules in legacy x_tables (``iptables-legacy-save``, fleet2ban's own chains not counted) and none in
   nftables (our own table not counted): the firewall is legacy, so ipset.
3. Rules in nftables (which is where iptables-nft writes too): nftables.
4. No rules anywhere yet: what the ``iptables`` command is (``iptables -V``): legacy means ipset;
   nf_tables, or no ``iptables`` command at all, means nftables.

Without CAP_NET_ADMIN the kernel cannot be asked; step 4 decides, and the backend's ``check`` says what
is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from enforcer.backends.libnft import Nft, NftError
from enforcer.backends.nftables import TABLE
from enforcer.backends.xtables import has_cap_net_admin, iptables_variant
from enforcer.exceptions import FirewallCapabilityError


@dataclass(frozen=True)
class Evidence:
    nft_error: str | None
    """Why nftables cannot be used here; None when it can."""
    nft_rules: int
    nft_tables: list[str]
    legacy_rules: int
    ours_in_legacy: bool
    """Chains of fleet2ban's ipset/iptables backends are installed in x_tables."""
    variant: str
    """The ``iptables`` command: nf_tables, legacy or missing."""


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str


def nft_evidence() -> tuple[str | None, int, list[str]]:
    """(why nftables is unusable or None, rules in foreign tables, the foreign tables)."""
    try:
        objects = Nft().query("list ruleset", terse=True)
    except FirewallCapabilityError as exc:
        return str(exc), 0, []
    except NftError as exc:
        return f"nf_tables refused a listing: {exc}", 0, []
    tables = [
        f"{o['table']['family']} {o['table']['name']}"
        for o in objects
        if "table" in o and o["table"].get("name") != TABLE
    ]
    rules = sum(1 for o in objects if "rule" in o and o["rule"].get("table") != TABLE)
    return None, rules, tables


def legacy_evidence(chain_prefix: str) -> tuple[int, bool]:
    """(rules in legacy x_tables other than fleet2ban's, whether fleet2ban's chains are there)."""
    rules, ours = 0, False
    for names, exe in (
        ("/proc/net/ip_tables_names", "iptables-legacy-save"),
        ("/proc/net/ip6_tables_names", "ip6tables-legacy-save"),
    ):
        try:
            with open(names, encoding="ascii") as f:
                if not f.read().strip():
                    continue  # no legacy table was ever used in this namespace
        except OSError:
            continue
        path = shutil.which(exe)
        if path is None:
            continue
        try:
            out = subprocess.run([path], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in out.splitlines():
            if line.startswith(f":{chain_prefix}"):
                ours = True
            parts = line.split()
            if not line.startswith("-A "):
                continue
            if parts[1].startswith(chain_prefix) or (
                parts[-2:-1] == ["-j"] and parts[-1].startswith(chain_prefix)
            ):
                continue
            rules += 1
    return rules, ours


def gather(chain_prefix: str) -> Evidence:
    variant = iptables_variant()
    if not has_cap_net_admin():
        return Evidence("no CAP_NET_ADMIN to read the firewall", 0, [], 0, False, variant)
    nft_error, nft_rules, tables = nft_evidence()
    legacy_rules, ours = legacy_evidence(chain_prefix)
    return Evidence(nft_error, nft_rules, tables, legacy_rules, ours, variant)


def decide(ev: Evidence) -> Choice:
    """The backend the evidence points to, and the reason in one sentence."""
    if ev.nft_error is not None and ev.nft_error != "no CAP_NET_ADMIN to read the firewall":
        return Choice("ipset", f"nftables cannot be used here ({ev.nft_error})")
    if ev.nft_error is None and ev.legacy_rules and not ev.nft_rules:
        return Choice(
            "ipset",
            f"this host's firewall is legacy x_tables ({ev.legacy_rules} rules in iptables-legacy-save, "
            "none in nftables)",
        )
    if ev.nft_error is None and ev.nft_rules:
        legacy = f"; {ev.legacy_rules} rules in legacy x_tables too" if ev.legacy_rules else ""
        tables = ", ".join(ev.nft_tables[:4]) + (", ..." if len(ev.nft_tables) > 4 else "")
        reason = f"this host's firewall is nftables ({ev.nft_rules} rules in tables {tables}{legacy})"
        return Choice("nftables", reason + _leftover(ev))
    prefix = "no firewall rules yet" if ev.nft_error is None else f"cannot read the firewall ({ev.nft_error})"
    if ev.variant == "legacy":
        return Choice("ipset", f"{prefix}; this host's `iptables` is iptables-legacy (x_tables)")
    if ev.variant == "nf_tables":
        return Choice(
            "nftables", f"{prefix}; this host's `iptables` is iptables-nft (nf_tables)" + _leftover(ev)
        )
    return Choice("nftables", f"{prefix}; no `iptables` command here, nftables it is" + _leftover(ev))


def _leftover(ev: Evidence) -> str:
    if not ev.ours_in_legacy:
        return ""
    return (
        "; the chains of an earlier ipset/iptables backend are still in x_tables and keep filtering: "
        "remove them with `fleet2ban enforcer --backend ipset --uninstall`"
    )


def choose(chain_prefix: str) -> Choice:
    return decide(gather(chain_prefix))
