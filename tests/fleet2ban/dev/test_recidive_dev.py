"""Repeat offenders on the dev fleet (issue #18 §4), with real packets: an attacker banned twice by the
amps jail is banned by the recidive jail (``source: bans``) on every host, and stays blocked after the
amps ban has lifted, until the recidive ban lifts in its turn."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fleet2ban.audit.reader import iter_all
from fleet2ban.contract import ContractError, Decision, Heartbeat, decode_decision, decode_report
from fleet2ban.dev.fleet import Client, DevFleet, DevOptions
from fleet2ban.waiting import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(300)]

BANTIME = 8.0
RECIDIVE_BANTIME = 20.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevFleet]:
    opts = DevOptions(
        hosts=2,
        attackers=1,
        workdir=tmp_path_factory.mktemp("devfleet-recidive"),
        bantime=BANTIME,
        recidive=2,
        recidive_bantime=RECIDIVE_BANTIME,
        heartbeat_interval_s=0.5,
        reconcile_interval_s=2.0,
    )
    with DevFleet(opts) as f:
        assert f.use_netns
        wanted = {(role, h.name) for h in f.hosts for role in ("shipper", "enforcer")}
        wait_for(lambda: _components(f) >= wanted, 90, "every shipper and enforcer to report in")
        yield f


def _components(f: DevFleet) -> set[tuple[str, str]]:
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
    out = [decode_decision(v) for _k, v in iter_all(f.cluster, "decisions", f.cluster.topics.decisions)]
    return [d for d in out if d.ip == ip]


def _blocked_everywhere(f: DevFleet, client: Client) -> bool:
    return not any(f.can_connect(client, h, timeout=0.3) for h in f.hosts)


def _open_everywhere(f: DevFleet, client: Client) -> bool:
    return all(f.can_connect(client, h, timeout=0.5) for h in f.hosts)


def _attack_until_banned(f: DevFleet, att: Client, bans: int) -> None:
    assert f.run_client(att, "spreader", 21, rate=200)  # over both hosts: only the fleet-wide count bans
    wait_for(
        lambda: (
            len([d for d in _decisions(f, att.address) if d.action == "ban" and d.jail == "amps"]) >= bans
        ),
        30,
        f"amps ban #{bans}",
    )
    wait_for(lambda: _blocked_everywhere(f, att), 20, "the attacker to be blocked on every host")


def test_banned_twice_blocked_by_recidive_after_the_amps_ban_lifts(fleet: DevFleet) -> None:
    att = fleet.attackers[0]
    wait_for(lambda: _open_everywhere(fleet, att), 60, "the fleet to accept the attacker")
    _attack_until_banned(fleet, att, 1)
    wait_for(lambda: _open_everywhere(fleet, att), BANTIME + 20, "the first amps ban to lift")
    assert not [d for d in _decisions(fleet, att.address) if d.jail == "recidive"]
    _attack_until_banned(fleet, att, 2)
    a1, a2 = [d for d in _decisions(fleet, att.address) if d.action == "ban" and d.jail == "amps"]
    (r,) = [d for d in _decisions(fleet, att.address) if d.jail == "recidive"]
    assert r.action == "ban" and r.at == a2.at and r.failures == 2
    assert [e.split()[1] for e in r.evidence] == [a1.id, a2.id]
    assert r.expires_at is not None and (r.expires_at - r.at).total_seconds() == pytest.approx(
        RECIDIVE_BANTIME
    )
    # the amps ban lifts (its unban decision), the recidive ban keeps the attacker out everywhere
    wait_for(
        lambda: (
            len([d for d in _decisions(fleet, att.address) if d.action == "unban" and d.jail == "amps"]) >= 2
        ),
        BANTIME + 20,
        "the second amps ban to lift",
    )
    assert _blocked_everywhere(fleet, att)
    # ... until it lifts in its turn
    lifted = wait_for(lambda: _open_everywhere(fleet, att), RECIDIVE_BANTIME + 20, "the recidive ban to lift")
    assert lifted
    assert time.time() >= r.expires_at.timestamp() - 1.0  # the enforcers' clock, not an early lift

    # the kernel's timeout can lift the ban a moment before the processor's timer writes the unban
    def recidive_unbans() -> list[Decision]:
        return [d for d in _decisions(fleet, att.address) if d.action == "unban" and d.jail == "recidive"]

    wait_for(recidive_unbans, 20, "the recidive unban decision")
    (u,) = recidive_unbans()
    assert u.at == r.expires_at
