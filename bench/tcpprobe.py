"""A TCP probe with millisecond resolution: when does a host start refusing an address's connections?

Runs inside a client's network namespace (``ip netns exec NS python -m bench.tcpprobe``) and takes one
JSON command per line on stdin::

    {"src": "10.200.0.10", "targets": ["10.200.0.1", ...], "port": 9007, "interval_ms": 3,
     "fail_after_ms": 25, "confirm": 3, "max_s": 10}

It answers ``{"started": T}`` at once, then starts a real TCP connection attempt from ``src`` to each
target every ``interval_ms`` (non-blocking ``connect()`` bound to ``src``; a connected socket is closed at
once with RST). An attempt *fails* when it gets an error (REJECT) or is not connected ``fail_after_ms``
after it was sent (DROP: the SYN vanished; on a bridge the answer takes well under a millisecond). A
target counts as blocked once ``confirm`` consecutive attempts failed after its last success; its
``first_fail`` is the send time of the first of them, so the resolution is ``interval_ms`` plus scheduling
jitter, not the failure timeout. When every target is blocked (or after ``max_s``) it answers::

    {"done": T, "hosts": {"10.200.0.1": {"first_fail": T, "last_ok": T, "ok": N, "fail": N}, ...}}

Times are wall-clock seconds (``time.time()``), comparable with Kafka record timestamps on the machine.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LINGER_RST = struct.pack("ii", 1, 0)


@dataclass
class Attempt:
    sent: float
    sock: socket.socket | None
    ok: bool | None = None  # None: unresolved


@dataclass
class Target:
    addr: str
    attempts: list[Attempt] = field(default_factory=list)
    blocked: bool = False
    next_due: float = 0.0

    def verdict(self, confirm: int) -> bool:
        """Blocked: ``confirm`` resolved failures in a row after the last success, none unresolved before."""
        run = 0
        for a in reversed(self.attempts):
            if a.ok is True:
                break
            if a.ok is False:
                run += 1
            else:
                run = 0  # an unresolved attempt after resolved failures: keep waiting for it
        return run >= confirm and any(a.ok is True for a in self.attempts)

    def summary(self) -> dict[str, Any]:
        last_ok = max((a.sent for a in self.attempts if a.ok is True), default=None)
        first_fail = None
        for a in self.attempts:
            if a.ok is False and (last_ok is None or a.sent > last_ok):
                first_fail = a.sent
                break
        return {
            "first_fail": first_fail if self.blocked else None,
            "last_ok": last_ok,
            "ok": sum(1 for a in self.attempts if a.ok is True),
            "fail": sum(1 for a in self.attempts if a.ok is False),
        }


def _launch(src: str, dst: str, port: int, sel: selectors.BaseSelector, t: Target) -> None:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    sock.bind((src, 0))
    sent = time.time()
    rc = sock.connect_ex((dst, port))
    att = Attempt(sent, sock)
    t.attempts.append(att)
    if rc == 0:
        att.ok = True
        _close(att)
    elif rc in (errno.EINPROGRESS, errno.EAGAIN):
        sel.register(sock, selectors.EVENT_WRITE, (t, att))
    else:
        att.ok = False
        _close(att)


def _close(att: Attempt) -> None:
    if att.sock is not None:
        att.sock.close()
        att.sock = None


def probe(cmd: dict[str, Any]) -> dict[str, Any]:
    src: str = cmd["src"]
    port = int(cmd.get("port", 9007))
    interval = float(cmd.get("interval_ms", 3)) / 1000.0
    fail_after = float(cmd.get("fail_after_ms", 25)) / 1000.0
    confirm = int(cmd.get("confirm", 3))
    deadline = time.time() + float(cmd.get("max_s", 10.0))
    targets = [Target(a) for a in cmd["targets"]]
    sel = selectors.DefaultSelector()
    start = time.time()
    for i, t in enumerate(targets):  # stagger the targets within one interval
        t.next_due = start + interval * i / max(1, len(targets))
    try:
        while True:
            now = time.time()
            if now > deadline or all(t.blocked for t in targets):
                break
            for t in targets:
                if not t.blocked and now >= t.next_due:
                    _launch(src, t.addr, port, sel, t)
                    t.next_due = max(t.next_due + interval, now + interval / 2)
            wait = min((t.next_due for t in targets if not t.blocked), default=now) - time.time()
            for key, _ in sel.select(max(0.0, wait)):
                _tgt, att = key.data
                sel.unregister(key.fileobj)
                att.ok = att.sock is not None and att.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                _close(att)
            now = time.time()
            for t in targets:
                for a in t.attempts:
                    if a.ok is None and now - a.sent >= fail_after:
                        if a.sock is not None:
                            sel.unregister(a.sock)
                        a.ok = False
                        _close(a)
                if not t.blocked and t.verdict(confirm):
                    t.blocked = True
    finally:
        for t in targets:
            for a in t.attempts:
                if a.sock is not None:
                    sel.unregister(a.sock)
                    _close(a)
        sel.close()
    return {"done": time.time(), "hosts": {t.addr: t.summary() for t in targets}}


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        print(json.dumps({"started": time.time()}), flush=True)
        print(json.dumps(probe(cmd)), flush=True)
    return 0


class ProbeClient:
    """The caller's side: a probe process inside a namespace, one trial at a time."""

    def __init__(self, netns: str | None) -> None:
        import subprocess

        argv = [sys.executable, "-m", "bench.tcpprobe"]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        root = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=root
        )

    def start(self, src: str, targets: list[str], **opts: Any) -> float:
        """Start probing; returns the probe's start time once it runs."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"src": src, "targets": targets, **opts}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the TCP probe died")
        return float(json.loads(line)["started"])

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the TCP probe died")
        out: dict[str, Any] = json.loads(line)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
