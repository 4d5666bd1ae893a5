"""kill -9 of a broker that leads an ``events`` and a ``bans`` partition in the middle of a flood.

The whole pipeline on its own 3-node Kafka (replication 3, min.insync.replicas 2): three shippers (one per
host, each tailing its own AMPS log), a processor worker (a ``fleet2ban processor`` process) and three
enforcers (the agent with the dryrun backend, one per host). Attackers spread 20 failures each over the
three hosts, staggered so that bans are decided all through the flood, among lines no jail counts. In the
middle, the broker leading an events partition and a bans partition (found in the metadata) is killed.

Counted end to end: every line written to the logs is in ``events`` (by line id); every attacker is banned
once with exactly 20 failures (a lost failure line leaves it at 19, unbanned), and never twice; every ban
is applied on every host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from enforcer.agent import Agent
from enforcer.backends.dryrun import DryRunBackend
from enforcer.plan import JailSpec
from fleet2ban.contract import decode_decision, decode_events_record
from fleet2ban.kafka import Cluster, admin_config, ensure_topics, read_to_end, resolve
from fleet2ban.kafka.local import LocalKafka
from fleet2ban.settings import (
    EnforcerSettings,
    JailSettings,
    KafkaSettings,
    MetricsSettings,
    Settings,
    ShipperSettings,
)
from fleet2ban.waiting import wait_for
from shipper.ship import Shipper

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(240)]

HOSTS = ("h1", "h2", "h3")
ATTACKERS = [f"203.0.113.{n}" for n in range(1, 25)]
ROUND_S = 0.1
KILL_AT_ROUND = 25
JAIL = {"name": "amps", "reasons": ["auth"], "maxretry": 20, "findtime": 120, "bantime": 900}


def amps_line(ip: str, n: int, reason: str) -> bytes:
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"
    return f"{ts} [7] info: 07-0013 client[c{n}]({ip}:{1024 + n % 60000}) disconnected: {reason}.\n".encode()


def leaders(cluster: Cluster, topic: str) -> dict[int, int]:
    """partition -> node id of its leader (confluent-kafka AdminClient metadata)."""
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({**admin_config(cluster), "log_level": 0}).list_topics(topic, timeout=10)
    return {p: pm.leader for p, pm in meta.topics[topic].partitions.items()}


GROUP = "faults.fleet2ban-processor"


def coordinator(cluster: Cluster, group: str) -> int:
    """The node id of ``group``'s coordinator."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**admin_config(cluster), "log_level": 0})
    (fut,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    return int(fut.result(15).coordinator.id)


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    # the controller fences a dead broker after its session (9 s by default): 6 s here
    overrides = {"broker.session.timeout.ms": "6000", "broker.heartbeat.interval.ms": "1000"}
    with LocalKafka(3, data_dir=tmp_path / "kafka", overrides=overrides) as k:
        yield k


def test_leader_kill_9_in_a_flood_loses_no_line_and_bans_once_everywhere(  # noqa: C901  # one end-to-end fault scenario, its steps in order
    kafka: LocalKafka, tmp_path: Path
) -> None:
    ks = KafkaSettings(
        bootstrap_servers=kafka.bootstrap, topic_prefix="faults.", partitions=3, replication_factor=3
    )
    cluster = resolve(ks)
    ensure_topics(cluster)
    topics = cluster.topics
    stop = threading.Event()
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def spawn(name: str, target: object) -> None:
        def run() -> None:
            try:
                target()  # type: ignore[operator]
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        threads.append(t)

    # the processor, a separate process (its own group, changelog and producer)
    config = {
        "kafka": {"partitions": 3, "replication_factor": 3},
        "jails": [JAIL],
        "processor": {"expiry_interval_s": 0.5},
        "state_dir": str(tmp_path / "state"),
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "FLEET2BAN_CONFIG"}
    cmd = [sys.executable, "-m", "fleet2ban.cli.main", "-c", str(tmp_path / "p.yaml"), "-b", kafka.bootstrap]
    cmd += ["--topic-prefix", ks.topic_prefix, "processor", "--metrics-port", "0"]
    with open(tmp_path / "processor.log", "wb") as out:
        worker = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    shippers: list[Shipper] = []
    backends: dict[str, DryRunBackend] = {}
    agents: list[Agent] = []
    logs = {h: tmp_path / f"{h}.log" for h in HOSTS}
    try:
        for host in HOSTS:
            logs[host].write_bytes(b"")
            settings = Settings(
                kafka=ks,
                jails=[JailSettings(**JAIL)],
                shipper=ShipperSettings(log_path=logs[host], host=host, from_start=True),
                enforcer=EnforcerSettings(backend="dryrun", host=host, reconcile_interval_s=2.0),
                metrics=MetricsSettings(heartbeat_interval_s=1.0),
                state_dir=tmp_path / "state",
            )
            ship = Shipper(settings, cluster)
            shippers.append(ship)
            spawn(f"shipper-{host}", lambda s=ship: s.run(stop))
            backends[host] = DryRunBackend([JailSpec("amps", (9007,))], settings.enforcer)
            agent = Agent(settings, cluster, backends[host])
            agents.append(agent)
            spawn(f"enforcer-{host}", agent.run)
        wait_for(lambda: all(a.synced for a in agents), 30, "the enforcers to read bans to its end")

        def consuming() -> bool:
            assert worker.poll() is None, (tmp_path / "processor.log").read_text()[-3000:]
            return "partitions assigned: events=[0, 1, 2]" in (tmp_path / "processor.log").read_text()

        wait_for(consuming, 60, "the processor to consume every events partition")

        written: Counter[str] = Counter()
        n = 0
        victim: int | None = None
        killed_at = 0.0
        rounds = len(ATTACKERS) + 19
        for r in range(rounds):
            for host in HOSTS:  # lines no jail counts, on every host
                with open(logs[host], "ab") as f:
                    for _ in range(10):
                        f.write(amps_line(f"198.51.100.{n % 200 + 1}", n, "connection closed"))
                        n += 1
                        written[host] += 1
            for i, ip in enumerate(ATTACKERS):  # attacker i fails once a round in rounds i..i+19
                if i <= r < i + 20:
                    host = HOSTS[(r + i) % 3]
                    with open(logs[host], "ab") as f:
                        f.write(amps_line(ip, n, "auth"))
                    n += 1
                    written[host] += 1
            if r == KILL_AT_ROUND:
                ev, bn = leaders(cluster, topics.events), leaders(cluster, topics.bans)
                # not the processor group's coordinator: a worker whose coordinator is killed has been
                # seen to stop processing for good (aiokafka: session expired, no rejoin within 90 s);
                # that is a separate finding, not what this test is about
                both = sorted(set(ev.values()) & set(bn.values()) - {coordinator(cluster, GROUP)})
                assert both, f"no broker but the coordinator leads an events and a bans partition: {ev} {bn}"
                victim = both[0]
                kafka.kill(victim)
                killed_at = time.monotonic()
            time.sleep(ROUND_S)  # the flood's pace (lines keep coming while the leader is gone)
        assert victim is not None

        def all_shipped() -> bool:
            return all(s.stats.events_shipped >= written[s.host] for s in shippers)

        wait_for(all_shipped, 90, f"every line acknowledged ({written})")
        shipped_s = time.monotonic() - killed_at

        # every line in events, once or more (a resent line keeps its id)
        ids: Counter[str] = Counter()
        for rec in read_to_end(cluster, topics.events, timeout=30):
            if rec.value is not None:
                ids.update(ln.id for ln in decode_events_record(rec.value).lines)
        assert len(ids) == sum(written.values()), (len(ids), written)

        def decisions() -> list:  # type: ignore[type-arg]
            return [decode_decision(r.value) for r in read_to_end(cluster, topics.decisions, timeout=30)]

        def all_banned() -> bool:
            return {d.ip for d in decisions()} >= set(ATTACKERS)

        wait_for(all_banned, 90, "every attacker banned")
        banned_s = time.monotonic() - killed_at
        want = {("amps", ip) for ip in ATTACKERS}
        wait_for(lambda: all(want <= set(b.entries) for b in backends.values()), 60, "bans on every host")
        applied_s = time.monotonic() - killed_at
        got = decisions()
        # One decision record per attacker, counted by record: the worker's producer is idempotent (issue
        # 15), so a send retried after the kill (the record replicated, its acknowledgement lost) is not
        # written a second time, as it was once in CI before (one "ban" log line, two records of its id).
        per_ip = Counter(d.ip for d in got)
        assert all(per_ip[ip] == 1 for ip in ATTACKERS) and len(got) == len(ATTACKERS), per_ip
        assert all(d.failures == 20 and d.action == "ban" for d in got), [d for d in got if d.failures != 20]
        assert len({d.id for d in got}) == len(got)
        pids = {t: set(kafka.producer_ids(t)) for t in (topics.decisions, topics.bans)}
        assert all(p and min(p) >= 0 for p in pids.values()), pids  # every batch: an idempotent producer
        assert not errors, errors
        assert worker.poll() is None, (tmp_path / "processor.log").read_text()[-3000:]
        print(
            f"broker {victim} killed at round {KILL_AT_ROUND}: all {sum(written.values())} lines acked"
            f" {shipped_s:.1f}s after the kill, {len(ATTACKERS)} bans decided by {banned_s:.1f}s,"
            f" applied on {len(HOSTS)} hosts by {applied_s:.1f}s; {sum(ids.values()) - len(ids)} lines"
            " shipped twice"
        )
    finally:
        stop.set()
        for agent in agents:
            agent.stop_event.set()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        for t in threads:
            t.join(20)
