"""Enforcer apply rate: 10,000 bans -> all in the kernel, nftables vs ipset vs a bare nft -f / ipset restore.

In the kernel (in process, a network namespace, no Kafka): each backend's own commit of N new bans
(nftables: one libnftables transaction; ipset: one ``ipset restore``) against the bare tool loading the
same N entries in the same run (``nft -f`` of one ``add element``; ``ipset restore``); then one new ban
committed with N in force (nftables: a transaction in process; ipset: netlink in process) against a fork
per ban, which is what the ipset backend paid before (``ipset add``; ``nft add element`` for nftables).
Target (issue 17): under 0.5 s each for 10,000.

End to end (``--e2e``) runs the real pipeline: a local 3-node Kafka, a test fleet host (network namespace) running
``fleet2ban enforcer`` as its own process, reached through the fleet's loopback forwarder. Once the
enforcer has read the (empty) topic and sent a heartbeat, N ban records are produced; the clock stops when
the system tools (``ipset list -t`` / ``iptables-legacy -S``) show N entries. Then N tombstones, until 0.
Then ``--delays`` bans one at a time (decision time -> applied report time), split by the enforcer's own
metrics, scraped around them, into its own share (reading the batch to its reports produced) and the
Kafka hop (the record's timestamp to the enforcer reading it).
References measured in the same run: the raw tools on the same N entries (``ipset restore``; python-iptables
build + one commit), and the ipset backend. Target (issue 6): ipset under 2 s for 10,000.

First, in process (no broker, no kernel: the dryrun backend), the cost of one incremental reconcile (a
small batch of new bans) with N bans in force, against the reference measured in the same run: the same
pass computing the desired state of every ban (what every incremental reconcile did before it was made
O(changes)).

    python -m bench enforcer_apply [--bans 10000] [--backends nftables,ipset] [--e2e] [--reconcile-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._kafka import bench_cluster
from bench.fleetbench import percentile
from fleet2ban.contract import Topics
from fleet2ban.dev.netns import Fleet, Host, entered, unavailable_reason
from fleet2ban.kafka import Cluster, consumer_config, ensure_topics, producer_config, resolve
from fleet2ban.settings import KafkaSettings

FLEET2BAN = str(Path(sys.executable).with_name("fleet2ban"))
METRICS_PORT = 9464
"""The enforcer's /metrics inside its host (scraped around the one-at-a-time bans: its own share)."""
OWN = "fleet2ban_enforcer_live_batch_seconds"
HOP = "fleet2ban_enforcer_bans_receive_seconds"
Buckets = dict[str, list[tuple[float, float]]]
"""Histogram name -> its cumulative buckets, (le, count), from one scrape."""


def scrape(host: Host) -> Buckets:
    """The enforcer's histograms OWN and HOP ({} when it does not serve them: an older tree)."""
    out = host.run(
        ["curl", "-s", "-m", "5", f"http://127.0.0.1:{METRICS_PORT}/metrics"], capture_output=True, text=True
    )
    got: Buckets = {}
    for line in out.stdout.splitlines():
        for name in (OWN, HOP):
            if line.startswith(f'{name}_bucket{{le="'):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                got.setdefault(name, []).append((float(le), float(line.rsplit(" ", 1)[1])))
    return got


