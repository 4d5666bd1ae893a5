"""The console's ASGI app (Starlette): server-rendered pages, HTML fragments for live refresh, an event
stream, login, manual ban/unban, ``/metrics`` and ``/healthz``.

Pages render from the :class:`LiveFleet` view (bans in force, fleet) or from on-demand reads through the
audit layer (one IP, a history range), run in a worker thread. Jinja2 autoescapes everything: evidence
lines and client names are attacker-written, and show as text. The page script (``/static/console.js``)
listens to ``/stream`` (server-sent events) and re-fetches the live part of the page when the data it
shows changed; no inline script or style anywhere (see :mod:`.security` for the CSP).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import jinja2
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet2ban.allowlist import AllowList, entry_text, jail_name, new_entry, new_entry_id
from fleet2ban.audit.exceptions import BadTimeError, RailRefusedError
from fleet2ban.audit.failures import read_failures
from fleet2ban.audit.manual import check_not_allowed, manual_ban, manual_unban
from fleet2ban.audit.reader import TargetRecords, read_decisions, read_target
from fleet2ban.audit.timeparse import format_duration, parse_duration, parse_when
from fleet2ban.audit.writer import publish_allow, publish_decision, read_allow_list
from fleet2ban.console import pages
from fleet2ban.console.exceptions import BadQueryError
from fleet2ban.console.live import LiveFleet, LiveStatus
from fleet2ban.console.security import (
    SECURITY_HEADERS,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Secrets,
    is_open_path,
    safe_next,
    same_origin,
)
from fleet2ban.contract import (
    AllowEntry,
    ContractError,
    Decision,
    Event,
    allow_decision,
    allow_key,
    normalize_target,
    rfc3339,
    utcnow,
)
from fleet2ban.exceptions import BrokerError, ConfigError, Fleet2banError
from fleet2ban.identity import Verifier
from fleet2ban.kafka import Cluster
from fleet2ban.settings import Settings

log = logging.getLogger(__name__)

REQUESTS = Counter("fleet2ban_console_requests_total", "Console HTTP requests", ["page", "status"])
RENDER = Histogram(
    "fleet2ban_console_render_seconds",
    "Time to build and render a page",
    ["page"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STREAMS = Gauge("fleet2ban_console_streams", "Open server-sent event streams")
WRITES = Counter("fleet2ban_console_writes_total", "Manual decisions from the console", ["action", "result"])
LOGIN_FAILURES = Counter("fleet2ban_console_login_failures_total", "Failed console logins")

MAX_HISTORY = timedelta(days=31)
COALESCE_S = 0.2
"""Least time between two change events on one stream (a flood of records is one refresh per 200 ms)."""
KEEPALIVE_S = 15.0


class Streams:
    """The open event streams, so that a shutdown can end them at once (no graceful-timeout wait)."""

    def __init__(self) -> None:
        self.closing = threading.Event()
        self._wakers: set[Callable[[], None]] = set()
        self._lock = threading.Lock()

    def add(self, waker: Callable[[], None]) -> None:
        with self._lock:
            self._wakers.add(waker)

    def remove(self, waker: Callable[[], None]) -> None:
        with self._lock:
            self._wakers.discard(waker)

    def close(self) -> None:
        self.closing.set()
        with self._lock:
            wakers = list(self._wakers)
        for wake in wakers:
            with contextlib.suppress(RuntimeError):  # its loop is already closed
                wake()


class Readers(Protocol):
    """The on-demand reads and the write a page may trigger (the audit layer; fakes in tests)."""

    def target(self, cluster: Cluster, target: str, now: datetime, jails: list[str]) -> TargetRecords: ...
    def failures(self, cluster: Cluster, ip: str, since: datetime) -> list[Event]: ...
    def decisions(self, cluster: Cluster, since: datetime, until: datetime) -> list[Decision]: ...
    def publish(self, cluster: Cluster, decision: Decision) -> None: ...
    def allow_list(self, cluster: Cluster) -> AllowList: ...
    def publish_allow(
        self, cluster: Cluster, key: str, entry: AllowEntry | None, audit: Decision
    ) -> None: ...


class KafkaReaders:
    """The real :class:`Readers`: :mod:`fleet2ban.audit.reader`, ``.failures`` and ``.writer``;
    ``verifier`` checks the host signatures of the reports read (:mod:`fleet2ban.identity`)."""

    def __init__(self, verifier: Verifier | None = None) -> None:
        self.verifier = verifier

    def target(self, cluster: Cluster, target: str, now: datetime, jails: list[str]) -> TargetRecords:
        return read_target(cluster, target, now, jails=jails, verifier=self.verifier)

    def failures(self, cluster: Cluster, ip: str, since: datetime) -> list[Event]:
        return read_failures(cluster, ip, since)

    def decisions(self, cluster: Cluster, since: datetime, until: datetime) -> list[Decision]:
        return read_decisions(cluster, since, until)

    def publish(self, cluster: Cluster, decision: Decision) -> None:
        publish_decision(cluster, decision)

    def allow_list(self, cluster: Cluster) -> AllowList:
        return read_allow_list(cluster)

    def publish_allow(self, cluster: Cluster, key: str, entry: AllowEntry | None, audit: Decision) -> None:
        publish_allow(cluster, key, entry, audit)


@dataclass(frozen=True)
class ConsoleConfig:
    settings: Settings
    token: str | None = None
    allow_write: bool = False
    trusted_hosts: tuple[str, ...] | None = None
    """When serving loopback without a token: the Host names accepted (DNS-rebinding defence)."""
    ip_window: timedelta = timedelta(hours=6)
    """How far back the IP page reads its failures."""
    tls: bool = False
    """Served over TLS: the session cookie is ``Secure`` and a write's ``Origin`` is ``https://``."""


