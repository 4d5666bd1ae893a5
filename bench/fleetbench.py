"""Shared pieces of the fleet benchmarks (time_to_ban, sustained): AMPS log writing, statistics, tables,
reading the fleet's topics with their record timestamps, process RSS, and the reference fail2ban server.

Every time here is wall-clock seconds (``time.time()``): Kafka record timestamps, enforcer report times,
fail2ban's log and the TCP probe all use the machine's one clock.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from fleet2ban import waiting
from fleet2ban.audit.reader import Source, TopicReader
from fleet2ban.audit.view import TopicKind
from fleet2ban.dev.amps_sim import format_disconnect
from fleet2ban.dev.fleet import DevFleet, SimHost
from fleet2ban.dev.supervisor import Child
from fleet2ban.kafka import Cluster

# ----------------------------------------------------------------------------------------- statistics


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no data."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def ms(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    v = x * 1000.0
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def table(headers: Sequence[str], rows_in: Iterable[Sequence[object]], title: str = "") -> str:
    rows = [[str(c) for c in r] for r in rows_in]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = []
    if title:
        out.append(title)
    out.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- log writing


class AmpsLog:
    """Appends AMPS lines to a host's ban log as AMPS does (open for append, write, flush).

    The simulated AMPS service on the host writes to the same file (its liveness lines, the probes'
    disconnects). Whoever rolls the file over (rename, recreate): with ``roll_bytes`` this writer does,
    like AMPS, at about that size; a new file appearing under the name is followed either way.
    """

    def __init__(self, path: Path, roll_bytes: int | None = None) -> None:
        self.path = path
        self.roll_bytes = roll_bytes
        self.rolls = 0
        self._f = open(path, "ab")  # noqa: SIM115 - held for the writer's life
        self._ino = os.fstat(self._f.fileno()).st_ino
        self.lines = 0
        self.reopens = 0

    def _follow(self) -> None:
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            return  # between the rename and the recreate
        if ino != self._ino:
            self._f.close()
            self._f = open(self.path, "ab")  # noqa: SIM115
            self._ino = os.fstat(self._f.fileno()).st_ino
            self.reopens += 1

    def write(self, data: bytes, count: int = 1, follow: bool = True) -> float:
        """Append ``data`` (``count`` lines), flush; return the wall time right after the flush."""
        if follow:
            self._follow()
        self._f.write(data)
        self._f.flush()
        t = time.time()
        self.lines += count
        if self.roll_bytes is not None and self._f.tell() >= self.roll_bytes:
            self._roll()
        return t

    def _roll(self) -> None:
        self._f.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._f = open(self.path, "ab")  # noqa: SIM115
        self._ino = os.fstat(self._f.fileno()).st_ino
        self.rolls += 1

    def close(self) -> None:
        self._f.close()


def failure_line(
    ip: str, client: str, reason: str = "auth", port: int = 50000, at: float | None = None
) -> bytes:
    ts = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return format_disconnect(ts, client, ip, port, reason).encode()


# --------------------------------------------------------------------------------------- topic reading


@dataclass
class Rec:
    kind: str
    key: bytes | None
    value: bytes | None
    ts: float  # record timestamp, seconds


def read_topics(cluster: Cluster, kinds: Sequence[str], timeout: float = 120.0) -> list[Rec]:
    """Every record of these fleet topics from the beginning, with its record timestamp."""
    topics = cluster.topics
    out: list[Rec] = []

    def feed(kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        out.append(Rec(kind, key, value, ts.timestamp() if ts is not None else math.nan))

    # TopicReader passes the kind through untouched, so "events" works as well as the audit kinds
    sources = [Source(cast(TopicKind, k), getattr(topics, k)) for k in kinds]
    with TopicReader(cluster, sources, feed) as r:
        r.catch_up(timeout)
    return out


# ----------------------------------------------------------------------------------------------- RSS


def rss_mb(pid: int | None) -> float:
    """Resident set size of a process in MiB (NaN when it is gone)."""
    if pid is None:
        return math.nan
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return math.nan


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used (NaN when it is gone)."""
    if pid is None:
        return math.nan
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def component_pids(fleet: DevFleet) -> dict[str, int | None]:
    """The fleet's long-running processes (the Kafka nodes first), by name."""
    pids: dict[str, int | None] = {}
    if fleet.broker is not None:
        for node in fleet.broker.nodes:
            alive = node.proc is not None and node.proc.poll() is None
            pids[f"kafka-{node.node_id}"] = node.proc.pid if alive and node.proc is not None else None
    for name, child in fleet.supervisor.children.items():
        pids[name] = child.pid if child.alive() else None
    return pids


# --------------------------------------------------------------------------------- the fail2ban server

SEED_FAILREGEX = r"info: 07-0013.*\(<HOST>:[\d]+\) disconnected: (auth|name in use)"
"""The seed article's filter (tests/data/seed-amps.conf, shared/seeds/fail2ban-for-amps.txt)."""
DATEPATTERN = r"^%%Y-%%m-%%dT%%H:%%M:%%S\.\d+%%z"
"""Honours AMPS's UTC offset (shared/notes/firewall-and-fail2ban.md)."""
STOCK_ACTIONS = Path("/etc/fail2ban/action.d")
_BAN_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*\[amps\] Ban (\S+)")