def bucket_quantile(before: Buckets, after: Buckets, name: str, q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of what was observed between two scrapes."""
    if name not in after:
        return None
    old = dict(before.get(name, []))
    delta = [(le, n - old.get(le, 0.0)) for le, n in after[name]]
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return None
    return next(le for le, n in delta if n >= q * total)


def targets(n: int) -> list[str]:
    return [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(n)]


def kernel_count(host: Host, backend: str, last: Sequence[str] = ()) -> int:
    """Entries in the kernel, by the system tools; -1 when the tool failed (busy): ask again. For nftables,
    whose listing of 10,000 elements costs ~0.1 s of CPU (taken from the enforcer on a small machine),
    ``last`` (the last target published to each partition) is looked up first: while one is missing, the
    count is not taken."""
    if backend == "nftables":
        if last:
            probe = ["nft", "get", "element", "inet", "fleet2ban", "f2b-amps-4", f"{{ {', '.join(last)} }}"]
            if host.run(probe, capture_output=True).returncode != 0:
                return -1
        out = host.run(["nft", "-j", "list", "set", "inet", "fleet2ban", "f2b-amps-4"], capture_output=True)
        if out.returncode != 0:
            return -1
        sets = [o["set"] for o in json.loads(out.stdout)["nftables"] if "set" in o]
        return len(sets[0].get("elem", [])) if sets else -1
    if backend == "ipset":
        out = host.run(["ipset", "list", "-t", "f2b-amps-4"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if out.returncode == 0 and line.startswith("Number of entries:"):
                return int(line.split(":")[1])
        return -1
    out = host.run(["iptables-legacy", "-w", "-S", "f2b-amps"], capture_output=True, text=True)
    if out.returncode != 0:
        return -1
    return sum(1 for line in out.stdout.splitlines() if line.startswith("-A f2b-amps -s "))


def wait_count(host: Host, backend: str, want: int, timeout: float, last: Sequence[str] = ()) -> float:
    start = time.perf_counter()
    while kernel_count(host, backend, last if want else ()) != want:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{backend}: kernel did not reach {want} entries within {timeout}s")
        time.sleep(0.02)
    return time.perf_counter()


def raw_ipset(host: Host, ips: list[str]) -> float:
    script = "create rawb hash:net family inet timeout 0\n" + "".join(
        f"add rawb {ip} timeout 300\n" for ip in ips
    )
    t0 = time.perf_counter()
    host.run(["ipset", "restore", "-exist"], input=script, text=True, check=True)
    took = time.perf_counter() - t0
    host.run(["ipset", "destroy", "rawb"], check=True)
    return took


def raw_nft(host: Host, ips: list[str]) -> float:
    """``nft -f`` of one table with one set and one ``add element`` of every address (timeouts included)."""
    script = (
        "table inet rawb { set s { type ipv4_addr; flags timeout; }; }\n"
        + "add element inet rawb s { "
        + ", ".join(f"{ip} timeout 300s" for ip in ips)
        + " }\n"
    )
    t0 = time.perf_counter()
    host.run(["nft", "-f", "-"], input=script, text=True, check=True)
    took = time.perf_counter() - t0
    host.run(["nft", "delete", "table", "inet", "rawb"], check=True)
    return took


def kernel_apply(host: Host, backend: str, ips: list[str], singles: int) -> tuple[float, list[float]]:
    """(seconds for the backend to commit ``ips`` as one batch, seconds of each of ``singles`` commits of
    one new ban with ``ips`` in force); everything is checked in the kernel, then uninstalled."""
    from enforcer.backends import make_backend
    from enforcer.plan import Add, JailSpec
    from fleet2ban.settings import EnforcerSettings

    fw = make_backend(backend, [JailSpec("amps", (9007,))], EnforcerSettings(target="DROP"))
    extra = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(singles)]
    with entered(host.ns):
        fw.check()
        fw.ensure()
        try:
            t0 = time.perf_counter()
            for ip in ips:
                fw.add(Add("amps", ip, 4, 300))
            failures = fw.commit()
            batch = time.perf_counter() - t0
            one: list[float] = []
            for ip in extra:
                t0 = time.perf_counter()
                fw.add(Add("amps", ip, 4, 300))
                failures += fw.commit()
                one.append(time.perf_counter() - t0)
            if failures or len(fw.list()) != len(ips) + singles:
                raise RuntimeError(f"{backend}: {failures[:1] or 'not every ban is in the kernel'}")
        finally:
            fw.uninstall()
    return batch, one


def forked_singles(host: Host, backend: str, n: int) -> list[float]:
    """Seconds of each of ``n`` bans added by one command each (the tool forked from this process)."""
    out: list[float] = []
    with entered(host.ns):
        if backend == "nftables":
            subprocess.run(
                ["nft", "add table inet rawf; add set inet rawf s { type ipv4_addr; flags timeout; }"],
                check=True,
            )
        else:
            subprocess.run(["ipset", "create", "rawf", "hash:ip", "timeout", "0"], check=True)
        for i in range(n):
            ip = f"198.51.{i // 250}.{i % 250 + 1}"
            argv = (
                ["nft", f"add element inet rawf s {{ {ip} timeout 300s }}"]
                if backend == "nftables"
                else ["ipset", "add", "rawf", ip, "timeout", "300"]
            )
            t0 = time.perf_counter()
            subprocess.run(argv, check=True)
            out.append(time.perf_counter() - t0)
        if backend == "nftables":
            subprocess.run(["nft", "delete", "table", "inet", "rawf"], check=True)
        else:
            subprocess.run(["ipset", "destroy", "rawf"], check=True)
    return out


def kernel_table(fleet: Fleet, backends: list[str], n: int, singles: int) -> None:
    host = fleet.add_host("k1")
    ips = targets(n)
    bare = {"nftables": ("nft -f", raw_nft(host, ips)), "ipset": ("ipset restore", raw_ipset(host, ips))}
    forked = {b: forked_singles(host, b, singles) for b in backends if b in bare}
    applied = {b: kernel_apply(host, b, ips, singles) for b in backends if b in bare}
    ms = 1e3
    print(f"\nenforcer apply in the kernel, {n} bans, in process (no Kafka), against the bare tools\n")
    print(f"{'what':<40} {'seconds':>8} {'bans/s':>9} {'x bare tool':>12}")
    for b, (batch, _) in applied.items():
        tool, ref = bare[b]
        print(f"{'backend ' + b + ', one commit':<40} {batch:>8.3f} {n / batch:>9.0f} {batch / ref:>12.2f}")
    for b in applied:
        tool, ref = bare[b]
        print(f"{'bare: ' + tool + ' (forked)':<40} {ref:>8.3f} {n / ref:>9.0f} {1:>12.2f}")
    print(f"\none new ban committed with {n} in force ({singles} times)\n")
    print(f"{'what':<40} {'p50 ms':>8} {'p95 ms':>8} {'x fork per ban':>15}")
    for b, (_, one) in applied.items():
        fork = statistics.median(forked[b])
        p50, p95 = statistics.median(one), statistics.quantiles(one, n=20)[-1]
        print(f"{'backend ' + b + ', in process':<40} {p50 * ms:>8.2f} {p95 * ms:>8.2f} {p50 / fork:>15.2f}")
    for b in applied:
        cmd = "nft add element" if b == "nftables" else "ipset add"
        p50, p95 = statistics.median(forked[b]), statistics.quantiles(forked[b], n=20)[-1]
        print(f"{'fork per ban: ' + cmd:<40} {p50 * ms:>8.2f} {p95 * ms:>8.2f} {1:>15.2f}")
    print()
    for b, (batch, _) in applied.items():
        print(f"target {b} < 0.5 s for {n}: {'met' if batch < 0.5 else 'NOT met'} ({batch:.3f} s)")


# Run in a fresh interpreter (``python -c``) with PYTHONPATH at one tree or the other, so the code before a
# change and after it are measured alike: the agent's per-ban work on N bans (ingest every record,
# reconcile in two batches, take the reports) through a real backend, in CPU seconds of the process.
_STAGE = """
import gc, json, sys, time
from datetime import timedelta
import enforcer.agent as agent
try:
    from enforcer.core import Enforcer
except ImportError:  # a tree from before issue 19, when the Enforcer lived in enforcer.agent
    from enforcer.agent import Enforcer
from enforcer.backends import make_backend
from enforcer.plan import JailSpec, Rails
from fleet2ban.contract import BanState, ban_key, encode, utcnow
from fleet2ban.settings import EnforcerSettings, JailSettings
backend, n = sys.argv[1], int(sys.argv[2])
gc.set_threshold(*getattr(agent, "GC_THRESHOLDS", gc.get_threshold()))  # as the agent process runs
jails = [JailSpec("amps", (9007,))]
settings = EnforcerSettings(target="DROP")
rails = Rails.build(settings, [JailSettings(name="amps")], own=["10.231.0.1"])
now = utcnow()
ips = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(n)]
recs = [(ban_key("amps", ip).encode(), encode(BanState(decision_id=f"b-{ip}", ip=ip, jail="amps", at=now,
        expires_at=now + timedelta(hours=1)))) for ip in ips]
