"""Child processes of the dev fleet: start (optionally inside a network namespace), watch, kill, restart.

Every child is its own process, as in production. Each gets ``PR_SET_PDEATHSIG`` so that it dies with the
supervisor even when the supervisor is killed with ``kill -9``, runs in its own process group (so a kill
reaches whatever it started), and logs to its own file under the fleet's work directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:  # pragma: no cover - runs between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()


def python_module(module: str, *args: str) -> list[str]:
    """argv running ``python -m module`` with this interpreter (the fleet's venv)."""
    return [sys.executable, "-m", module, *args]


def fleet2ban_cmd(*args: str) -> list[str]:
    """argv running the ``fleet2ban`` CLI with this interpreter."""
    return python_module("fleet2ban.cli.main", *args)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    log_path: Path
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.netns, *self.argv] if self.netns else self.argv
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                preexec_fn=_child_setup,  # noqa: PLW1509
            )
        log.debug("started %s pid=%s ns=%s", self.name, self.proc.pid, self.netns)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(timeout)

    def kill9(self) -> None:
        """``kill -9`` the child and whatever it started (a crash, for the recovery tests)."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    """Starts children in order and stops them in reverse; restarts or reports those that die."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: dict[str, Child] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        child = Child(name, list(argv), self.workdir / "logs" / f"{name}.log", netns, dict(env or {}))
        self.children[name] = child
        child.start()
        return child

    def restart(self, name: str) -> Child:
        child = self.children[name]
        child.stop()
        child.restarts += 1
        child.start()
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children.values() if c.proc is not None and not c.alive()]

    def stop_all(self) -> None:
        for child in reversed(list(self.children.values())):
            try:
                child.stop()
            except Exception as exc:  # stopping the rest matters more than this one
                log.warning("stopping %s: %s", child.name, exc)
