"""Errors of the processor package."""

from __future__ import annotations

from fleet2ban.exceptions import ConfigError, Fleet2banError


class ProcessorError(Fleet2banError):
    """The processor cannot run (its Faust worker failed to start, a table cannot be recovered...)."""


class IncrementConfigError(ConfigError):
    """A ``bantime.increment`` option (formula, multipliers...) is invalid."""


class ImportFail2banError(ConfigError):
    """A fail2ban jail or filter file cannot be read or carried over."""
