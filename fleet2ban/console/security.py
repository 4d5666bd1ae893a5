"""The console's security rules, as plain functions: who may bind where, tokens, sessions, CSRF, headers.

- Loopback by default; any other bind address requires a token (``--token-file``).
- With a token, every request (pages, fragments, the event stream, writes, ``/metrics``) must carry it:
  a session cookie set by the login form (``HttpOnly``, ``SameSite=Strict``), or ``Authorization: Bearer``.
  Only ``/login``, ``/static/*`` and ``/healthz`` are open. The cookie holds an HMAC of the token, never
  the token itself.
- Writes (``--allow-write``) also need a CSRF token bound to the server secret and a same-origin
  ``Origin`` header.
- Every response gets the security headers below (CSP without inline script or style).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Final

from fleet2ban.console.exceptions import TokenError

SESSION_COOKIE: Final = "f2b_console"
MIN_TOKEN_LEN: Final = 16

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
)

OPEN_PATHS: Final = ("/login", "/healthz", "/static/", "/favicon.ico")


def parse_bind(text: str, default_port: int = 8080) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    t = text.strip()
    if not t:
        raise TokenError("--bind is empty")
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif t.count(":") > 1:  # a bare IPv6 address
        host, port_text = t, ""
    else:
        host, _, port_text = t.partition(":")
    host = host or "127.0.0.1"
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise TokenError(f"--bind {text!r}: the port must be a number below 65536")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the console on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped); at least 16 characters."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if len(token) < MIN_TOKEN_LEN:
        raise TokenError(f"the token in {path} is too short: use at least {MIN_TOKEN_LEN} characters")
    return token


def require_token_for(host: str, token: str | None) -> None:
    """Refuse to serve off loopback without a token."""
    if token is None and not is_loopback(host):
        raise TokenError(
            f"binding the console to {host} (not loopback) needs a token: pass --token-file FILE "
            "(a file holding a secret of 16+ characters)"
        )


class Secrets:
    """The server's secrets: the operator token (optional) and a random per-process key."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._key = (token.encode() if token else b"") + os.urandom(32)

    @property
    def required(self) -> bool:
        return self.token is not None

    def check_token(self, given: str | None) -> bool:
        if self.token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def session_value(self) -> str:
        """The cookie value a logged-in browser holds (an HMAC, not the token; new at every restart)."""
        return hmac.new(self._key, b"session", hashlib.sha256).hexdigest()

    def check_session(self, cookie: str | None) -> bool:
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session_value().encode())

    def check_bearer(self, header: str | None) -> bool:
        if self.token is None or not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def csrf_token(self) -> str:
        return hmac.new(self._key, b"csrf", hashlib.sha256).hexdigest()

    def check_csrf(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf_token().encode())


def same_origin(origin: str | None, host_header: str | None, scheme: str = "http") -> bool:
    """A write's ``Origin`` must be this server (browsers send it on every POST)."""
    if not origin or not host_header:
        return False
    return origin.rstrip("/") == f"{scheme}://{host_header}"


def is_open_path(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in OPEN_PATHS)


def safe_next(target: str | None) -> str:
    """A post-login redirect that stays on this site (a path, never ``//host`` or a scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/bans"
    return target


def new_token() -> str:
    return secrets.token_urlsafe(24)
