"""A fleet of network namespaces on one bridge, for tests, benchmarks and ``fleet2ban dev``.

Everything here needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and the ``ip`` command (iproute2).

Layout made by :class:`Fleet`: one "switch" namespace holding a bridge ``br0``; each host is its own
namespace with ``lo`` up and one veth ``eth0`` plugged into the bridge, with an IPv4 and an IPv6 address
(``nodad``, so IPv6 is usable at once). Nothing is created in the root namespace: the veth pairs are made
inside the switch namespace, so concurrent fleets never collide on interface names, and address ranges
may overlap between fleets because each bridge is private.

Names are unique per process: ``<tag><pid>x<4 hex>-<label>``. :meth:`Fleet.teardown` (also run by the
context manager and at interpreter exit) stops the processes the fleet started, kills whatever still
runs inside its namespaces, and deletes them (which removes their veths, bridge, iptables rules and
ipsets). :func:`cleanup_stale` removes namespaces left by processes that died before tearing down.

Reaching a service of the root namespace from inside a host: a process in a namespace cannot reach the
root namespace's loopback. :meth:`Fleet.forward` opens a listening socket *inside* the host namespace on
the same address and port (``127.0.0.1:PORT``) and relays every connection to the root namespace's
service. So a Kafka client inside the host uses the same bootstrap as everyone else, and the broker's
advertised ``127.0.0.1:PORT`` works there too. This relies on a socket keeping the namespace of the
thread that created it: :func:`entered` switches only the calling thread, and back.

Small probes for tests: :class:`TcpListener` (accepts and closes, counting peers) and
:func:`try_connect` (one TCP connect from inside a namespace), both in-process via :func:`entered`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_NAME_RE = re.compile(r"^(?P<tag>[a-z]+)(?P<pid>\d+)x[0-9a-f]{4}-[A-Za-z0-9_.-]+$")

_LIBC: dict[str, ctypes.CDLL] = {}


class NetnsError(RuntimeError):
    """A namespace operation failed (with the command's own error text)."""


# ------------------------------------------------------------------------------------------ basics


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is missing"
    return None


def ip(*args: str, check: bool = True, input: str | None = None) -> str:
    """Run ``ip ARGS`` and return its stdout; raise :class:`NetnsError` with its stderr on failure."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, input=input, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def list_namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def create_namespace(name: str) -> None:
    """Create a namespace with ``lo`` up and IPv6 duplicate address detection off."""
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")
    for key in ("all", "default"):
        path = f"net.ipv6.conf.{key}.accept_dad=0"
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", path], capture_output=True, check=False)


def delete_namespace(name: str) -> None:
    """Kill every process still inside ``name`` (all of them were started in it by us), then delete it."""
    if not (NETNS_DIR / name).exists():
        return
    pids = [int(p) for p in ip("netns", "pids", name, check=False).split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    ip("netns", "del", name, check=False)


def _wait_link_up(ns: str, dev: str, timeout: float = 5.0) -> None:
    """Wait until ``dev`` in ``ns`` has its carrier (both veth ends up), so the first packets pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "LOWER_UP" in ip("-n", ns, "-o", "link", "show", dev, check=False):
            return
        time.sleep(0.01)
    raise NetnsError(f"{dev} in {ns} did not come up within {timeout:.0f}s")


def _setns(fd: int) -> None:
    libc = _LIBC.get("c")
    if libc is None:
        libc = _LIBC["c"] = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with the *calling thread* inside namespace ``name``, then switch it back.

    Sockets created in the body stay in ``name`` for their whole life; processes *and threads* started in
    the body inherit ``name``. Threads that already run are not affected. Never creates a namespace (a missing one raises).
    """
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY)
    except FileNotFoundError:
        raise NetnsError(f"no network namespace named {name!r}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def run_in(name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` of ``argv`` inside namespace ``name`` (via ``ip netns exec``)."""
    check = bool(kwargs.pop("check", False))
    return subprocess.run(["ip", "netns", "exec", name, *argv], check=check, **kwargs)


def popen_in(name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` of ``argv`` inside namespace ``name`` (via ``ip netns exec``)."""
    return subprocess.Popen(["ip", "netns", "exec", name, *argv], **kwargs)


def cleanup_stale(tag: str = "f2b") -> list[str]:
    """Delete namespaces named by :class:`Fleet` with ``tag`` whose creating process is gone."""
    removed = []
    for name in list_namespaces():
        m = _NAME_RE.match(name)
        if not m or m["tag"] != tag:
            continue
        pid = int(m["pid"])
        try:
            os.kill(pid, 0)
            continue  # its owner still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        delete_namespace(name)
        removed.append(name)
    return removed


# ------------------------------------------------------------------------------------------- fleet


@dataclass
class Host:
    """One host of a :class:`Fleet`: a namespace with ``eth0`` on the fleet's bridge."""

    label: str
    ns: str
    ipv4: str
    ipv6: str
    fleet: Fleet = field(repr=False)

    def addr(self, family: int) -> str:
        """This host's address of ``family`` (4 or 6, or socket.AF_INET/AF_INET6)."""
        return self.ipv6 if family in (6, socket.AF_INET6) else self.ipv4

    def entered(self) -> contextlib.AbstractContextManager[None]:
        return entered(self.ns)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return run_in(self.ns, argv, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside this host; the fleet stops it at teardown."""
        return self.fleet.popen(self, argv, **kwargs)


class Fleet:
    """Namespaces on one private bridge. Use as a context manager; see the module docstring."""

    def __init__(
        self,
        tag: str = "f2b",
        subnet4: str = "10.231.0.0/24",
        subnet6: str = "fd00:231::/64",
    ) -> None:
        if not re.fullmatch(r"[a-z]{1,8}", tag):
            raise ValueError("tag: 1-8 lower-case letters")
        self.tag = tag
        self.token = f"{tag}{os.getpid()}x{secrets.token_hex(2)}"
        self.subnet4 = ipaddress.IPv4Network(subnet4)
        self.subnet6 = ipaddress.IPv6Network(subnet6)
        self.switch = f"{self.token}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._forwards: list[PortForward] = []
        self._started = False
        self._lock = threading.Lock()

    # -- lifecycle

    def start(self) -> Fleet:
        reason = unavailable_reason()
        if reason:
            raise NetnsError(reason)
        atexit.register(self.teardown)
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        self._started = True
        return self

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()

    def _add_namespace(self, name: str) -> None:
        with self._lock:
            self._namespaces.append(name)
        create_namespace(name)

    def teardown(self) -> None:
        """Stop everything this fleet started and delete its namespaces. Safe to call twice."""
        for fwd in self._forwards:
            fwd.close()
        self._forwards.clear()
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 3.0
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        with self._lock:
            names, self._namespaces = self._namespaces, []
        for name in reversed(names):
            delete_namespace(name)
        self.hosts.clear()
        self._started = False
        atexit.unregister(self.teardown)

    # -- hosts

    def add_host(self, label: str, index: int | None = None) -> Host:
        """A new host ``label`` with address number ``index`` (default: the next free one) in both subnets."""
        if not self._started:
            self.start()
        if label in self.hosts or not re.fullmatch(r"[A-Za-z0-9_.-]{1,24}", label):
            raise ValueError(f"bad or duplicate host label {label!r}")
        n = index if index is not None else len(self.hosts) + 1
        ns = f"{self.token}-{label}"
        ipv4 = str(self.subnet4.network_address + n)
        ipv6 = str(self.subnet6.network_address + n)
        self._add_namespace(ns)
        port = f"v{n}"
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{ipv4}/{self.subnet4.prefixlen}", "dev", "eth0")
        ip("-n", ns, "addr", "add", f"{ipv6}/{self.subnet6.prefixlen}", "dev", "eth0", "nodad")
        ip("-n", ns, "link", "set", "eth0", "up")
        _wait_link_up(ns, "eth0")
        host = Host(label=label, ns=ns, ipv4=ipv4, ipv6=ipv6, fleet=self)
        self.hosts[label] = host
        return host

    def __getitem__(self, label: str) -> Host:
        return self.hosts[label]

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    # -- processes and services

    def popen(self, host: Host | str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        ns = host.ns if isinstance(host, Host) else host
        proc = popen_in(ns, argv, **kwargs)
        self._procs.append(proc)
        return proc

    def forward(
        self, host: Host | str, port: int, target: tuple[str, int] | None = None, listen: str = "127.0.0.1"
    ) -> PortForward:
        """Make the caller's namespace's ``target`` (default ``127.0.0.1:port``) reachable inside ``host``
        at ``listen:port``."""
        ns = host.ns if isinstance(host, Host) else host
        fwd = PortForward(ns, listen, port, target or ("127.0.0.1", port))
        self._forwards.append(fwd)
        return fwd


# ------------------------------------------------------------------------------------- relays, probes


class PortForward:
    """Listen inside namespace ``ns`` and relay each connection to ``target`` in the creator's namespace.

    The listening socket is made here (inside ``ns``); the relaying runs in a child process of its own
    (:mod:`fleet2ban.dev.relay`) that inherits it and dies with this process."""

    def __init__(self, ns: str, listen: str, port: int, target: tuple[str, int]) -> None:
        self.ns = ns
        self.target = target
        family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        with entered(ns):
            self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((listen, port))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        fd = self._sock.fileno()
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleet2ban.dev.relay",
                "--fd",
                str(fd),
                "--target",
                f"{target[0]}:{target[1]}",
            ],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        self._sock.close()


def _die_with_parent() -> None:  # pragma: no cover - runs between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class TcpListener:
    """A dual-stack TCP service inside a namespace that accepts, writes ``ok\\n`` and closes.

    ``peers`` lists the source addresses it accepted (IPv4-mapped addresses shown as IPv4).
    """

    def __init__(self, ns: str, port: int) -> None:
        with entered(ns):
            self._sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("::", port))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self.port = port
        self.peers: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"listener-{ns}-{port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            addr = ipaddress.ip_address(peer[0])
            mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
            self.peers.append(str(mapped or addr))
            with contextlib.suppress(OSError):
                conn.sendall(b"ok\n")
            conn.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
        self._sock.close()

    def __enter__(self) -> TcpListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def try_connect(ns: str, addr: str, port: int, timeout: float = 1.0) -> str | None:
    """Connect from inside ``ns`` to ``addr:port``: None when it connected, else why not
    (``refused``, ``timeout``, or the error text)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with entered(ns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((addr, port))
        return None
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return str(exc)
    finally:
        sock.close()
