"""What every sub-command shares: the global options, settings loading, error handling, the broker."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer

from fleet2ban.exceptions import BrokerError, Fleet2banError
from fleet2ban.kafka import Cluster, check_connection, ensure_topics_quietly, resolve
from fleet2ban.kafka.local import LocalKafka
from fleet2ban.kafka.security import SecureSpec
from fleet2ban.logs import setup_logging
from fleet2ban.metrics import MetricsServer
from fleet2ban.settings import Settings, load_settings

log = logging.getLogger("fleet2ban.cli")

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class GlobalOptions:
    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def global_options(ctx: typer.Context) -> GlobalOptions:
    obj = ctx.find_root().obj
    if not isinstance(obj, GlobalOptions):
        obj = GlobalOptions()
        ctx.find_root().obj = obj
    return obj


def settings_for(ctx: typer.Context, **overrides: Any) -> Settings:
    """Settings from file + env + the global flags + this command's flags (dotted names)."""
    opts = global_options(ctx)
    settings = load_settings(opts.config, {**opts.overrides, **overrides})
    setup_logging(settings.log.level, settings.log.format)
    return settings


def fail(message: str, code: int = EXIT_FINDINGS) -> typer.Exit:
    typer.echo(f"fleet2ban: {message}", err=True)
    return typer.Exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn fleet2ban's own errors into one clear line and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Fleet2banError as exc:
            raise fail(f"error: {exc}", exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def sigterm_as_interrupt() -> None:
    """SIGTERM (kubelet, systemd, the dev supervisor) stops a component like Ctrl-C does."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


@contextlib.contextmanager
def cluster_for(
    settings: Settings,
    *,
    create_topics: bool = True,
    wait: bool = False,
    uses: tuple[str, ...] | None = None,
) -> Iterator[Cluster]:
    """The configured Kafka, or a local Apache Kafka started for this process when none is configured.

    ``uses``: the topics (suffixes: ``events``, ``bans``...) the command uses: only those are checked
    (and created when missing, where the principal may), so a role with only its own ACLs starts.
    ``wait``: a long-running component started while Kafka is unreachable, or while its principal lacks
    an ACL, keeps trying (with backoff, one warning line every 30 s naming what is missing; /healthz
    says healthy, waiting) instead of exiting; Ctrl-C/SIGTERM stops it. Wrong credentials and TLS
    failures are configuration errors: one line naming the setting, exit 2.
    """
    broker: LocalKafka | None = None
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        broker = local_kafka_for(settings).start()
        bootstrap = broker.bootstrap
        log.warning(
            "no kafka.bootstrap_servers set: started a local Apache Kafka at %s (stops with this command); "
            "point other components at it with FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS=%s",
            bootstrap,
            bootstrap,
        )
    try:
        cluster = (
            _connect(settings, bootstrap, create_topics, uses)
            if not wait
            else _connect_waiting(settings, bootstrap, create_topics, uses)
        )
        yield cluster
    finally:
        if broker is not None:
            broker.stop()


def local_kafka_for(settings: Settings, security: SecureSpec | None = None) -> LocalKafka:
    """The local Apache Kafka the ``broker`` settings describe (not started); ``security``: SASL_SSL
    and ACLs (``fleet2ban broker --secure``)."""
    b = settings.broker
    return LocalKafka(
        b.nodes,
        port=b.port,
        data_dir=b.data_dir,
        version=b.version,
        heap_mb=b.heap_mb,
        cache=b.cache_dir,
        security=security,
    )


def _connect(
    settings: Settings, bootstrap: str, create_topics: bool, uses: tuple[str, ...] | None = None
) -> Cluster:
    cluster = resolve(settings.kafka, bootstrap)
    if create_topics:
        ensure_topics_quietly(cluster, uses=uses)
    else:
        check_connection(cluster)
    return cluster


def _connect_waiting(
    settings: Settings, bootstrap: str, create_topics: bool, uses: tuple[str, ...] | None = None
) -> Cluster:
    delay, last_warned, attempts = 0.5, 0.0, 0
    waiting: dict[str, str] = {}
    server: MetricsServer | None = None
    try:
        while True:
            try:
                return _connect(settings, bootstrap, create_topics, uses)
            except BrokerError as exc:
                attempts += 1
                waiting["waiting"] = str(exc)
                if server is None and settings.metrics.port:
                    # healthy (the process is fine, a restart would not help) but waiting: /healthz says why
                    with contextlib.suppress(OSError):
                        server = MetricsServer(
                            settings.metrics.port, settings.metrics.bind, lambda: (True, dict(waiting))
                        ).start()
                now = time.monotonic()
                if now - last_warned >= 30.0:
                    log.warning(
                        "waiting for Kafka (attempt %d, retrying every %.0fs at most): %s", attempts, 10, exc
                    )
                    last_warned = now
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
    finally:
        if server is not None:
            server.stop()


def echo_json_line(data: bytes | str) -> None:
    sys.stdout.write(data.decode() if isinstance(data, bytes) else data)
    sys.stdout.write("\n")
