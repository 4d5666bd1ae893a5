"""``fleet2ban bans import`` of N addresses (a blocklist file), end to end, against a raw produce loop.

On a local 3-node Kafka (acks=all): the command as an operator runs it (a new process: start-up, reading
and checking every address with the rails, writing the manual ban decisions and waiting for every
acknowledgement), then the decisions it wrote counted back. The reference, measured in the same run: a
plain confluent-kafka producer writing the same number of decision records of the same size to the same
topic and waiting for their acknowledgements (what any importer pays to Kafka).

Usage: python -m bench import [--bans N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

from bench._kafka import bench_cluster
from fleet2ban.kafka import producer_config, read_to_end


def addresses(n: int) -> list[str]:
    """``n`` distinct public-looking IPv4 addresses (TEST-NET blocks excluded by no rail)."""
    out = []
    for i in range(n):
        out.append(f"{11 + i // 65536 % 200}.{i // 256 % 256}.{i % 256}.{1 + i % 250}")
    return list(dict.fromkeys(out))[:n]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench import", description=__doc__)
    ap.add_argument("--bans", type=int, default=100_000)
    args = ap.parse_args(argv)
    addrs = addresses(args.bans)
    with tempfile.TemporaryDirectory() as tmp, bench_cluster() as broker:
        blocklist = Path(tmp) / "blocklist.txt"
        blocklist.write_text("".join(f"{a}\n" for a in addrs))
        cluster = broker.fresh_topics("i")
        prefix = cluster.settings.topic_prefix
        env = {k: v for k, v in os.environ.items() if k != "FLEET2BAN_CONFIG"}
        cmd = [sys.executable, "-m", "fleet2ban.cli.main", "-b", broker.bootstrap, "--topic-prefix", prefix]
        cmd += ["bans", "import", str(blocklist), "--format", "lines", "--ttl", "1h", "--by", "bench"]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
        took = time.perf_counter() - t0
        if run.returncode != 0:
            print(run.stdout[-2000:], run.stderr[-2000:], file=sys.stderr)
            return 1
        written = [r for r in read_to_end(cluster, cluster.topics.decisions, timeout=120) if r.value]
        size = sum(len(r.value or b"") for r in written) // max(1, len(written))

        # the reference: the same number of records of the same size, one producer, acks=all
        ref_topic = cluster.topics.decisions
        producer = Producer(producer_config(cluster, linger_ms=5))
        value = b"x" * size
        t0 = time.perf_counter()
        for i, a in enumerate(addrs):
            while True:
                try:
                    producer.produce(ref_topic, key=a.encode(), value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 1000 == 0:
                producer.poll(0)
        left = producer.flush(120)
        ref = time.perf_counter() - t0
        if left:
            print(f"reference: {left} records not acknowledged", file=sys.stderr)
            return 1
    print(
        f"{len(addrs):,} addresses imported as manual bans (a blocklist file, --ttl 1h), 3-node Kafka acks=all"
    )
    print(f"{'':38}  {'seconds':>8}  {'records/s':>10}  ratio")
    print(
        f"{'fleet2ban bans import (whole command)':38}  {took:8.2f}  {len(written) / took:10,.0f}  {took / ref:.2f}x"
    )
    print(f"{'raw produce loop (reference)':38}  {ref:8.2f}  {len(addrs) / ref:10,.0f}  1.00x")
    print(f"decisions written by the import: {len(written):,} (average {size} bytes)")
    return 0 if len(written) == len(addrs) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
