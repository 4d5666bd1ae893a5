"""End to end with real packets: a spread attack over three hosts is banned on all three, then lifted.

Three host namespaces, an attacker and a legitimate client on one bridge; shippers, the processor and
enforcers run as separate processes against the local Kafka cluster (the dev fleet). Assertions are on TCP
connections observed from the clients' namespaces and on the topics, never on log text.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet2ban.audit.reader import iter_all
from fleet2ban.contract import ContractError, Decision, decode_ban, decode_decision
from fleet2ban.dev.fleet import Client, DevFleet, DevOptions
from fleet2ban.waiting import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(400)]

# A ban lasts bantime from the event time of its triggering failure (as fail2ban's do). The kill -9 test
# restarts the processor in the middle of the attack (~13 s with the local Kafka cluster's 6 s session
# timeout: the dead member's session expires first), so the ban must outlast that to be observed.
BANTIME = 25.0


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``cond``; return the seconds it took, or fail naming ``what``."""
    start = time.monotonic()
    wait_for(cond, timeout, what, every=0.1)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevFleet]:
    workdir = tmp_path_factory.mktemp("devfleet")
    opts = DevOptions(
        hosts=3,
        attackers=2,
        workdir=workdir,
        bantime=BANTIME,
        heartbeat_interval_s=0.5,
        reconcile_interval_s=2.0,
    )
    with DevFleet(opts) as f:
        assert f.use_netns and f.backend == "auto"
        wait_until(
            lambda: (
                _components(f)
                >= {("shipper", h.name) for h in f.hosts} | {("enforcer", h.name) for h in f.hosts}
            ),
            90,
            "every shipper and enforcer to report in",
        )
        yield f
        for child in f.supervisor.children.values():
            assert child.alive(), f"{child.name} died:\n{child.tail()}"


def _components(f: DevFleet) -> set[tuple[str, str]]:
    from fleet2ban.contract import Heartbeat, decode_report

    assert f.cluster is not None
    seen = set()
    for _key, value in iter_all(f.cluster, "reports", f.cluster.topics.reports):
        try:
            rec = decode_report(value)
        except ContractError:
            continue
        if isinstance(rec, Heartbeat):
            seen.add((rec.role, rec.host))
    return seen


def _decisions(f: DevFleet, ip: str) -> list[Decision]:
    assert f.cluster is not None
    out = []
    for _key, value in iter_all(f.cluster, "decisions", f.cluster.topics.decisions):
        d = decode_decision(value)
        if d.ip == ip:
            out.append(d)
    return out


def _ban_in_force(f: DevFleet, ip: str) -> bool:
    assert f.cluster is not None
    state: dict[bytes, bool] = {}
    for key, value in iter_all(f.cluster, "bans", f.cluster.topics.bans):
        if key is None:
            continue
        state[key] = value is not None and decode_ban(value).ip == ip
    return any(state.values())


def _blocked_everywhere(f: DevFleet, client: Client) -> bool:
    return not any(f.can_connect(client, h, timeout=0.3) for h in f.hosts)


def _open_everywhere(f: DevFleet, client: Client) -> bool:
    return all(f.can_connect(client, h, timeout=0.5) for h in f.hosts)


def _spread(f: DevFleet, client: Client, count: int) -> list[str]:
    """``count`` failed logons spread round-robin over the hosts (at most 7 per host for 21)."""
    return [a["outcome"] for a in f.run_client(client, "spreader", count, rate=200)]


def test_spread_attack_is_banned_on_every_host_then_lifted(fleet: DevFleet) -> None:
    att, legit = fleet.attackers[0], fleet.legit
    assert legit is not None
    assert _open_everywhere(fleet, att) and _open_everywhere(fleet, legit)

    outcomes = _spread(fleet, att, 21)  # 7 per host: no host alone reaches maxretry=20
    assert outcomes == ["auth"] * 21

    took = wait_until(
        lambda: _blocked_everywhere(fleet, att), 20, "the attacker to be blocked on all 3 hosts"
    )
    assert _open_everywhere(fleet, legit), "the legitimate client must still connect everywhere"
    (ban,) = [d for d in _decisions(fleet, att.address) if d.action == "ban"]
    assert set(ban.hosts) == {"h1", "h2", "h3"} and ban.failures >= 20 and ban.origin == "auto"
    assert ban.expires_at is not None and (ban.expires_at - ban.at).total_seconds() == pytest.approx(BANTIME)
    assert _ban_in_force(fleet, att.address)
    print(f"fleet-wide ban observed {took:.2f}s after the last failure was sent")

    wait_until(lambda: _open_everywhere(fleet, att), BANTIME + 20, "the ban to lift on every host")
    wait_until(
        lambda: any(d.action == "unban" for d in _decisions(fleet, att.address)), 10, "the unban decision"
    )
    wait_until(lambda: not _ban_in_force(fleet, att.address), 10, "the tombstone on the bans topic")


def test_each_component_killed_mid_attack_and_restarted(fleet: DevFleet) -> None:
    att, legit = fleet.attackers[1], fleet.legit
    assert legit is not None
    assert _open_everywhere(fleet, att)

    assert _spread(fleet, att, 9) == ["auth"] * 9  # 3 per host so far
    fleet.kill9("processor")  # mid-window: the count so far must survive
    fleet.kill9("shipper-h1")
    fleet.restart("processor")
    fleet.restart("shipper-h1")
    assert _spread(fleet, att, 6) == ["auth"] * 6
    fleet.kill9("enforcer-h2")
    fleet.restart("enforcer-h2")
    assert _spread(fleet, att, 6) == ["auth"] * 6  # 21 in all, 7 per host

    wait_until(
        lambda: _blocked_everywhere(fleet, att),
        60,
        "the attacker to be blocked on all 3 hosts after restarts",
    )
    assert _open_everywhere(fleet, legit)
    bans = [d for d in _decisions(fleet, att.address) if d.action == "ban"]
    assert len({d.id for d in bans}) == 1, f"one ban decision, not re-emitted: {bans}"
    assert set(bans[0].hosts) == {"h1", "h2", "h3"}

    def verified() -> bool:
        proc = subprocess.run(
            [sys.executable, "-m", "fleet2ban.cli.main", "audit", "verify", "--within", "10s", "--json"],
            env=fleet.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode == 0:
            return True
        print(proc.stdout[-2000:], proc.stderr[-2000:])
        assert proc.returncode == 1, proc.stderr
        json.loads(proc.stdout)
        return False

    wait_until(verified, 30, "`fleet2ban audit verify` to find no gap")


def test_dev_command_runs_and_cleans_up(tmp_path: Path) -> None:
    """`fleet2ban dev --duration N --json` brings the fleet up, bans attackers, and leaves nothing behind."""
    before = set(
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet2ban.cli.main",
            "dev",
            "--duration",
            "40",
            "--json",
            "--bantime",
            "10",
            "--attackers",
            "2",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["firewall"] == "auto"
    assert summary["decisions"].get("ban", 0) >= 2
    assert {"10.200.0.101", "10.200.0.102"} <= set(summary["banned_ips"])
    assert summary["legit_outcomes"].get("ok", 0) > 0
    assert set(summary["legit_outcomes"]) == {"ok"}, "the legitimate client is never blocked"
    after = set(
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    )
    assert not {n for n in after - before if n.startswith("dev")}, "dev left namespaces behind"
    leftovers = subprocess.run(
        ["pgrep", "-f", f"{tmp_path}"], capture_output=True, text=True, check=False
    ).stdout
    assert not leftovers.strip(), f"dev left processes behind: {leftovers}"