fw = make_backend(backend, jails, settings)
fw.check(); fw.ensure()
e = Enforcer(fw, rails, jails, "bench")
e.reconcile(full=True); e.take_reports(); e.live = True
c0, w0 = time.process_time(), time.perf_counter()
for half in (recs[: n // 2], recs[n // 2 :]):
    for k, v in half:
        e.ingest(k, v)
    e.reconcile(full=False)
    e.take_reports()
cpu, wall = time.process_time() - c0, time.perf_counter() - w0
assert len(fw.list()) == n
fw.uninstall()
print(json.dumps({"cpu": cpu, "wall": wall}))
"""


def stage_cost(host: Host, backend: str, n: int, code: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the agent's work on ``n`` bans, with the code of tree ``code``."""
    out = host.run(
        [sys.executable, "-c", _STAGE, backend, str(n)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(code)},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{backend} stage ({code}): {out.stderr.strip()[-800:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return float(res["cpu"]), float(res["wall"])


def stage_table(fleet: Fleet, backends: list[str], n: int, before: Path, rounds: int) -> None:
    """The agent's per-ban work, this tree against ``before``, interleaved ``rounds`` times (medians)."""
    host = fleet.add_host("k2")
    here = Path(__file__).resolve().parents[1]
    print(
        f"\nthe agent's work on {n} bans in process (ingest, 2 reconciles, reports), {rounds} rounds, medians\n"
    )
    print(f"{'what':<34} {'CPU s':>7} {'wall s':>7} {'x before CPU':>13}")
    for b in backends:
        got: dict[str, list[tuple[float, float]]] = {"now": [], "before": []}
        for _ in range(rounds):
            got["before"].append(stage_cost(host, b, n, before))
            got["now"].append(stage_cost(host, b, n, here))
        cpu = {k: statistics.median(c for c, _ in v) for k, v in got.items()}
        wall = {k: statistics.median(w for _, w in v) for k, v in got.items()}
        print(
            f"{'enforcer, backend ' + b:<34} {cpu['now']:>7.3f} {wall['now']:>7.3f} {cpu['now'] / cpu['before']:>13.2f}"
        )
        print(f"{'before: enforcer, backend ' + b:<34} {cpu['before']:>7.3f} {wall['before']:>7.3f} {'':>13}")


def raw_iptc(host: Host, ips: list[str]) -> float:
    import iptc

    with entered(host.ns):
        table = iptc.Table(iptc.Table.FILTER, autocommit=False)
        table.refresh()
        t0 = time.perf_counter()
        chain = table.create_chain("rawb")
        for ip in ips:
            r = iptc.Rule()
            r.src = ip
            r.protocol = "tcp"
            r.target = iptc.Target(r, "DROP")
            chain.append_rule(r)
        table.commit()
        took = time.perf_counter() - t0
        table.refresh()
        chain.flush()
        table.delete_chain("rawb")
        table.commit()
        table.refresh()
    return took


Result = tuple[float, float, float, list[float], dict[str, float | None]]


def run_backend(
    backend: str,
    n: int,
    bootstrap: str,
    topics: Topics,
    fleet: Fleet,
    workdir: Path,
    code: Path | None = None,
    tag: str = "",
    singles: int = 0,
) -> Result:
    """(seconds from the first record produced to all ``n`` in the kernel, to all gone after the
    tombstones, to the producer's flush of the bans; then, for ``singles`` bans published one at a time,
    each one's enforce delay: its decision time to the time of its ``applied`` report; and of those, the
    enforcer's own share and the Kafka hop by its metrics, p50 and p99 as bucket bounds); ``code``: run
    the enforcer of that tree."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    from fleet2ban.contract import BanState, ban_key, decode_report, encode, partition_for, utcnow

    host = fleet.hosts["h1"]
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=topics.prefix, partitions=3)
    cluster = resolve(settings)
    ensure_topics(cluster)
    log = open(workdir / f"enforcer-{backend}{tag}.log", "wb")  # noqa: SIM115
    argv = [FLEET2BAN, "-b", bootstrap, "--topic-prefix", topics.prefix, "enforcer", "--backend", backend]
    env = None if code is None else {**os.environ, "PYTHONPATH": str(code)}
    proc = host.popen(
        [*argv, "--host", "h1", "--reconcile-interval", "3600", "--metrics-port", str(METRICS_PORT)],
        stdout=log,
        stderr=log,
        env=env,
    )
    try:
        consumer = Consumer(consumer_config(cluster))
        parts = consumer.list_topics(topics.reports, timeout=10).topics[topics.reports].partitions
        bans_parts = len(consumer.list_topics(topics.bans, timeout=10).topics[topics.bans].partitions)
        consumer.assign([TopicPartition(topics.reports, p, OFFSET_BEGINNING) for p in parts])
        deadline = time.monotonic() + 30
        synced = False
        while not synced:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{backend}: the enforcer did not start; see {log.name}")
            for msg in consumer.consume(100, 0.2):
                if msg.error() is None and getattr(decode_report(msg.value()), "role", None) == "enforcer":
                    synced = True
        producer = Producer(producer_config(cluster, linger_ms=5))
        warm(producer, topics)
        now = utcnow()
        ips = targets(n)
        records = [  # encoded before the clock starts: what is timed is publishing and applying
            (
                ban_key("amps", ip).encode(),
                encode(BanState(decision_id=f"bench-{ip}", ip=ip, jail="amps", at=now)),
            )
            for ip in ips
        ]
        lasts = {partition_for(key, bans_parts): ip for ip, (key, _) in zip(ips, records, strict=True)}
        t0 = time.perf_counter()
        for key, value in records:
            producer.produce(topics.bans, key=key, value=value)
            producer.poll(0)
        producer.flush(30)
        published = time.perf_counter() - t0
        applied = wait_count(host, backend, n, timeout=300, last=list(lasts.values())) - t0
        t1 = time.perf_counter()
        for ip in ips:
            producer.produce(topics.bans, key=ban_key("amps", ip).encode(), value=None)
            producer.poll(0)
        producer.flush(30)
        lifted = wait_count(host, backend, 0, timeout=300) - t1
        time.sleep(1.0)  # the lifting batch's reports and observations are done: not counted below
        before = scrape(host)
        delays = enforce_delays(cluster, consumer, topics, singles, proc)
        after = scrape(host)
        own = {
            f"{what} p{int(q * 100)}": bucket_quantile(before, after, name, q)
            for what, name in (("own", OWN), ("hop", HOP))
            for q in (0.5, 0.99)
        }
        return applied, lifted, published, delays, own
    finally:
        consumer.close()
        proc.terminate()
        proc.wait(15)
        host.run([FLEET2BAN, "enforcer", "--backend", backend, "--uninstall"], capture_output=True)


def warm(producer: Any, topics: Topics) -> None:
    """One tombstone for a key never banned, flushed: the producer has its metadata, connections and
    idempotence id before the clock starts (a fresh producer's first record waits ~0.5 s for them)."""
    from fleet2ban.contract import ban_key

    producer.produce(topics.bans, key=ban_key("amps", "198.51.255.254").encode(), value=None)
    producer.flush(30)


def enforce_delays(cluster: Cluster, consumer: Any, topics: Topics, n: int, proc: Any) -> list[float]:
    """Publish ``n`` bans one at a time (each after the last one's report); return each one's seconds from
    its decision time (``at``, set as it is produced) to its ``applied`` report's time."""
    from confluent_kafka import Producer

    from fleet2ban.contract import BanState, Report, ban_key, decode_report, encode, utcnow

    producer = Producer(producer_config(cluster, linger_ms=0))
    warm(producer, topics)
    out: list[float] = []
    for i in range(n):
        ip = f"198.51.{100 + i // 250}.{i % 250 + 1}"
        at = utcnow()
        ban = BanState(decision_id=f"single-{ip}", ip=ip, jail="amps", at=at)
        producer.produce(topics.bans, key=ban_key("amps", ip).encode(), value=encode(ban))
        producer.flush(10)
        deadline = time.monotonic() + 10
        got = None
        while got is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"no applied report for {ip} within 10 s")
            for msg in consumer.consume(100, 0.05):
                if msg.error() is not None:
                    continue
                rep = decode_report(msg.value())
                if isinstance(rep, Report) and rep.kind == "applied" and rep.ip == ip:
                    got = rep
        out.append((got.at - at).total_seconds())
        time.sleep(0.02)  # apart, as live bans arrive
    return out


def reconcile_cost(in_force: int, batch: int, passes: int, incremental: bool) -> float:
    """CPU seconds of one reconcile after ``batch`` new bans, with ``in_force`` bans in force."""
    from datetime import timedelta

    from enforcer.backends.dryrun import DryRunBackend
    from enforcer.core import Enforcer
    from enforcer.plan import JailSpec, Rails
    from fleet2ban.contract import BanState, ban_key, encode, utcnow
    from fleet2ban.settings import EnforcerSettings, JailSettings

    jails = [JailSpec("amps", (9007,))]
    settings = EnforcerSettings(backend="dryrun")
    rails = Rails.build(settings, [JailSettings(name="amps")], own=["10.231.0.1"])
    e = Enforcer(DryRunBackend(jails, settings), rails, jails, "bench", incremental=incremental)
    now = utcnow()
    ips = targets(in_force + batch * passes)

    def ingest(ip: str) -> None:
        ban = BanState(
            decision_id=f"bench-{ip}", ip=ip, jail="amps", at=now, expires_at=now + timedelta(hours=1)
        )
        e.ingest(ban_key("amps", ip).encode(), encode(ban))

    for ip in ips[:in_force]:
        ingest(ip)
    e.reconcile(full=True)
    e.take_reports()
    spent = 0.0
    for p in range(passes):
        for ip in ips[in_force + p * batch : in_force + (p + 1) * batch]:
            ingest(ip)
        t0 = time.process_time()
        e.reconcile(full=False)
        spent += time.process_time() - t0
        e.take_reports()
    assert len(e.applied) == in_force + batch * passes
    return spent / passes


def reconcile_table(sizes: list[int], batch: int) -> None:
    print(f"\nincremental reconcile cost: {batch} new bans per pass, dryrun backend, in process (CPU time)\n")
    print(
        f"{'bans in force':>13} {'full desired ms':>16} {'incremental ms':>15} {'x faster':>9} {'passes/s':>10}"
    )
    for n in sizes:
        full = reconcile_cost(n, batch, max(10, 200_000 // max(n, 1)), incremental=False)
        inc = reconcile_cost(n, batch, 500, incremental=True)
        print(f"{n:>13,} {full * 1e3:>16.3f} {inc * 1e3:>15.3f} {full / inc:>9.0f} {1 / inc:>10.0f}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench enforcer_apply", description=__doc__.splitlines()[0])
    ap.add_argument("--bans", type=int, default=10_000)
    ap.add_argument("--backends", default="nftables,ipset", help="nftables, ipset, iptables (end to end)")
    ap.add_argument("--singles", type=int, default=200, help="single-ban commits timed with --bans in force")
    ap.add_argument("--e2e", action="store_true", help="also end to end: published -> in the kernel")
    ap.add_argument("--logs", type=Path, default=None, help="keep the enforcers' logs in this directory")
    ap.add_argument("--reconcile-sizes", default="1000,10000", help="bans in force for the reconcile cost")
    ap.add_argument("--reconcile-batch", type=int, default=5, help="new bans per incremental reconcile")
    ap.add_argument("--reconcile-only", action="store_true", help="only the in-process reconcile cost")
    ap.add_argument("--rounds", type=int, default=5, help="with --before: in-process rounds of each tree")
    ap.add_argument(
        "--delays",
        type=int,
        default=100,
        help="end to end: bans published one at a time for the enforce delay",
    )
    ap.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a tree of the code before a change (git archive REF | tar -x -C DIR): end to end, its enforcer"
        " is measured too, in the same run, as the reference",
    )
    args = ap.parse_args(argv)
    reconcile_table([int(n) for n in args.reconcile_sizes.split(",") if n], args.reconcile_batch)
    if args.reconcile_only:
        return 0
    reason = unavailable_reason()
    if reason:
        print(f"enforcer_apply: skipped: {reason}")
        return 0
    with Fleet(tag="fbenk") as kfleet:
        kernel_table(kfleet, [b for b in args.backends.split(",") if b], args.bans, args.singles)
        if args.before is not None:
            stage_table(
                kfleet, [b for b in args.backends.split(",") if b], args.bans, args.before, args.rounds
            )
    if not args.e2e:
        return 0
    backends = [b for b in args.backends.split(",") if b]
    with tempfile.TemporaryDirectory() as tmp, bench_cluster() as broker, Fleet(tag="fbench") as fleet:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        host = fleet.add_host("h1")
        for port in broker.ports:
            fleet.forward(host, port)
        ips = targets(args.bans)
        ref_ipset = raw_ipset(host, ips)
        ref_iptc = raw_iptc(host, ips)
        ref_nft = raw_nft(host, ips)
        results: dict[str, Result] = {}
        before: dict[str, Result] = {}
        for i, b in enumerate(backends):
            if args.before is not None:
                before[b] = run_backend(
                    b,
                    args.bans,
                    broker.bootstrap,
                    Topics(f"before{i}."),
                    fleet,
                    workdir,
                    args.before,
                    "-before",
                    args.delays,
                )
            results[b] = run_backend(
                b, args.bans, broker.bootstrap, Topics(f"bench{i}."), fleet, workdir, singles=args.delays
            )
    base = results.get("ipset", next(iter(results.values())))[0]
    print(
        f"\nenforcer apply rate, {args.bans} bans (published -> all in the kernel; tombstones -> all gone)\n"
    )
    print(
        f"{'what':<34} {'apply s':>9} {'lift s':>9} {'publish s':>9} {'bans/s':>10} {'x ipset':>8}"
        f" {'x raw tool':>10} {'x before':>9}"
    )
    rows = [(f"enforcer, backend {b}", b, r, before.get(b)) for b, r in results.items()]
    rows += [(f"before: enforcer, backend {b}", b, r, None) for b, r in before.items()]
    for what, b, (applied, lifted, published, _, _), ref in rows:
        raw = {"ipset": ref_ipset, "nftables": ref_nft}.get(b, ref_iptc)
        vs = f"{applied / ref[0]:.2f}" if ref is not None else ""
        print(
            f"{what:<34} {applied:>9.3f} {lifted:>9.3f} {published:>9.3f} {args.bans / applied:>10.0f}"
            f" {applied / base:>8.2f} {applied / raw:>10.1f} {vs:>9}"
        )
    pad = f"{'':>9} {'':>9}"
    print(f"{'raw: ipset restore (one batch)':<34} {ref_ipset:>9.3f} {pad} {args.bans / ref_ipset:>10.0f}")
    print(f"{'raw: python-iptables, one commit':<34} {ref_iptc:>9.3f} {pad} {args.bans / ref_iptc:>10.0f}")
    print(f"{'raw: nft -f (one batch)':<34} {ref_nft:>9.3f} {pad} {args.bans / ref_nft:>10.0f}")
    print("apply s: from the first record produced to all in the kernel; publish s: to the producer's flush")
    for b, (applied, _, _, _, _) in results.items():
        print(
            f"target {b} < 0.5 s for {args.bans}: {'met' if applied < 0.5 else 'NOT met'} ({applied:.3f} s)"
        )
    if args.delays:
        print(
            f"\nenforce delay, {args.delays} bans one at a time (decision time -> applied report time), ms\n"
        )
        print(f"{'what':<34} {'p50':>7} {'p99':>7} {'max':>7} {'x before p50':>13}")
        drows = [(f"enforcer, backend {b}", r[3], before.get(b)) for b, r in results.items()]
        drows += [(f"before: enforcer, backend {b}", r[3], None) for b, r in before.items()]
        for what, ds, ref in drows:
            p50, p99 = percentile(ds, 50), percentile(ds, 99)
            vs = f"{p50 / percentile(ref[3], 50):.2f}" if ref is not None else ""
            print(f"{what:<34} {p50 * 1e3:>7.2f} {p99 * 1e3:>7.2f} {max(ds) * 1e3:>7.2f} {vs:>13}")
        for b, r in results.items():
            p50, p99 = percentile(r[3], 50), percentile(r[3], 99)
            ok = p50 < 0.003 and p99 < 0.010
            print(f"target {b} p50 < 3 ms, p99 < 10 ms: {'met' if ok else 'NOT met'}")
        print(
            "\nof which (the enforcer's histograms, bucket upper bounds, ms): own = reading the batch to its"
            " reports produced;\nhop = the bans record's timestamp to the enforcer reading it (Kafka)\n"
        )
        print(f"{'what':<34} {'own p50':>8} {'own p99':>8} {'hop p50':>8} {'hop p99':>8}")
        orows = [(f"enforcer, backend {b}", r[4]) for b, r in results.items()]
        orows += [(f"before: enforcer, backend {b}", r[4]) for b, r in before.items()]
        for what, own in orows:
            cells = [own.get(k) for k in ("own p50", "own p99", "hop p50", "hop p99")]
            print(f"{what:<34} " + " ".join(f"{'-' if c is None else f'<={c * 1e3:g}':>8}" for c in cells))
    if "ipset" in results:
        ok = results["ipset"][0] < 2.0
        print(f"\ntarget ipset < 2 s for 10,000: {'met' if ok else 'NOT met'} ({results['ipset'][0]:.2f} s)")
    return 0
