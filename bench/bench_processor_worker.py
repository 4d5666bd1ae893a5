"""Processor worker: one/two Faust workers on a local 3-node Kafka, lines/s and records/s, decision delay.

Scenarios (a fresh set of topics each, 6 partitions, the backlog produced before the workers start):
- flood: 100 attacker IPs over 3 hosts, records of ``--lines-per-record`` lines (a shipper batches a
  flooding client's lines per 10 ms flush): failure lines/s and records/s through one worker;
- distinct: ``--ips`` background IPs, one line per record: records/s for one worker, then two;
- delay: at low load, the 20th failure of a fresh IP produced -> its decision read back (p50/p99), over
  ``--trials`` trials.
References measured in the same run: the same logic (decode + jail core + produce decisions) in a plain
confluent-kafka loop over the same backlog, and a bare produce -> consume round trip for the delay.
On a shared machine lines/s follow how much of a core each process got: the distinct-addresses rows are
also given per CPU-second (the bench process's CPU time for the core and the loop, the worker's own from
``/proc`` for the worker), which does not.

Usage: python -m bench processor_worker [--flood-lines N] [--ips N] [--trials N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import yaml
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from bench._kafka import bench_cluster
from bench.pyspy import Recording, components, top_self
from fleet2ban.contract import (
    AddressLine,
    EventBatch,
    EventsRecord,
    Line,
    decode_events,
    encode,
    partition_for,
    utcnow,
)
from fleet2ban.kafka import Cluster, consumer_config, ensure_topics, producer_config, resolve
from fleet2ban.kafka.local import free_port
from fleet2ban.settings import JailSettings, KafkaSettings
from processor.app import outputs_to_records
from processor.engine import Engine
from processor.policy import Output, Policy

PARTITIONS = 6


def fresh(bootstrap: str) -> Cluster:
    ks = KafkaSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"b{uuid.uuid4().hex[:6]}.",
        partitions=PARTITIONS,
        replication_factor=min(3, len(bootstrap.split(","))),
    )
    c = resolve(ks)
    ensure_topics(c)
    return c


def fill(cluster: Cluster, records: list[tuple[bytes, bytes]]) -> None:
    p = Producer(producer_config(cluster, linger_ms=20, **{"batch.num.messages": 2000}))
    for key, value in records:
        while True:
            try:
                p.produce(cluster.topics.events, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)


def flood_records(lines: int, per_record: int) -> list[tuple[bytes, bytes]]:
    out = []
    n = 0
    hosts = ("amps-1", "amps-2", "amps-3")
    while n < lines:
        for a in range(100):
            ip = f"203.0.113.{a + 1}"
            host = hosts[(n // per_record) % 3]
            ts = utcnow()
            batch = EventBatch(
                host=host,
                ip=ip,
                lines=[
                    Line(id=f"{host}:f:{n + i}", ts=ts, port=40000, client="x", reason="auth")
                    for i in range(per_record)
                ],
            )
            out.append((ip.encode(), encode(batch)))
            n += per_record
            if n >= lines:
                break
    return out


def distinct_records(
    ips: int, round_lines: int, lines: int | None = None
) -> tuple[list[tuple[bytes, bytes]], int]:
    """A distributed attack as three shippers send it: ``lines`` failures (default: one per address)
    from ``ips`` addresses in turn, each line read by one of three hosts; every ``round_lines`` lines a
    host read make a round, sent as one v2 record per partition. Returns (records, lines)."""
    ts = utcnow()
    hosts = ("amps-1", "amps-2", "amps-3")
    addrs = [f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(ips)]
    parts = [partition_for(ip, PARTITIONS) for ip in addrs]
    total = ips if lines is None else lines
    out: list[tuple[bytes, bytes]] = []
    pending: dict[str, dict[int, list[AddressLine]]] = {h: {} for h in hosts}
    counts = dict.fromkeys(hosts, 0)

    def flush(host: str) -> None:
        for recs in pending[host].values():
            out.append((recs[0].ip.encode(), encode(EventsRecord(host=host, lines=recs))))
        pending[host] = {}
        counts[host] = 0

    for n in range(total):
        i = n % ips
        host = hosts[n % 3]
        ln = AddressLine(addrs[i], f"{host}:d:{n}", ts, 40000, "c", "auth", "")
        pending[host].setdefault(parts[i], []).append(ln)
        counts[host] += 1
        if counts[host] >= round_lines:
            flush(host)
    for h in hosts:
        flush(h)
    return out, total


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_alone(recs: list[tuple[bytes, bytes]]) -> tuple[float, int]:
    """The reference without Kafka: the records decoded and fed to the core, as the worker does."""
    engine = Engine(Policy.from_settings([JailSettings()], 5.0))
    out: list[Output] = []
    lines = 0
    t0 = time.perf_counter()
    for _key, value in recs:
        evs = decode_events(value)
        lines += len(evs)
        engine.feed_record(evs, out)
        out.clear()
    return time.perf_counter() - t0, lines


def plain_loop(cluster: Cluster, n_records: int) -> tuple[float, int]:
    """The reference: confluent consumer (assign, from the beginning), decode, core, produce decisions."""
    from confluent_kafka import OFFSET_BEGINNING

    c = Consumer(consumer_config(cluster, **{"enable.partition.eof": False}))
    c.assign([TopicPartition(cluster.topics.events, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    prod = Producer(producer_config(cluster, linger_ms=5))
    engine = Engine(Policy.from_settings([JailSettings()], 5.0))
    out: list[Output] = []
    seen = lines = 0
    t0 = None
    while seen < n_records:
        for msg in c.consume(1000, 0.5):
            if msg.error():
                continue
            if t0 is None:
                t0 = time.perf_counter()
            seen += 1
            evs = decode_events(msg.value())
            lines += len(evs)
            engine.feed_record(evs, out)
            if out:
                for kind, key, value in outputs_to_records(out):
                    prod.produce(getattr(cluster.topics, kind), key=key, value=value)
                out.clear()
            prod.poll(0)
    prod.flush(10)
    c.close()
    assert t0 is not None
    return time.perf_counter() - t0, lines


class Workers:
    def __init__(self, cluster: Cluster, tmp: Path, n: int) -> None:
        self.ports = [free_port() for _ in range(n)]
        self.procs = []
        for i, port in enumerate(self.ports):
            cfg = tmp / f"w{i}.yaml"
            cfg.write_text(
                yaml.safe_dump(
                    {
                        "kafka": {"partitions": PARTITIONS},
                        "state_dir": str(tmp / "state"),
                        "metrics": {"port": port, "bind": "127.0.0.1"},
                        "log": {"level": "WARNING"},
                    }
                )
            )
            args = [sys.executable, "-m", "fleet2ban.cli.main", "-c", str(cfg), "-b", cluster.bootstrap]
            args += ["--topic-prefix", cluster.settings.topic_prefix, "processor"]
            log = open(tmp / f"w{i}.log", "ab")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
            )

    def cpu(self) -> float:
        """CPU seconds the workers have used so far."""
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def counters(self) -> tuple[float, float]:
        recs = lines = 0.0
        for port in self.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
            recs += sum(float(x) for x in re.findall(r"^fleet2ban_processor_records_total (\S+)", text, re.M))
            lines += sum(float(x) for x in re.findall(r"^fleet2ban_processor_lines_total (\S+)", text, re.M))
        return recs, lines

    def ready(self, cluster: Cluster, timeout: float = 90.0) -> float:
        """Probe every partition until every worker has consumed something; return the records so far."""
        from processor.app import murmur2_partition

        keys: dict[int, bytes] = {}
        i = 0
        while len(keys) < PARTITIONS:
            ip = f"192.0.2.{i + 1}"
            keys.setdefault(murmur2_partition(ip.encode(), PARTITIONS), ip.encode())
            i += 1
        prod = Producer(producer_config(cluster, linger_ms=0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key in keys.values():
                line = Line(id=f"probe:{uuid.uuid4().hex}", ts=utcnow(), port=1, client="c", reason="probe")
                batch = EventBatch(host="p", ip=key.decode(), lines=[line])
                prod.produce(cluster.topics.events, key=key, value=encode(batch))
            prod.flush(5)
            time.sleep(0.5)
            if all(self._records(port) > 0 for port in self.ports):
                time.sleep(1.0)
                return self.counters()[0]
        raise TimeoutError("the workers did not all start consuming")

    def _records(self, port: int) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        return sum(float(x) for x in re.findall(r"^fleet2ban_processor_records_total (\S+)", text, re.M))

    def run_until(
        self, n_records: float, base: float = 0.0, timeout: float = 600.0
    ) -> tuple[float, float, float]:
        """(seconds from the first record past ``base`` to the last, records, lines)."""
        t_first = None
        r0 = l0 = 0.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs, lines = self.counters()
            now = time.perf_counter()
            if t_first is None and recs > base:
                t_first, r0, l0 = now, recs, lines
            if t_first is not None and recs >= base + n_records:
                return now - t_first, recs - r0, lines - l0
            time.sleep(0.05)
        raise TimeoutError(f"workers processed {self.counters()} of {n_records} records")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def delay_trials(cluster: Cluster, trials: int, workers: Workers) -> list[float]:
    """ms from producing the 20th failure of a fresh IP to reading its decision."""
    prod = Producer(producer_config(cluster, linger_ms=0))
    cons = Consumer(consumer_config(cluster, **{"enable.partition.eof": False, "fetch.wait.max.ms": 10}))
    cons.assign([TopicPartition(cluster.topics.decisions, p, OFFSET_END) for p in range(PARTITIONS)])
    cons.consume(10, 0.5)
    out = []
    for i in range(trials):
        ip = f"198.18.{i // 250}.{i % 250 + 1}"
        lines = [Line(id=f"d:{i}:{k}", ts=utcnow(), port=1, client="c", reason="auth") for k in range(19)]
        prod.produce(
            cluster.topics.events, key=ip.encode(), value=encode(EventBatch(host="h", ip=ip, lines=lines))
        )
        prod.flush(5)
        time.sleep(0.3)
        last = Line(id=f"d:{i}:19", ts=utcnow(), port=1, client="c", reason="auth")
        t0 = time.perf_counter()
        prod.produce(
            cluster.topics.events, key=ip.encode(), value=encode(EventBatch(host="h", ip=ip, lines=[last]))
        )
        prod.flush(5)
        found = False
        deadline = time.monotonic() + 10
        while not found and time.monotonic() < deadline:
            msg = cons.poll(0.05)
            if msg is not None and not msg.error() and msg.key() == ip.encode():
                found = True
        if found:
            out.append((time.perf_counter() - t0) * 1000)
    cons.close()
    return out


def roundtrip_trials(cluster: Cluster, trials: int) -> list[float]:
    """The reference delay: produce one record, read it back (no processor)."""
    prod = Producer(producer_config(cluster, linger_ms=0))
    cons = Consumer(consumer_config(cluster, **{"enable.partition.eof": False, "fetch.wait.max.ms": 10}))
    topic = cluster.topics.reports
    cons.assign([TopicPartition(topic, p, OFFSET_END) for p in range(PARTITIONS)])
    cons.consume(10, 0.5)
    out = []
    for i in range(trials):
        time.sleep(0.05)
        key = f"rt{i}".encode()
        t0 = time.perf_counter()
        prod.produce(topic, key=key, value=b"{}")
        prod.flush(5)
        found = False
        while not found:
            msg = cons.poll(0.05)
            if msg is not None and not msg.error() and msg.key() == key:
                found = True
        out.append((time.perf_counter() - t0) * 1000)
    cons.close()
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench processor_worker")
    ap.add_argument("--flood-lines", type=int, default=300_000)
    ap.add_argument("--lines-per-record", type=int, default=50)
    ap.add_argument("--ips", type=int, default=10_000)
    ap.add_argument(
        "--attack-lines",
        type=int,
        default=None,
        help="lines of the distributed attack (default: 19 per address, each just below maxretry: no bans)",
    )
    ap.add_argument(
        "--round-lines", type=int, default=300, help="lines one host reads per round (shipper batching)"
    )
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument(
        "--profile", action="store_true", help="py-spy the 1-worker distinct-IPs run: where the time goes"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.flood_lines, args.ips, args.attack_lines, args.trials = 5_000, 500, 3_000, 3
    if args.attack_lines is None:
        args.attack_lines = 19 * args.ips
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as d, bench_cluster() as broker:
        tmp = Path(d)
        profile = tmp / "worker.pyspy" if args.profile else None

        cpu: dict[str, float] = {}
        """CPU seconds of the last distinct-addresses runs (core, loop, workers): the machine may be shared,
        and lines per CPU-second do not depend on how much of a core each process got."""

        def through_workers(
            n_workers: int, recs: list[tuple[bytes, bytes]], profile: Path | None = None
        ) -> tuple[float, float, float]:
            """Start workers on fresh topics, wait until each consumes, then produce and time the backlog
            (``cpu["workers"]``: the workers' CPU seconds meanwhile)."""
            c = fresh(broker.bootstrap)
            w = Workers(c, tmp, n_workers)
            rec = None
            try:
                base = w.ready(c)
                if profile is not None:
                    rec = Recording(w.procs[0].pid, profile).start()
                c0 = w.cpu()
                fill(c, recs)
                got = w.run_until(len(recs), base)
                cpu["workers"] = w.cpu() - c0
                return got
            finally:
                if rec is not None:
                    rec.stop()
                w.stop()

        def reference(recs: list[tuple[bytes, bytes]]) -> tuple[float, int]:
            c = fresh(broker.bootstrap)
            fill(c, recs)
            c0 = time.process_time()
            got = plain_loop(c, len(recs))
            cpu["loop"] = time.process_time() - c0
            return got

        # --- flood
        recs = flood_records(args.flood_lines, args.lines_per_record)
        ref_s, ref_lines = reference(recs)
        secs, n_rec, n_lines = through_workers(1, recs)
        ref_rate = ref_lines / ref_s
        rows.append(
            (
                "flood, plain loop (reference)",
                f"{ref_rate:,.0f} lines/s",
                f"{len(recs) / ref_s:,.0f} rec/s",
                "1.00",
            )
        )
        rows.append(
            (
                "flood, 1 Faust worker",
                f"{n_lines / secs:,.0f} lines/s",
                f"{n_rec / secs:,.0f} rec/s",
                f"{n_lines / secs / ref_rate:.3f}",
            )
        )
        # --- a distributed attack from distinct addresses, 1 then 2 workers
        recs, n_attack = distinct_records(args.ips, args.round_lines, args.attack_lines)
        c0 = time.process_time()
        core_s, _ = core_alone(recs)
        cpu["core"] = time.process_time() - c0
        core_rate = n_attack / core_s
        ref_s, _ = reference(recs)
        ref_rate = n_attack / ref_s
        per_rec = n_attack / len(recs)
        label = f"{args.ips:,} addresses"
        rows.append((f"{label}, core alone (reference)", f"{core_rate:,.0f} lines/s", "", "1.00"))
        rows.append(
            (
                f"{label}, plain loop (reference)",
                f"{ref_rate:,.0f} lines/s",
                f"{len(recs) / ref_s:,.0f} rec/s",
                f"{ref_rate / core_rate:.3f}",
            )
        )
        results: dict[int, float] = {}
        per_cpu: dict[int, float] = {}
        for n_workers in (1, 2):
            secs, n_rec, n_lines = through_workers(n_workers, recs, profile if n_workers == 1 else None)
            results[n_workers] = n_lines / secs
            per_cpu[n_workers] = n_lines / cpu["workers"] if cpu["workers"] else 0.0
            rows.append(
                (
                    f"{label}, {n_workers} Faust worker(s)",
                    f"{results[n_workers]:,.0f} lines/s",
                    f"{n_rec / secs:,.0f} rec/s",
                    f"{results[n_workers] / ref_rate:.3f} loop, {results[n_workers] / core_rate:.3f} core",
                )
            )
        rows.append((f"  ({per_rec:.1f} lines per record)", "", "", ""))
        if cpu["core"] and cpu["loop"] and per_cpu[1]:
            core_cpu, loop_cpu = n_attack / cpu["core"], n_attack / cpu["loop"]
            rows.append((f"{label}, core alone, per CPU-second", f"{core_cpu:,.0f} lines/s", "", "1.00"))
            rows.append(
                (
                    f"{label}, plain loop, per CPU-second",
                    f"{loop_cpu:,.0f} lines/s",
                    "",
                    f"{loop_cpu / core_cpu:.3f}",
                )
            )
            rows.append(
                (
                    f"{label}, 1 worker, per CPU-second",
                    f"{per_cpu[1]:,.0f} lines/s",
                    "",
                    f"{per_cpu[1] / loop_cpu:.3f} loop, {per_cpu[1] / core_cpu:.3f} core",
                )
            )
        rows.append(("scaling: 2 workers / 1 worker", "", "", f"{results[2] / results[1]:.2f}"))
        # --- decision delay at low load
        c = fresh(broker.bootstrap)
        rt = roundtrip_trials(c, args.trials)
        w = Workers(c, tmp, 1)
        try:
            w.ready(c)
            delays = delay_trials(c, args.trials, w)
        finally:
            w.stop()
        rows.append(
            (
                "round trip, no processor (reference)",
                f"p50 {pct(rt, 0.5):.1f} ms",
                f"p99 {pct(rt, 0.99):.1f} ms",
                "1.00",
            )
        )
        if delays:
            rows.append(
                (
                    f"decision delay, 1 worker ({len(delays)}/{args.trials})",
                    f"p50 {pct(delays, 0.5):.1f} ms",
                    f"p99 {pct(delays, 0.99):.1f} ms",
                    f"{statistics.median(delays) / statistics.median(rt):.2f}",
                )
            )
        profile_rows = profile_table(profile) if profile is not None and profile.exists() else []
    print(f"\n{'scenario':<44} {'lines':>18} {'records / delay':>18} {'x reference':>24}")
    for r in rows:
        print(f"{r[0]:<44} {r[1]:>18} {r[2]:>18} {r[3]:>24}")
    for line in profile_rows:
        print(line)
    return 0


def profile_table(path: Path) -> list[str]:
    """py-spy's view of the 1-worker distinct-IPs run (CPU samples holding the GIL)."""
    title = "where the worker's CPU goes (py-spy --gil, distinct IPs)"
    lines = ["", f"{title:<64} {'share':>8}"]
    lines += [f"{name:<64} {share:>8.1%}" for name, share in components(path)]
    lines += ["", f"{'hottest functions (self)':<64} {'share':>8}"]
    lines += [f"{name[:64]:<64} {share:>8.1%}" for name, share in top_self(path)]
    return lines
