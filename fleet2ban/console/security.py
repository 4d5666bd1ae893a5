"""The console's security rules, as plain functions: who may bind where, tokens, sessions, CSRF, headers.

- Loopback by default; any other bind address requires a token (``--token-file``) and TLS
  (``--tls-cert``/``--tls-key``): the token and the session cookie never travel in clear text.
- With a token, every request (pages, fragments, the event stream, writes, ``/metrics``) must carry it:
  a session cookie set by the login form (``HttpOnly``, ``SameSite=Strict``, ``Secure`` under TLS), or
  ``Authorization: Bearer``. Only ``/login``, ``/static/*`` and ``/healthz`` are open (``/healthz`` says
  only ``ok`` without the token). Each login gets its own random session, ended by logout and after
  :data:`SESSION_TTL_S`; the cookie is that random value, never the token.
- Writes (``--allow-write``) and logout also need the CSRF token of the browser's session (a random value
  drawn for each session, kept with it, never derived from a server-wide secret, so one session's token
  is worth nothing in another), and a same-origin ``Origin`` header when the browser sends one. Without a
  token (loopback), a writable console gives each browser an anonymous session (the same cookie) whose
  only use is that CSRF token.
- Every response gets the security headers below (CSP without inline script or style).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fleet2ban.console.exceptions import TokenError

SESSION_COOKIE: Final = "f2b_console"
MIN_TOKEN_LEN: Final = 16
SESSION_TTL_S: Final = 12 * 3600
"""A session ends this long after its login at the latest."""
MAX_SESSIONS: Final = 1000
"""Sessions kept at most (the oldest is ended first): logins cannot grow memory without bound."""

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


@dataclass(frozen=True)
class TlsFiles:
    """The console's certificate chain and private key (PEM files), checked by :func:`load_tls`."""

    cert: Path
    key: Path


def load_tls(cert: Path | None, key: Path | None) -> TlsFiles | None:
    """``--tls-cert``/``--tls-key``: both or neither; the pair must load (one clear line otherwise)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise TokenError("give both --tls-cert and --tls-key, or neither")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        detail = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
        raise TokenError(f"cannot use --tls-cert {cert} --tls-key {key}: {detail}") from None
    return TlsFiles(cert, key)


def load_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped); at least 16 characters."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if len(token) < MIN_TOKEN_LEN:
        raise TokenError(f"the token in {path} is too short: use at least {MIN_TOKEN_LEN} characters")
    return token


def require_token_for(host: str, token: str | None, tls: bool = True) -> None:
    """Refuse to serve off loopback without a token, or without TLS (``tls``: a certificate is given)."""
    if token is None and not is_loopback(host):
        raise TokenError(
            f"binding the console to {host} (not loopback) needs a token: pass --token-file FILE "
            "(a file holding a secret of 16+ characters)"
        )
    if not tls and not is_loopback(host):
        raise TokenError(
            f"binding the console to {host} (not loopback) needs TLS: pass --tls-cert FILE --tls-key FILE "
            "(the token and the session cookie must not travel in clear text)"
        )


class Secrets:
    """The server's secrets: the operator token (optional) and the sessions of browsers (random values,
    kept as their SHA-256, each with its expiry and its own random CSRF token)."""

    def __init__(
        self, token: str | None, *, ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.token = token
        self._sessions: dict[bytes, tuple[float, str]] = {}
        """SHA-256 of the cookie -> (expiry, the session's CSRF token)."""
        self._ttl = ttl_s
        self._clock = clock

    @property
    def required(self) -> bool:
        return self.token is not None

    def check_token(self, given: str | None) -> bool:
        if self.token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self) -> str:
        """A fresh session for one login: the cookie value (random; only its hash is kept)."""
        value = secrets.token_urlsafe(32)
        sessions = self._sessions
        while len(sessions) >= MAX_SESSIONS:
            del sessions[next(iter(sessions))]
        sessions[_digest(value)] = (self._clock() + self._ttl, secrets.token_hex(32))
        return value

    def check_session(self, cookie: str | None) -> bool:
        return self._session(cookie) is not None

    def _session(self, cookie: str | None) -> tuple[float, str] | None:
        if not cookie or len(cookie) > 128:
            return None
        digest = _digest(cookie)
        found = self._sessions.get(digest)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._sessions[digest]
            return None
        return found

    def end_session(self, cookie: str | None) -> None:
        """Logout: the session is no longer valid, whoever holds its cookie."""
        if cookie and len(cookie) <= 128:
            self._sessions.pop(_digest(cookie), None)

    def check_bearer(self, header: str | None) -> bool:
        if self.token is None or not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def csrf_token(self, session: str | None = None) -> str:
        """The form token of a page served to ``session`` (its cookie): the session's own random token;
        ``""`` without a valid session (no form of such a page can be accepted)."""
        found = self._session(session)
        return "" if found is None else found[1]

    def check_csrf(self, given: str | None, session: str | None = None) -> bool:
        """Whether ``given`` is the CSRF token of the valid session ``session``."""
        expected = self.csrf_token(session)
        return bool(given) and bool(expected) and hmac.compare_digest(str(given).encode(), expected.encode())


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


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