def banner_text(s: LiveStatus) -> str:
    where = s.bootstrap or "the configured broker"
    if not s.connected and s.error is None:
        return f"Connecting to Kafka at {where}…"
    if not s.connected:
        msg = (s.error or f"Kafka at {where} is unreachable").rstrip(".")
        if where not in msg:
            msg = f"Kafka at {where}: {msg}"
        kept = " Showing the last known state;" if s.caught_up else ""
        return f"{msg} (since {pages.when(s.since)}).{kept} Retrying every few seconds."
    if not s.caught_up:
        return f"Connected to {s.bootstrap}: reading the topics…"
    return ""


def status_json(live: LiveFleet) -> dict[str, Any]:
    s = live.status
    with live.read() as view:
        counts = {"bans": view.bans_seen, "reports": view.reports_seen, "decisions": view.decisions_seen}
    return {
        "connected": s.connected,
        "caught_up": s.caught_up,
        "ok": s.connected and s.caught_up,
        "error": s.error,
        "since": rfc3339(s.since),
        "version": s.version,
        "banner": banner_text(s),
        "seen": counts,
    }


# ------------------------------------------------------------------------------------- middleware


def authenticated(secrets: Secrets, request: Request) -> bool:
    """Whether ``request`` carries a valid session cookie or bearer token (always true without a token)."""
    if not secrets.required:
        return True
    return secrets.check_session(request.cookies.get(SESSION_COOKIE)) or secrets.check_bearer(
        request.headers.get("authorization")
    )


class Guard:
    """Security headers on every response; the token check (and Host check) before any route."""

    def __init__(self, app: ASGIApp, secrets: Secrets, trusted_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.secrets = secrets
        self.trusted = {h.lower() for h in trusted_hosts} if trusted_hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS:
                    headers[k] = v
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        request = Request(scope)
        path = request.url.path
        refusal: Response | None = None
        if self.trusted is not None:
            host = (request.headers.get("host") or "").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.trusted:
                refusal = PlainTextResponse("unexpected Host header\n", 400)
        if refusal is None and not is_open_path(path) and not authenticated(self.secrets, request):
            wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
            if wants_page and path != "/stream":
                nxt = path + (f"?{request.url.query}" if request.url.query else "")
                refusal = RedirectResponse(f"/login?next={quote(nxt, safe='')}", 303)
            else:
                refusal = PlainTextResponse("login required\n", 401)
        if refusal is not None:
            REQUESTS.labels("refused", str(refusal.status_code)).inc()
            await refusal(scope, receive, send_secure)
            return
        await self.app(scope, receive, send_secure)


# ------------------------------------------------------------------------------------------ app


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fleet2ban.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = pages.when
    env.filters["iso"] = lambda t: rfc3339(t) if t else ""
    env.filters["duration"] = format_duration
    env.filters["urlpath"] = lambda s: quote(str(s), safe="/:")
    env.globals["ago"] = pages.ago
    env.globals["until_text"] = pages.until_text
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)  # compile now: the first page view is as fast as the next
    return env


def static_dir() -> Path:
    return Path(str(resources.files("fleet2ban.console") / "static"))


