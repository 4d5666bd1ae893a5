"""Errors of the shipper."""

from __future__ import annotations

from fleet2ban.exceptions import ConfigError, Fleet2banError


class ShipperError(Fleet2banError):
    """The shipper cannot go on (its log or checkpoint cannot be used)."""


class FilterError(ConfigError):
    """A fail2ban filter file that cannot be read or used (exit code 2)."""


class CheckpointError(ShipperError):
    """The checkpoint file cannot be written."""
