"""Host-agent footprint: CPU and RSS of shipper + enforcer on one host vs fail2ban following the same log.

One dev-fleet host (its own Kafka, processor, shipper and enforcer, production heartbeat and reconcile
intervals) and real fail2ban (Debian package: the seed's filter and jail, the stock iptables-ipset
action) in the same host namespace, following the same AMPS ban log. The benchmark plays AMPS: it
appends ``07-0013 ... disconnected: auth`` lines from ``--addresses`` random addresses (each far below
maxretry per findtime, so the phases measure reading, parsing, shipping and counting, not banning) at each
rate in turn, for ``--duration`` seconds, after an idle phase of ``--idle`` seconds. Each phase's CPU is
the user + system time the processes used from its start to ``--settle`` seconds after its last line (so
a backlog is paid inside the phase), as a share of one core; RSS is the largest seen during the phase.

The reference is fail2ban, measured in the same phases: the ratio is (shipper + enforcer) / fail2ban.
Kafka and the processor are fleet-wide services, not host agents, and are not counted.

    python -m bench footprint [--rates 100,1000,5000] [--duration 8] [--idle 10] [--addresses 10000]
                              [--json PATH]

Needs root (namespaces, firewall) and fail2ban. Targets (issue 17): shipper + enforcer at most a fifth of
fail2ban's CPU at 1,000 lines/s, and under 1% of a core idle.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.fleetbench import (
    AmpsLog,
    Fail2ban,
    cpu_seconds,
    describe_machine,
    fail2ban_unavailable_reason,
    ratio,
    rss_mb,
    table,
    wait_fleet_ready,
)
from fleet2ban.dev import netns
from fleet2ban.dev.amps_sim import format_disconnect
from fleet2ban.dev.fleet import DevFleet, DevOptions

POOL_NET = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range
TICK_S = 0.01
ROLL_BYTES = 1_000_000
AGENTS = ("shipper", "enforcer")


def tree(pid: int | None) -> list[int]:
    """``pid`` and its descendants (fail2ban's client may run its server as a child)."""
    if pid is None:
        return []
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(pids: list[int]) -> float:
    return sum(c for c in (cpu_seconds(p) for p in pids) if not math.isnan(c))


def tree_rss(pids: list[int]) -> float:
    return sum(r for r in (rss_mb(p) for p in pids) if not math.isnan(r))


@dataclass
class Phase:
    name: str
    rate: float
    lines: int = 0
    writing: float = 0.0  # seconds of writing
    seconds: float = 0.0  # the whole phase, settle included
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core
    rss: dict[str, float] = field(default_factory=dict)  # MiB, largest seen


def write_at(log: AmpsLog, addresses: list[str], rate: float, duration: float, sample: Any) -> int:
    """Append failure lines at ``rate``/s for ``duration`` s, one write per tick; return the lines."""
    rnd = random.Random(17)
    start = time.monotonic()
    written = 0
    next_sample = start
    total = int(rate * duration)
    while written < total:
        now = time.monotonic()
        due = (
            total - written
            if now - start >= duration
            else min(int(rate * (now - start)) + 1, total) - written
        )
        if due > 0:
            ts = datetime.now(UTC)
            data = "".join(
                format_disconnect(
                    ts, f"load-{written + i}", rnd.choice(addresses), 40000 + (i % 20000), "auth"
                )
                for i in range(due)
            )
            log.write(data.encode(), due)
            written += due
        if now >= next_sample:
            sample()
            next_sample = now + 0.5
        time.sleep(max(0.0, TICK_S - (time.monotonic() - now)))
    return written


def measure(
    name: str,
    rate: float,
    duration: float,
    settle: float,
    pids: dict[str, list[int]],
    log: AmpsLog,
    addresses: list[str],
) -> Phase:
    ph = Phase(name, rate)
    ph.rss = {k: tree_rss(v) for k, v in pids.items()}

    def sample() -> None:
        for k, v in pids.items():
            ph.rss[k] = max(ph.rss[k], tree_rss(v))

    c0 = {k: tree_cpu(v) for k, v in pids.items()}
    t0 = time.monotonic()
    if rate > 0:
        ph.lines = write_at(log, addresses, rate, duration, sample)
        ph.writing = time.monotonic() - t0
    else:
        end = t0 + duration
        while time.monotonic() < end:
            sample()
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
    end = time.monotonic() + settle
    while time.monotonic() < end:
        sample()
        time.sleep(min(0.25, max(0.0, end - time.monotonic())))
    ph.seconds = time.monotonic() - t0
    ph.cpu = {k: (tree_cpu(v) - c0[k]) / ph.seconds for k, v in pids.items()}
    return ph


def report(phases: list[Phase], f2b_backend: str, extra: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for ph in phases:
        agents = sum(ph.cpu[a] for a in AGENTS)
        rows.append(
            [
                ph.name,
                f"{ph.lines / ph.writing:,.0f}" if ph.lines else "0",
                *(f"{100 * ph.cpu[a]:.2f}%" for a in AGENTS),
                f"{100 * agents:.2f}%",
                f"{100 * ph.cpu['fail2ban']:.2f}%",
                ratio(agents, ph.cpu["fail2ban"]),
                f"{ph.rss['shipper']:.0f}+{ph.rss['enforcer']:.0f}",
                f"{ph.rss['fail2ban']:.0f}",
            ]
        )
    print()
    print(
        table(
            [
                "phase",
                "lines/s",
                "shipper",
                "enforcer",
                "ship+enf",
                "fail2ban",
                "ratio",
                "RSS MiB s+e",
                "f2b RSS",
            ],
            rows,
            "CPU as a share of one core over the phase (+settle); ratio = (shipper + enforcer) / fail2ban, same run",
        )
    )
    print(f"fail2ban's file backend: {f2b_backend}")
    res: dict[str, Any] = {
        "phases": [
            {
                "name": ph.name,
                "rate": ph.rate,
                "lines": ph.lines,
                "writing": ph.writing,
                "seconds": ph.seconds,
                "cpu": ph.cpu,
                "rss": ph.rss,
                "agents_cpu": sum(ph.cpu[a] for a in AGENTS),
            }
            for ph in phases
        ],
        "f2b_backend": f2b_backend,
        **extra,
    }
    idle = next((p for p in phases if p.rate == 0), None)
    at1k = next((p for p in phases if p.rate == 1000), None)
    if idle is not None:
        ok = sum(idle.cpu[a] for a in AGENTS) < 0.01
        print(f"target idle < 1% of a core: {'met' if ok else 'NOT met'}")
    if at1k is not None:
        r = sum(at1k.cpu[a] for a in AGENTS) / at1k.cpu["fail2ban"] if at1k.cpu["fail2ban"] else math.nan
        print(f"target at 1,000 lines/s <= 0.20x fail2ban: {'met' if r <= 0.2 else 'NOT met'} ({r:.2f}x)")
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    if why := netns.unavailable_reason():
        raise SystemExit(f"footprint needs network namespaces: {why}")
    if why := fail2ban_unavailable_reason():
        raise SystemExit(why)
    opts = DevOptions(
        hosts=1,
        attackers=0,
        sim_roll_bytes=1 << 40,  # the benchmark writes the log and rolls it over itself
        heartbeat_interval_s=5.0,  # the production defaults (settings: metrics, enforcer)
        reconcile_interval_s=30.0,
        bantime=120.0,
    )
    base = int(POOL_NET.network_address)
    addresses = [str(ipaddress.IPv4Address(base + 1 + i)) for i in range(args.addresses)]
    started = time.monotonic()
    with DevFleet(opts) as fleet:
        for line in fleet.describe():
            print(line)
        host = fleet.hosts[0]
        f2b = Fail2ban(host, fleet.workdir / "f2b")
        log: AmpsLog | None = None
        try:
            f2b.start(fleet)
            print(f"fail2ban    in netns {host.netns}, following {host.log_path}")
            wait_fleet_ready(fleet)
            log = AmpsLog(host.log_path, roll_bytes=ROLL_BYTES)
            sup = fleet.supervisor.children
            assert f2b.child is not None
            pids = {
                "shipper": tree(sup[f"shipper-{host.name}"].pid),
                "enforcer": tree(sup[f"enforcer-{host.name}"].pid),
                "fail2ban": tree(f2b.child.pid),
            }
            print(f"setup {time.monotonic() - started:.1f}s; pids {pids}", flush=True)
            time.sleep(args.settle)  # start-up work (first reconcile, catch-up) is not idle
            phases = [measure("idle", 0, args.idle, 0.0, pids, log, addresses)]
            for rate in args.rates:
                print(f"{rate:,.0f} lines/s for {args.duration:g}s ...", flush=True)
                phases.append(measure(f"{rate:g}/s", rate, args.duration, args.settle, pids, log, addresses))
            backend = f2b.backend_used()
        finally:
            if log is not None:
                log.close()
            f2b.stop()
    return report(phases, backend, {"machine": describe_machine(), "seconds": time.monotonic() - started})


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench footprint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[100.0, 1000.0, 5000.0],
        help="failure lines/s, one phase each (default 100,1000,5000)",
    )
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of writing per phase (default 8)")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of the idle phase (default 10)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds counted after a phase's last line")
    ap.add_argument("--addresses", type=int, default=10_000, help="distinct client addresses")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    res = run(args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