@dataclass
class Console:
    """What the route handlers share, kept in the app's state (``app.state.console``): the configuration,
    the live view, the readers, the session secrets, the open streams and the templates."""

    config: ConsoleConfig
    live: LiveFleet
    readers: Readers
    secrets: Secrets
    streams: Streams
    env: jinja2.Environment
    jails: list[str]
    bans_jails: set[str]
    """The jails whose failures are bans counted (``source: bans``)."""

    @classmethod
    def build(cls, config: ConsoleConfig, live: LiveFleet, readers: Readers | None = None) -> Console:
        return cls(
            config=config,
            live=live,
            readers=readers or KafkaReaders(),
            secrets=Secrets(config.token),
            streams=Streams(),
            env=_templates(),
            jails=[j.name for j in config.settings.jails],
            bans_jails={j.name for j in config.settings.jails if j.source == "bans"},
        )

    def set_session(self, resp: Response, value: str) -> None:
        resp.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=SESSION_TTL_S,
            httponly=True,
            samesite="strict",
            secure=self.config.tls,
            path="/",
        )

    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        secrets, live = self.secrets, self.live
        session = request.cookies.get(SESSION_COOKIE)
        fresh: str | None = None
        if self.config.allow_write and not secrets.required and not secrets.check_session(session):
            # no login on this console: an anonymous session carries this browser's own CSRF token
            session = fresh = secrets.new_session()
        base = {
            "status": live.status,
            "banner": banner_text(live.status),
            "now": utcnow(),
            "allow_write": self.config.allow_write,
            "csrf": secrets.csrf_token(session),
            "auth": secrets.required,
            "jails_configured": self.jails,
            "path": request.url.path,
            "live_url": "",
            "live_on": "",
        }
        base.update(ctx)
        resp = HTMLResponse(self.env.get_template(name).render(base), status)
        if fresh is not None:
            self.set_session(resp, fresh)
        return resp

    def need_cluster(self) -> Cluster:
        cluster = self.live.cluster
        if cluster is None:
            raise BrokerError(banner_text(self.live.status) or "Kafka is not connected yet")
        return cluster

    def form_allowed(self, request: Request, form: Mapping[str, Any]) -> bool:
        """A state-changing form: its CSRF token is this session's, and its Origin (if sent) is us."""
        origin = request.headers.get("origin")
        session = request.cookies.get(SESSION_COOKIE)
        scheme = "https" if self.config.tls else "http"
        return self.secrets.check_csrf(str(form.get("csrf") or ""), session) and (
            origin is None or same_origin(origin, request.headers.get("host"), scheme)
        )

    async def writable_form(self, request: Request, action: str) -> dict[str, str] | Response:
        """The posted form of a write, or the page refusing it (a read-only console; a bad or missing
        form token), counted under ``action``."""
        if not self.config.allow_write:
            WRITES.labels(action, "read-only").inc()
            return self.render(request, "error.html", 403, title="Read-only", message=READ_ONLY)
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not self.form_allowed(request, form):
            WRITES.labels(action, "csrf").inc()
            return self.render(
                request, "error.html", 403, title="Refused", message="Bad or missing form token."
            )
        return form

    def ban_page(self, request: Request) -> pages.BanPage:
        q = pages.BanQuery.from_params(request.query_params)
        with self.live.read() as view:
            return pages.ban_page(view, utcnow(), q)

    def fleet_page(self) -> pages.FleetPage:
        with self.live.read() as view:
            return pages.fleet_page(view, utcnow())

    async def allow_page(
        self, request: Request, error: str = "", status: int = 200, form: Mapping[str, str] | None = None
    ) -> Response:
        cluster = self.need_cluster()
        now = utcnow()
        allow = await run_in_threadpool(self.readers.allow_list, cluster)
        return self.render(
            request,
            "allow.html",
            status,
            title="Allow-list",
            entries=allow.active(now),
            error=error,
            form=form or {},
            written=request.query_params.get("written", ""),
        )


def console_of(request: Request) -> Console:
    """The :class:`Console` of the app serving ``request``."""
    console: Console = request.app.state.console
    return console


Handler = Callable[[Request], Awaitable[Response]]


