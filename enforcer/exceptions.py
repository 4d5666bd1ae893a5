"""Errors of the enforcer package."""

from __future__ import annotations

from fleet2ban.exceptions import CapabilityError, Fleet2banError


class EnforcerError(Fleet2banError):
    """The enforcer cannot go on (a backend failed in a way a retry will not fix)."""


class BackendError(EnforcerError):
    """A firewall operation failed (the kernel or a tool refused it); the text says which and why."""


class FirewallCapabilityError(CapabilityError):
    """The host lacks what a backend needs: CAP_NET_ADMIN, a command, or the legacy x_tables backend."""
