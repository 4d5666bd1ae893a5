"""Errors of the audit layer and the operator commands built on it."""

from __future__ import annotations

from fleet2ban.exceptions import ConfigError, Fleet2banError


class AuditError(Fleet2banError):
    """An audit query or a manual decision could not be completed."""


class BadTimeError(ConfigError):
    """A duration or a point in time given by the operator does not parse (exit code 2)."""


class RailRefusedError(AuditError):
    """A manual ban was refused by the safety rails before anything was written (exit code 1)."""
