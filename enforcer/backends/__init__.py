"""Firewall backends: ``auto`` (default: nftables or ipset, from what this host's firewall is),
``nftables`` (own table, sets with kernel timeouts, in process), ``ipset`` (python-iptables rule + ipset),
``iptables`` (python-iptables, a rule per ban), ``dryrun`` (logs only)."""

from __future__ import annotations

from collections.abc import Sequence

from enforcer.backends.base import Backend, Failure
from enforcer.plan import JailSpec
from fleet2ban.settings import EnforcerSettings

__all__ = ["BACKENDS", "Backend", "Failure", "make_backend"]

BACKENDS = ("auto", "nftables", "ipset", "iptables", "dryrun")


def make_backend(name: str, jails: Sequence[JailSpec], settings: EnforcerSettings) -> Backend:
    """The backend called ``name`` (imports python-iptables / libnftables only for the real ones).

    ``auto`` looks at this host's firewall (:mod:`enforcer.backends.auto`) and returns the nftables or the
    ipset backend, with :attr:`Backend.auto_reason` saying why."""
    if name == "auto":
        from enforcer.backends.auto import choose

        choice = choose(settings.chain_prefix)
        backend = make_backend(choice.name, jails, settings)
        backend.auto_reason = choice.reason
        return backend
    if name == "dryrun":
        from enforcer.backends.dryrun import DryRunBackend

        return DryRunBackend(jails, settings)
    if name == "nftables":
        from enforcer.backends.nftables import NftablesBackend

        return NftablesBackend(jails, settings)
    if name == "iptables":
        from enforcer.backends.iptables import IptablesBackend

        return IptablesBackend(jails, settings)
    if name == "ipset":
        from enforcer.backends.ipset import IpsetBackend

        return IpsetBackend(jails, settings)
    raise ValueError(f"unknown enforcer backend {name!r} (one of {', '.join(BACKENDS)})")
