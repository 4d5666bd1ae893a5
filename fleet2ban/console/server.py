"""Serving the console: uvicorn in the foreground (the CLI) or in a thread (tests, the benchmark)."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from fleet2ban.audit.view import FleetView
from fleet2ban.console.app import ConsoleConfig, KafkaReaders, Readers, close_streams, create_app
from fleet2ban.console.exceptions import ConsoleError
from fleet2ban.console.live import LiveFleet
from fleet2ban.console.security import TlsFiles, is_loopback, require_token_for
from fleet2ban.identity import Verifier
from fleet2ban.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class Windows:
    reports: timedelta = timedelta(hours=1)
    decisions: timedelta = timedelta(hours=1)
    ip: timedelta = timedelta(hours=6)


def build(
    settings: Settings,
    kafka: KafkaSettings,
    *,
    host: str,
    token: str | None,
    allow_write: bool,
    windows: Windows = Windows(),
    readers: Readers | None = None,
    tls: TlsFiles | None = None,
) -> tuple[Starlette, LiveFleet]:
    """The app and its (not yet started) follower. Refuses a non-loopback ``host`` without a token and
    TLS."""
    require_token_for(host, token, tls is not None)
    verifier = Verifier.from_settings(settings.identity)
    live = LiveFleet(
        kafka,
        reports_window=windows.reports,
        decisions_window=windows.decisions,
        view_factory=functools.partial(FleetView, verifier=verifier),
    )
    trusted = LOOPBACK_NAMES if token is None and is_loopback(host) else None
    config = ConsoleConfig(
        settings=settings,
        token=token,
        allow_write=allow_write,
        trusted_hosts=trusted,
        ip_window=windows.ip,
        tls=tls is not None,
    )
    return create_app(config, live, readers or KafkaReaders(verifier)), live


def _config(
    app: Starlette, host: str, port: int, log_level: str, tls: TlsFiles | None = None
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        server_header=False,
        proxy_headers=False,
        ssl_certfile=str(tls.cert) if tls is not None else None,
        ssl_keyfile=str(tls.key) if tls is not None else None,
    )


class _Server(uvicorn.Server):
    """uvicorn, ending the event streams first on SIGINT/SIGTERM (else shutdown waits for them)."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        close_streams(self._app)
        super().handle_exit(sig, frame)


def serve(app: Starlette, host: str, port: int, log_level: str = "info", tls: TlsFiles | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles both in the main thread)."""
    _Server(_config(app, host, port, log_level, tls), app).run()


class ServerThread:
    """uvicorn in a daemon thread: ``with ServerThread(app, "127.0.0.1", port) as s: ... s.url``."""

    def __init__(self, app: Starlette, host: str, port: int, log_level: str = "warning") -> None:
        self.host = host
        self.port = port
        self.app = app
        self.server = _Server(_config(app, host, port, log_level), app)
        self._thread = threading.Thread(target=self.server.run, name="console-http", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConsoleError(f"the console did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        close_streams(self.app)
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(
    settings: Settings,
    kafka: KafkaSettings,
    *,
    host: str = "127.0.0.1",
    port: int,
    token: str | None = None,
    allow_write: bool = False,
    windows: Windows = Windows(),
) -> Iterator[tuple[ServerThread, LiveFleet]]:
    """A whole console (follower + HTTP server in threads), stopped on exit."""
    app, live = build(settings, kafka, host=host, token=token, allow_write=allow_write, windows=windows)
    live.start()
    try:
        with ServerThread(app, host, port) as server:
            yield server, live
    finally:
        live.stop()