def fail2ban_unavailable_reason() -> str | None:
    if shutil.which("fail2ban-client") is None:
        return "fail2ban is not installed (apt-get install fail2ban)"
    if not (STOCK_ACTIONS / "iptables-ipset.conf").is_file():
        return f"no stock iptables-ipset action in {STOCK_ACTIONS}"
    return None


@dataclass
class Fail2ban:
    """Real fail2ban (Debian package) in a host namespace: the seed's filter and jail, the stock
    iptables-ipset action, a private config dir (``fail2ban-client -c DIR -x -f start``)."""

    host: SimHost
    workdir: Path
    backend: str = "auto"
    maxretry: int = 20
    findtime: int = 10
    bantime: int = 120
    port: int = 9007
    child: Child | None = None
    conf: Path = field(init=False)
    run: Path = field(init=False)

    def __post_init__(self) -> None:
        self.conf = self.workdir / "conf"
        self.run = self.workdir / "run"

    def write_config(self) -> None:
        for d in (self.conf / "filter.d", self.conf / "action.d", self.run):
            d.mkdir(parents=True, exist_ok=True)
        for f in STOCK_ACTIONS.glob("iptables*.conf"):
            shutil.copy(f, self.conf / "action.d" / f.name)
        (self.conf / "fail2ban.conf").write_text(
            "[Definition]\nloglevel = INFO\n"
            f"logtarget = {self.run}/fail2ban.log\nsocket = {self.run}/fail2ban.sock\n"
            f"pidfile = {self.run}/fail2ban.pid\ndbfile = {self.run}/fail2ban.sqlite3\nallowipv6 = auto\n"
        )
        (self.conf / "filter.d" / "amps.conf").write_text(
            f"[Definition]\nfailregex = {SEED_FAILREGEX}\ndatepattern = {DATEPATTERN}\n"
        )
        (self.conf / "jail.conf").write_text(
            f"[DEFAULT]\nbackend = {self.backend}\nusedns = no\n\n"
            f"[amps]\nenabled = true\nfilter = amps\nport = {self.port}\nlogpath = {self.host.log_path}\n"
            f"maxretry = {self.maxretry}\nbantime = {self.bantime}\nfindtime = {self.findtime}\n"
            f"action = iptables-ipset[name=amps, port={self.port}, protocol=tcp]\n"
        )

    def client(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["fail2ban-client", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, fleet: DevFleet, timeout: float = 30.0) -> None:
        self.write_config()
        self.child = fleet.supervisor.start(
            "fail2ban", ["fail2ban-client", "-c", str(self.conf), "-x", "-f", "start"], netns=self.host.netns
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise RuntimeError(f"fail2ban died:\n{self.child.tail()}")
            # the stock action starts on demand (fail2ban 1.0): its set and rule appear with the first ban
            if self.client("status", "amps", timeout=5).returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"fail2ban did not start within {timeout:.0f}s:\n{self.child.tail()}")

    def ban_times(self) -> dict[str, float]:
        """IP -> wall time of fail2ban's ``Ban`` log line (its detection, before the action runs)."""
        out: dict[str, float] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in (self.run / "fail2ban.log").read_text(errors="replace").splitlines():
                m = _BAN_RE.match(line)
                if m and m[3] not in out:
                    local = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S"))
                    out[m[3]] = local + int(m[2]) / 1000.0
        return out

    def backend_used(self) -> str:
        """The file backend fail2ban chose (``auto`` picks pyinotify when it is installed)."""
        with contextlib.suppress(FileNotFoundError):
            m = re.search(r"Jail '\w+' uses (\w+)", (self.run / "fail2ban.log").read_text(errors="replace"))
            if m:
                return m[1]
        return "?"

    def stop(self) -> None:
        """Stop the server (its actionstop removes the rule and the set), then the process."""
        if self.child is None:
            return
        if self.child.alive():
            self.client("stop", timeout=30)
            deadline = time.monotonic() + 10
            while self.child.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            self.child.stop()
        self.child = None


# ------------------------------------------------------------------------------------------ waiting


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Seconds until ``cond`` held (fleet2ban.waiting's bounded poll)."""
    start = time.monotonic()
    waiting.wait_for(cond, timeout, what, interval)
    return time.monotonic() - start


def components_reporting(fleet: DevFleet) -> set[tuple[str, str]]:
    """(role, host) of every component that sent a heartbeat so far."""
    from fleet2ban.contract import ContractError, Heartbeat, decode_report

    assert fleet.cluster is not None
    seen: set[tuple[str, str]] = set()
    for rec in read_topics(fleet.cluster, ["reports"]):
        try:
            r = decode_report(rec.value)
        except ContractError:
            continue
        if isinstance(r, Heartbeat):
            seen.add((r.role, r.host))
    return seen


def wait_fleet_ready(fleet: DevFleet, timeout: float = 90.0) -> None:
    want = {("shipper", h.name) for h in fleet.hosts} | {("enforcer", h.name) for h in fleet.hosts}
    wait_for(
        lambda: components_reporting(fleet) >= want, timeout, "every shipper and enforcer to report in", 0.5
    )


def describe_machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load1": os.getloadavg()[0]}
