"""``fleet2ban enforcer`` as its own process inside the host's namespace, fed through the local Kafka cluster.

The broker listens on the root namespace's loopback, which a namespace cannot reach; the fleet's
forwarder (fleet2ban.dev.netns.Fleet.forward) listens on 127.0.0.1:PORT *inside* the host namespace and
relays to the broker, so the enforcer uses the broker's own bootstrap and advertised address unchanged.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from enforcer_helpers import BansWriter, FwFleet, ReportsReader, fw, wait_for

from fleet2ban.kafka import Cluster

__all__ = ["fw"]

pytestmark = [pytest.mark.netns, pytest.mark.kafka, pytest.mark.slow]

FLEET2BAN = str(Path(sys.executable).with_name("fleet2ban"))
IGNORED = "192.0.2.0/24"


@pytest.fixture(scope="module")
def forwarded(fw: FwFleet, kafka_bootstrap: str) -> str:
    for addr in kafka_bootstrap.split(","):  # every broker advertises 127.0.0.1:ITS_PORT
        fw.fleet.forward(fw.h1, int(addr.rsplit(":", 1)[1]))
    return kafka_bootstrap


Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_enforcer(fw: FwFleet, forwarded: str, cluster: Cluster, tmp_path: Path) -> Iterator[Start]:
    config = tmp_path / "fleet2ban.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "jails": [{"name": "amps", "ports": [9007], "ignoreip": [IGNORED]}],
                "metrics": {"heartbeat_interval_s": 0.5},
                "enforcer": {"host": "h1", "target": "REJECT", "reconcile_interval_s": 0.5},
            }
        )
    )
    procs: list[subprocess.Popen[bytes]] = []

    def start(backend: str, *extra: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"enforcer-{len(procs)}.log", "wb")  # noqa: SIM115
        argv = [
            FLEET2BAN,
            "-c",
            str(config),
            "-b",
            forwarded,
            "--topic-prefix",
            cluster.settings.topic_prefix,
        ]
        proc = fw.h1.popen([*argv, "enforcer", "--backend", backend, *extra], stdout=log, stderr=log)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for path in sorted(tmp_path.glob("enforcer-*.log")):
        sys.stderr.write(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}\n")
    fw.h1.run(
        [FLEET2BAN, "-c", str(config), "enforcer", "--backend", "ipset", "--uninstall"], capture_output=True
    )
    fw.h1.run(
        [FLEET2BAN, "-c", str(config), "enforcer", "--backend", "iptables", "--uninstall"],
        capture_output=True,
    )


def entries(fw: FwFleet, backend: str) -> set[str]:
    """The ban targets in the kernel, read with the system tools (not with our code)."""
    out: set[str] = set()
    for family in (4, 6):
        if backend == "ipset":
            text = fw.ipset("list", f"f2b-amps-{family}").stdout
            members = text.split("Members:", 1)[1] if "Members:" in text else ""
            out |= {line.split()[0] for line in members.splitlines() if line.strip()}
        else:
            for line in fw.legacy(family, "-S", "f2b-amps").splitlines():
                if line.startswith("-A f2b-amps -s "):
                    out.add(line.split()[3].rsplit("/", 1)[0])
    return out


@pytest.mark.parametrize("backend", ["ipset", "iptables"])
def test_enforcer_process_applies_refuses_expires_and_reconciles(
    backend: str, fw: FwFleet, cluster: Cluster, start_enforcer: Start
) -> None:
    writer = BansWriter(cluster)
    att4, att6 = fw.att.ipv4, fw.att.ipv6
    writer.ban(att6, expires_in=None)
    for bad in ("127.0.0.1", "::1", fw.h1.ipv4, "192.0.2.9", "0.0.0.0/0"):
        writer.ban(bad)
    writer.raw(b"amps|203.0.113.66", b"{garbage")
    proc = start_enforcer(backend)
    reader = ReportsReader(cluster)
    try:
        reader.wait(
            ("applied", att6),
            ("skipped", "127.0.0.1"),
            ("skipped", "::1"),
            ("skipped", fw.h1.ipv4),
            ("skipped", "192.0.2.9"),
            ("skipped", "0.0.0.0/0"),
            ("skipped", "203.0.113.66"),
            timeout=20,
        )
        assert entries(fw, backend) == {att6}  # nothing refused was applied
        # A live ban that expires on the enforcer's clock (and, for ipset, in the kernel): no tombstone.
        writer.ban(att4, expires_in=3)
        reader.wait(("applied", att4))
        assert entries(fw, backend) == {att4, att6}
        assert fw.blocked(fw.att, 4) and fw.blocked(fw.att, 6)
        assert fw.connects(fw.leg, 4) and fw.connects(fw.leg, 6)
        assert fw.connects(fw.att, 4, 9008)
        wait_for(lambda: fw.connects(fw.att, 4, attempts=1), timeout=10, what="the IPv4 ban to expire")
        reader.wait(("removed", att4))
        assert entries(fw, backend) == {att6}

        # Reconcile: a flushed chain, a deleted entry, a stray rule in the owned chain.
        fw.h1.run(["ip6tables-legacy", "-F", "f2b-amps"])
        wait_for(
            lambda: fw.blocked(fw.att, 6) and entries(fw, backend) == {att6}, what="the flushed chain back"
        )
        if backend == "ipset":
            fw.ipset("del", "f2b-amps-6", att6, check=True)
        else:
            fw.h1.run(["ip6tables-legacy", "-D", "f2b-amps", "-s", att6, "-p", "tcp", "-j", "REJECT",
                       "--reject-with", "tcp-reset"], check=True)  # fmt: skip
        wait_for(lambda: fw.blocked(fw.att, 6), what="the deleted entry back")
        fw.h1.run(["iptables-legacy", "-I", "f2b-amps", "-s", fw.leg.ipv4, "-j", "DROP"], check=True)
        wait_for(lambda: fw.leg.ipv4 not in fw.legacy(4, "-S", "f2b-amps"), what="the stray rule removed")
        assert entries(fw, backend) == {att6}

        writer.lift(att6)
        wait_for(lambda: fw.connects(fw.att, 6, attempts=1), what="the lifted ban removed")
        reader.wait(("removed", att6))
        assert entries(fw, backend) == set()

        def repaired() -> bool:  # the heartbeat counts the drift the reconciles repaired
            reader.poll()
            c = reader.heartbeats[-1].counters if reader.heartbeats else {}
            return c.get("corrections_missing", 0) >= 1 and c.get("corrections_structure", 0) >= 1

        wait_for(repaired, what="heartbeat counters of the repairs")
        assert all(hb.host == "h1" and hb.role == "enforcer" for hb in reader.heartbeats)
        assert all(r.backend == backend for r in reader.reports)

        show = fw.h1.run(
            [FLEET2BAN, "enforcer", "--backend", backend, "--show"], capture_output=True, text=True
        )
        assert show.returncode == 0 and "f2b-amps" in show.stdout
        assert "iptables-legacy" in show.stdout
    finally:
        reader.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


@pytest.mark.parametrize("backend", ["ipset", "iptables"])
def test_restart_with_empty_kernel_and_kill_9(
    backend: str, fw: FwFleet, cluster: Cluster, start_enforcer: Start
) -> None:
    writer = BansWriter(cluster)
    writer.ban(fw.att.ipv4, expires_in=None)
    proc = start_enforcer(backend)
    wait_for(lambda: fw.blocked(fw.att, 4), timeout=20, what="the ban applied")
    proc.kill()
    proc.wait()
    # An empty kernel (a reboot, or an operator's --uninstall): bans come back from the topic.
    out = fw.h1.run(
        [FLEET2BAN, "enforcer", "--backend", backend, "--uninstall"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "removed" in out.stdout, out.stderr
    assert fw.connects(fw.att, 4)
    proc = start_enforcer(backend)
    wait_for(lambda: fw.blocked(fw.att, 4), timeout=20, what="the ban back after a restart")

    # kill -9 while a ban is running: with ipset the kernel still lifts it on time.
    writer.ban(fw.att.ipv6, expires_in=4)
    wait_for(lambda: fw.blocked(fw.att, 6), what="the IPv6 ban applied")
    proc.kill()
    proc.wait()
    if backend == "ipset":
        wait_for(lambda: fw.connects(fw.att, 6, attempts=1), timeout=8, what="the kernel to expire the ban")
        assert fw.att.ipv6 not in entries(fw, backend)
    else:
        # A rule per ban has no kernel timeout: the next enforcer lifts it on its own clock.
        assert fw.blocked(fw.att, 6)
        proc = start_enforcer(backend)
        wait_for(
            lambda: fw.connects(fw.att, 6, attempts=1), timeout=20, what="the restarted enforcer to lift it"
        )
        assert fw.blocked(fw.att, 4)


def test_clear_errors_without_cap_net_admin_or_tools(tmp_path: Path) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to drop CAP_NET_ADMIN")
    drop = ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--"]
    argv = [FLEET2BAN, "enforcer", "--show", "--backend"]
    out = subprocess.run([*drop, *argv, "ipset"], capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert "CAP_NET_ADMIN" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([*drop, *argv, "dryrun"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "dryrun" in out.stdout
    # Without the ipset command (a PATH without the sbin directories).
    env = {**os.environ, "PATH": str(tmp_path)}
    out = subprocess.run([*argv, "ipset"], capture_output=True, text=True, check=False, env=env)
    assert out.returncode == 2
    assert "needs the 'ipset' command" in out.stderr and "Traceback" not in out.stderr
