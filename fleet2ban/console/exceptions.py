"""Errors of the web console."""

from __future__ import annotations

from fleet2ban.exceptions import ConfigError, Fleet2banError


class ConsoleError(Fleet2banError):
    """The console could not do what a page asked (the broker is down, a read failed)."""


class TokenError(ConfigError):
    """The token file is missing, unreadable or too short, or a token is required and not given."""


class BadQueryError(ConfigError):
    """A page's query parameters do not parse (shown on the page, never a 500)."""
