"""Enforcer packet path: TCP connection rate to the protected port with 0, 10k, 100k bans, nftables vs ipset.

In a test fleet (network namespaces on a bridge): a server process in h1 on port 9007 (accept, write,
close), a client process in another namespace (connect, read to EOF, close with SO_LINGER 0 so no
TIME_WAIT piles up) in short samples. The client's address is never banned; the bans are addresses in 198.18.0.0/15 that send
no traffic, applied through the enforcer's own backends. The reference is the 0-ban rate measured in the
same run, in pairs with each case: the bans are taken off the packet path for the reference sample and put
back for the case sample (ipset/iptables: INPUT's jump to the jail's chain is deleted and re-inserted;
nftables: the jail's chain is flushed and its rules re-added, the sets keeping their elements), so the two
differ only by the bans on the packet path. Figures are medians of the pairs' ratios (the machine is shared
and noisy; the sorted ratios show the spread).
Targets: with ipset (issue 6) and nftables (issue 17), 10,000 and 100,000 bans cost under 5% of the
connection rate.

    python -m bench enforcer_packets [--seconds 0.5] [--pairs 8] [--sizes 10000,100000] [--backends nftables,ipset]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from enforcer.backends import make_backend
from enforcer.backends.nftables import FAMILY, TABLE, NftablesBackend
from enforcer.plan import Add, JailSpec
from fleet2ban.dev.netns import Fleet, Host, unavailable_reason
from fleet2ban.settings import EnforcerSettings

SERVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9007)); s.listen(1024)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"ok")
    except OSError:
        pass
    c.close()
"""

CLIENT = """
import socket, struct, sys, time
host = sys.argv[1]
linger = struct.pack("ii", 1, 0)
for line in sys.stdin:
    seconds = float(line)
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.connect((host, 9007))
        while c.recv(64):
            pass
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        c.close()
        n += 1
    print(n / seconds, flush=True)
"""


class Client:
    """A client process in its namespace that measures the connection rate on request."""

    def __init__(self, client: Host, server: Host) -> None:
        self.proc = client.popen(
            [sys.executable, "-u", "-c", CLIENT, server.ipv4],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def rate(self, seconds: float) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the client died")
        return float(line)


def targets(n: int) -> list[str]:
    return [f"198.{18 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(n)]


def install(h1: Host, jails: list[JailSpec], name: str, n: int) -> None:
    """Make the kernel hold exactly ``n`` bans with backend ``name`` (and nothing of the other one)."""
    with h1.entered():
        for other in ("nftables", "ipset", "iptables"):
            make_backend(other, jails, EnforcerSettings()).uninstall()
        if name == "none":
            return
        fw = make_backend(name, jails, EnforcerSettings(target="DROP"))
        fw.check()
        fw.ensure()
        for t in targets(n):
            fw.add(Add("amps", t, 4, 3600))
        failures = fw.commit()
    if failures:
        raise RuntimeError(f"{name}: {failures[0]}")


def set_jump(h1: Host, on: bool, backend: str = "ipset", jails: list[JailSpec] | None = None) -> None:
    """Put the bans on the packet path or take them off: INPUT's jump to the jail chain (both are ~10 ms,
    even with 10,000 rules), or the rules of the nftables chain (its sets keep their elements)."""
    if backend == "nftables":
        fw = NftablesBackend(jails or [], EnforcerSettings(target="DROP"))
        with h1.entered():
            chain = fw.chain_name("amps")
            fw.nft.run([{"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": chain}}}])
            if on:
                fw.nft.run([fw._rule_cmd(spec, e) for spec in fw.jails for e in fw.rule_exprs(spec)])
            fw.nft.close()
        return
    rule = ["INPUT", "-p", "tcp", "-m", "multiport", "--dports", "9007", "-j", "f2b-amps"]
    present = h1.run(["iptables-legacy", "-w", "-C", *rule], capture_output=True).returncode == 0
    if present != on:
        h1.run(["iptables-legacy", "-w", "-I" if on else "-D", *rule], check=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench enforcer_packets", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="per sample")
    ap.add_argument("--pairs", type=int, default=8, help="(reference, case) sample pairs per case")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--backends", default="nftables,ipset")
    args = ap.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"enforcer_packets: skipped: {reason}")
        return 0
    sizes = [int(x) for x in args.sizes.split(",") if x]
    cases = [(b, n) for b in args.backends.split(",") if b for n in sizes]
    jails = [JailSpec("amps", (9007,))]
    refs: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    rates: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    with Fleet(tag="fbench") as fleet:
        h1, client_host = fleet.add_host("h1"), fleet.add_host("client")
        server = h1.popen([sys.executable, "-u", "-c", SERVER], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        server.stdout.readline()
        client = Client(client_host, h1)
        client.rate(0.5)  # warm up
        for case in cases:
            install(h1, jails, *case)
            for i in range(args.pairs):
                # Adjacent short samples, reference (no jump to the bans) and case, in alternating order:
                # the shared machine's load drifts slowly compared with a second, so each pair's ratio is a
                # fair comparison.
                for jump in (False, True) if i % 2 == 0 else (True, False):
                    set_jump(h1, jump, case[0], jails)
                    (rates if jump else refs)[case].append(client.rate(args.seconds))
        install(h1, jails, "none", 0)
    print(
        f"\nenforcer packet path: connects/s from an unbanned address ({args.pairs} pairs x {args.seconds} s per case)\n"
    )
    print(
        f"{'backend':<10} {'bans':>7} {'0 bans/s':>9} {'with/s':>9} {'x 0 bans':>9} {'cost':>7}  pair ratios (sorted)"
    )
    medians: dict[tuple[str, int], float] = {}
    for case in cases:
        ratios = sorted(r / z for r, z in zip(rates[case], refs[case], strict=True))
        med = medians[case] = statistics.median(ratios)
        per = " ".join(f"{x:.2f}" for x in ratios)
        print(
            f"{case[0]:<10} {case[1]:>7} {statistics.median(refs[case]):>9.0f} {statistics.median(rates[case]):>9.0f}"
            f" {med:>9.3f} {1 - med:>7.1%}  {per}"
        )
    print()
    for b in dict.fromkeys(c[0] for c in cases):
        if b == "iptables":
            continue
        for n in sizes:
            if (b, n) in medians:
                cost = 1 - medians[(b, n)]
                print(f"target {b} {n} bans cost < 5%: {'met' if cost < 0.05 else 'NOT met'} ({cost:.1%})")
    return 0
