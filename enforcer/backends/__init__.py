"""Firewall backends: ``ipset`` (default), ``iptables`` (python-iptables), ``dryrun`` (logs only)."""

from __future__ import annotations

from collections.abc import Sequence

from enforcer.backends.base import Backend, Failure
from enforcer.plan import JailSpec
from fleet2ban.settings import EnforcerSettings

__all__ = ["BACKENDS", "Backend", "Failure", "make_backend"]

BACKENDS = ("ipset", "iptables", "dryrun")


def make_backend(name: str, jails: Sequence[JailSpec], settings: EnforcerSettings) -> Backend:
    """The backend called ``name`` (imports python-iptables only for the real ones)."""
    if name == "dryrun":
        from enforcer.backends.dryrun import DryRunBackend

        return DryRunBackend(jails, settings)
    if name == "iptables":
        from enforcer.backends.iptables import IptablesBackend

        return IptablesBackend(jails, settings)
    if name == "ipset":
        from enforcer.backends.ipset import IpsetBackend

        return IpsetBackend(jails, settings)
    raise ValueError(f"unknown enforcer backend {name!r} (one of {', '.join(BACKENDS)})")