def timed(page: str) -> Callable[[Handler], Handler]:
    """Time and count a page's handler under ``page``; a bad query or an unreachable Kafka is an error
    page (400 or 503), not an exception."""

    def deco(fn: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                resp = await fn(request)
            except BadQueryError as exc:
                resp = console_of(request).render(
                    request, "error.html", 400, title="Bad request", message=str(exc)
                )
            except (BrokerError, ConfigError, ContractError) as exc:
                status = 503 if isinstance(exc, BrokerError) else 400
                resp = console_of(request).render(
                    request, "error.html", status, title="Cannot show this page", message=str(exc)
                )
            RENDER.labels(page).observe(time.perf_counter() - t0)
            REQUESTS.labels(page, str(resp.status_code)).inc()
            return resp

        return wrapper

    return deco


# ------------------------------------------------------------------------------------------ pages


async def index(request: Request) -> Response:
    return RedirectResponse("/bans", 303)


async def lookup(request: Request) -> Response:
    target = (request.query_params.get("target") or "").strip()
    return RedirectResponse(f"/ip/{quote(target, safe='/:')}" if target else "/bans", 303)


@timed("bans")
async def bans(request: Request) -> Response:
    c = console_of(request)
    page = await run_in_threadpool(c.ban_page, request)
    return c.render(
        request,
        "bans.html",
        p=page,
        live_url="/bans/live",
        live_on="bans,reports,decisions",
        title="Bans in force",
    )


@timed("bans_live")
async def bans_live(request: Request) -> Response:
    c = console_of(request)
    page = await run_in_threadpool(c.ban_page, request)
    return c.render(request, "_bans_live.html", p=page)


@timed("fleet")
async def fleet(request: Request) -> Response:
    c = console_of(request)
    page = await run_in_threadpool(c.fleet_page)
    return c.render(request, "fleet.html", f=page, live_url="/fleet/live", live_on="reports", title="Fleet")


@timed("fleet_live")
async def fleet_live(request: Request) -> Response:
    c = console_of(request)
    page = await run_in_threadpool(c.fleet_page)
    return c.render(request, "_fleet_live.html", f=page)


@timed("ip")
async def ip(request: Request) -> Response:
    c = console_of(request)
    raw = request.path_params["target"]
    try:
        target = normalize_target(raw)
    except ContractError as exc:
        raise BadQueryError(str(exc)) from None
    cluster = c.need_cluster()
    now = utcnow()
    rd, window = c.readers, c.config.ip_window

    def load() -> pages.IpPage:
        recs = rd.target(cluster, target, now, c.jails)
        events = rd.failures(cluster, target, now - window)
        return pages.ip_page(target, recs.decisions, recs.reports, recs.bans, events, now, window)

    page = await run_in_threadpool(load)
    return c.render(
        request,
        "ip.html",
        ip=page,
        title=target,
        written=request.query_params.get("written", ""),
        jail_default=c.jails[0] if c.jails else "",
        bans_jails=c.bans_jails,
    )


@timed("history")
async def history(request: Request) -> Response:
    c = console_of(request)
    now = utcnow()
    qp = request.query_params
    since_text = (qp.get("since") or "1h").strip()
    until_text = (qp.get("until") or "now").strip()
    try:
        since, until = parse_when(since_text, now), parse_when(until_text, now)
    except BadTimeError as exc:
        raise BadQueryError(str(exc)) from None
    if until < since:
        raise BadQueryError("until is before since")
    if until - since > MAX_HISTORY:
        raise BadQueryError(f"the range is longer than {MAX_HISTORY.days} days")
    q = pages.BanQuery.from_params(qp)
    cluster = c.need_cluster()
    decisions = (
        await run_in_threadpool(c.readers.decisions, cluster, since, min(until, now)) if since <= now else []
    )
    page = pages.history_page(decisions, since, until, q.ban_filter())
    return c.render(
        request,
        "history.html",
        h=page,
        q=q,
        since_text=since_text,
        until_text=until_text,
        title="History",
    )


# ----------------------------------------------------------------------------------------- stream


async def stream(request: Request) -> Response:
    c = console_of(request)
    live, streams = c.live, c.streams
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def waker() -> None:
        loop.call_soon_threadsafe(wake.set)

    def on_change(_status: LiveStatus) -> None:
        waker()

    def event(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    async def gen() -> AsyncIterator[str]:
        unsubscribe = live.subscribe(on_change)
        streams.add(waker)
        STREAMS.inc()
        try:
            yield "retry: 2000\n\n"
            yield event("change", status_json(live))
            while not streams.closing.is_set():
                try:
                    await asyncio.wait_for(wake.wait(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                wake.clear()
                if streams.closing.is_set():
                    break
                yield event("change", status_json(live))
                await asyncio.sleep(COALESCE_S)
        finally:
            unsubscribe()
            streams.remove(waker)
            STREAMS.dec()

    return StreamingResponse(
        gen(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def status_api(request: Request) -> Response:
    return JSONResponse(status_json(console_of(request).live))


# ------------------------------------------------------------------------------------------ login


async def login(request: Request) -> Response:
    c = console_of(request)
    nxt = safe_next(request.query_params.get("next"))
    if not c.secrets.required:
        return RedirectResponse(nxt, 303)
    if request.method == "GET":
        return c.render(request, "login.html", next=nxt, error="", title="Log in")
    form = await request.form()
    nxt = safe_next(str(form.get("next") or ""))
    if not c.secrets.check_token(str(form.get("token") or "")):
        LOGIN_FAILURES.inc()
        log.warning("console: failed login from %s", request.client.host if request.client else "?")
        await asyncio.sleep(0.5)  # slows guessing; the token is long anyway
        return c.render(request, "login.html", 401, next=nxt, error="Wrong token.", title="Log in")
    resp = RedirectResponse(nxt, 303)
    c.set_session(resp, c.secrets.new_session())
    return resp


async def logout(request: Request) -> Response:
    c = console_of(request)
    form = await request.form()
    if not c.form_allowed(request, form):
        return c.render(request, "error.html", 403, title="Refused", message="Bad or missing form token.")
    c.secrets.end_session(request.cookies.get(SESSION_COOKIE))
    resp = RedirectResponse("/login", 303)
    resp.delete_cookie(SESSION_COOKIE, path="/", secure=c.config.tls, httponly=True, samesite="strict")
    return resp


# ----------------------------------------------------------------------------------------- writes


async def manual(request: Request) -> Response:
    c = console_of(request)
    if not c.config.allow_write:
        return c.render(request, "error.html", 403, title="Read-only", message=READ_ONLY)
    qp = request.query_params
    return c.render(
        request,
        "manual.html",
        title="Manual ban",
        error="",
        form={
            "target": qp.get("target", ""),
            "jail": qp.get("jail", ""),
            "action": qp.get("action", "ban"),
        },
    )


def manual_decision(
    settings: Settings, action: str, form: Mapping[str, str], by: str, now: datetime
) -> Decision:
    """The manual ban or unban a posted form asks for (raises when it is not a valid one)."""
    if not by:
        raise ConfigError("give your name (operator): every manual decision records who made it")
    if action == "ban":
        dur_text = form.get("duration", "").strip()
        return manual_ban(
            settings,
            form.get("target", ""),
            jail=form.get("jail") or None,
            duration=parse_duration(dur_text) if dur_text else None,
            permanent=form.get("permanent") == "on",
            reason=form.get("reason", ""),
            by=by,
            now=now,
        )
    return manual_unban(
        settings,
        form.get("target", ""),
        jail=form.get("jail") or None,
        reason=form.get("reason", ""),
        by=by,
        now=now,
    )


async def write(request: Request) -> Response:
    c = console_of(request)
    action = "ban" if request.url.path.endswith("/add") else "unban"
    form = await c.writable_form(request, action)
    if isinstance(form, Response):
        return form
    by = form.get("by", "").strip()
    now = utcnow()
    try:
        decision = manual_decision(c.config.settings, action, form, by, now)
        cluster = c.need_cluster()
        if decision.action == "ban":
            check_not_allowed(decision, await run_in_threadpool(c.readers.allow_list, cluster), now)
        await run_in_threadpool(c.readers.publish, cluster, decision)
    except (RailRefusedError, ConfigError, BrokerError) as exc:
        WRITES.labels(action, "refused").inc()
        return c.render(
            request,
            "manual.html",
            400 if not isinstance(exc, BrokerError) else 503,
            title="Manual ban",
            error=str(exc),
            form={**form, "action": action},
        )
    WRITES.labels(action, "ok").inc()
    log.info(
        "console: manual %s of %s in jail %s by %s from %s (decision %s): %s",
        action,
        decision.ip,
        decision.jail,
        decision.by,
        request.client.host if request.client else "?",
        decision.id,
        decision.reason,
    )
    return RedirectResponse(f"/ip/{quote(decision.ip, safe='/:')}?written={quote(decision.id)}", 303)


# ------------------------------------------------------------------------------------- allow-list


@timed("allow")
async def allow(request: Request) -> Response:
    return await console_of(request).allow_page(request)


async def allow_change(
    c: Console, cluster: Cluster, action: str, form: Mapping[str, str], by: str, now: datetime
) -> tuple[str, AllowEntry | None, AllowEntry, Decision]:
    """The allow-list change a posted form asks for: (key, the entry to write or None to remove it, the
    entry added or removed, the audit decision); raises when it is not a valid one."""
    names = [j.name for j in c.config.settings.jails]
    if action == "allow":
        ttl_text = form.get("ttl", "").strip()
        entry = new_entry(
            form.get("network", ""),
            jail=form.get("jail") or None,
            ttl=parse_duration(ttl_text) if ttl_text else None,
            reason=form.get("reason"),
            by=by,
            now=now,
            jails=names,
        )
        return entry.key(), entry, entry, allow_decision(entry, "allow")
    try:
        net = normalize_target(form.get("network", ""))
    except ContractError as exc:
        raise ConfigError(str(exc)) from None
    key = allow_key(jail_name(form.get("jail") or None, names), net)
    current = (await run_in_threadpool(c.readers.allow_list, cluster)).entries.get(key)
    if current is None:
        raise ConfigError(f"no allow-list entry {key}")
    reason = form.get("reason", "").strip() or None
    return (
        key,
        None,
        current,
        allow_decision(current, "unallow", id=new_entry_id(), at=now, by=by, reason=reason),
    )


@timed("allow_write")
async def allow_write(request: Request) -> Response:
    c = console_of(request)
    action = "allow" if request.url.path.endswith("/add") else "unallow"
    form = await c.writable_form(request, action)
    if isinstance(form, Response):
        return form
    by = form.get("by", "").strip()
    now = utcnow()
    try:
        if not by:
            raise ConfigError("give your name (operator): every allow-list change records who made it")
        cluster = c.need_cluster()
        key, written, entry, audit = await allow_change(c, cluster, action, form, by, now)
        await run_in_threadpool(c.readers.publish_allow, cluster, key, written, audit)
    except (ConfigError, BadTimeError, BrokerError) as exc:
        WRITES.labels(action, "refused").inc()
        status = 503 if isinstance(exc, BrokerError) else 400
        return await c.allow_page(request, str(exc), status, form)
    WRITES.labels(action, "ok").inc()
    log.info(
        "console: %s %s from %s (decision %s)",
        "added" if action == "allow" else f"removed by {by}:",
        entry_text(entry),
        request.client.host if request.client else "?",
        audit.id,
    )
    return RedirectResponse(f"/allow?written={quote(audit.id)}", 303)


# ----------------------------------------------------------------------------------------- health


async def healthz(request: Request) -> Response:
    """Open (probes carry no token); without the token it says only whether the console is ok: the
    broker's address and Kafka's error text are for operators."""
    c = console_of(request)
    s = status_json(c.live)
    body = s if authenticated(c.secrets, request) else {"ok": s["ok"]}
    return JSONResponse(body, 200 if s["ok"] else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def not_found(request: Request, exc: Exception) -> Response:
    return console_of(request).render(request, "error.html", 404, title="Not found", message="No such page.")


# -------------------------------------------------------------------------------------------- app


def create_app(config: ConsoleConfig, live: LiveFleet, readers: Readers | None = None) -> Starlette:
    """The console app over a started (or starting) :class:`LiveFleet`."""
    console = Console.build(config, live, readers)
    routes = [
        Route("/", index),
        Route("/bans", bans),
        Route("/bans/live", bans_live),
        Route("/fleet", fleet),
        Route("/fleet/live", fleet_live),
        Route("/ip", lookup),
        Route("/ip/{target:path}", ip),
        Route("/history", history),
        Route("/stream", stream),
        Route("/api/status", status_api),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/manual", manual),
        Route("/bans/add", write, methods=["POST"]),
        Route("/bans/remove", write, methods=["POST"]),
        Route("/allow", allow),
        Route("/allow/add", allow_write, methods=["POST"]),
        Route("/allow/remove", allow_write, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=static_dir()), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found},
        middleware=[Middleware(Guard, secrets=console.secrets, trusted_hosts=config.trusted_hosts)],
    )
    app.state.console = console
    app.state.streams = console.streams
    return app


def close_streams(app: Starlette) -> None:
    """End every open event stream (call before stopping the server)."""
    streams = getattr(app.state, "streams", None)
    if isinstance(streams, Streams):
        streams.close()


READ_ONLY = "This console is read-only. Start it with --allow-write to ban and unban from the page."

__all__ = [
    "ConsoleConfig",
    "Fleet2banError",
    "KafkaReaders",
    "Readers",
    "banner_text",
    "create_app",
]
