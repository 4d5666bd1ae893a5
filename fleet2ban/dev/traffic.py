"""Clients for the simulated AMPS hosts: well-behaved ones and misbehaving ones.

- ``legit``: logs on with the right password and a unique name, holds briefly, disconnects;
- ``badauth``: keeps logging on with a wrong password (AMPS logs ``auth``);
- ``nameclash``: keeps logging on under a name that another of its connections holds (``name in use``);
- ``spreader``: wrong passwords spread round-robin over every host, so that no host alone sees maxretry
  failures within findtime: only the fleet-wide view catches it.

Run inside a client's namespace: ``python -m fleet2ban.dev.traffic --mode spreader --targets A,B,C``.
Each attempt prints one JSON line (target, outcome, elapsed) so a caller can observe bans as failures.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import socket
import struct
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from fleet2ban.dev.amps_sim import PASSWORD

Outcome = Literal["ok", "auth", "name in use", "refused", "timeout", "error"]
MODES = ("legit", "badauth", "nameclash", "spreader")


@dataclass(frozen=True)
class Attempt:
    target: str
    outcome: Outcome
    elapsed_ms: float


def _connect(target: str, port: int, timeout: float, source: str | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source:
        sock.bind((source, 0))
    # close with RST: a benchmark-size run must not exhaust ephemeral ports in TIME_WAIT
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.connect((target, port))
    return sock


def logon(
    target: str,
    name: str,
    password: str,
    port: int = 9007,
    timeout: float = 1.0,
    hold_s: float = 0.0,
    source: str | None = None,
) -> Attempt:
    """One logon attempt; ``refused``/``timeout`` mean the connection itself did not get through."""
    start = time.perf_counter()
    outcome: Outcome
    try:
        with contextlib.closing(_connect(target, port, timeout, source)) as sock:
            sock.sendall(f"logon {name} {password}\n".encode())
            reply = sock.recv(256).decode("utf-8", "replace").strip()
            if reply == "ok":
                outcome = "ok"
                if hold_s:
                    time.sleep(hold_s)
            elif reply == "fail auth":
                outcome = "auth"
            elif reply == "fail name in use":
                outcome = "name in use"
            else:
                outcome = "error"
    except ConnectionRefusedError:
        outcome = "refused"
    except TimeoutError:
        outcome = "timeout"
    except OSError:
        outcome = "error"
    return Attempt(target, outcome, (time.perf_counter() - start) * 1000)


def can_connect(target: str, port: int = 9007, timeout: float = 0.5, source: str | None = None) -> bool:
    """Whether a TCP connection to ``target:port`` is established (a ban drops or rejects it)."""
    try:
        with contextlib.closing(_connect(target, port, timeout, source)):
            return True
    except OSError:
        return False


def attempts(
    mode: str,
    targets: list[str],
    count: int,
    port: int = 9007,
    timeout: float = 1.0,
    name: str | None = None,
    source: str | None = None,
) -> Iterator[Attempt]:
    """``count`` attempts of one kind of client, round-robin over ``targets``."""
    base = name or f"{mode}-{uuid.uuid4().hex[:6]}"
    cycle = itertools.cycle(targets)
    for i in range(count):
        target = next(cycle)
        if mode == "legit":
            yield logon(target, f"{base}-{i}", PASSWORD, port, timeout, hold_s=0.01, source=source)
        elif mode in ("badauth", "spreader"):
            yield logon(target, base, "wrong-password", port, timeout, source=source)
        elif mode == "nameclash":
            holder: socket.socket | None = None
            try:
                holder = _connect(target, port, timeout, source)
                holder.sendall(f"logon {base} {PASSWORD}\n".encode())
                holder.recv(16)
            except OSError:
                pass
            yield logon(target, base, PASSWORD, port, timeout, source=source)
            if holder is not None:
                holder.close()
        else:
            raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--targets", required=True, help="comma-separated addresses of the AMPS hosts")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0.0, help="attempts per second (0 = as fast as possible)")
    ap.add_argument("--port", type=int, default=9007)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--name", default=None, help="client name to use")
    ap.add_argument("--source", default=None, help="source address to connect from")
    args = ap.parse_args(argv)
    gap = 1.0 / args.rate if args.rate > 0 else 0.0
    next_at = time.monotonic()
    for a in attempts(
        args.mode, args.targets.split(","), args.count, args.port, args.timeout, args.name, args.source
    ):
        sys.stdout.write(json.dumps({"target": a.target, "outcome": a.outcome, "ms": round(a.elapsed_ms, 2)}))
        sys.stdout.write("\n")
        sys.stdout.flush()
        if gap:
            next_at += gap
            time.sleep(max(0.0, next_at - time.monotonic()))


if __name__ == "__main__":
    main()
