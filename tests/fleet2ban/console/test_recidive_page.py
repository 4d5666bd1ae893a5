"""The console's address page for a ban of a repeat-offender jail (``source: bans``, issue #18 §4)."""

from __future__ import annotations

from datetime import datetime

from starlette.testclient import TestClient

from fleet2ban.audit.reader import TargetRecords
from fleet2ban.audit.view import FleetView
from fleet2ban.console.app import ConsoleConfig, create_app
from fleet2ban.console.live import LiveFleet
from fleet2ban.contract import BanState, Decision, Event, from_epoch
from fleet2ban.kafka import Cluster
from fleet2ban.settings import JailSettings, KafkaSettings, Settings
from processor.engine import Engine
from processor.policy import Policy

BASE = 1_764_000_000.0
IP = "203.0.113.9"


class Readers:
    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions_list = decisions

    def target(self, cluster: Cluster, target: str, now: datetime, jails: list[str]) -> TargetRecords:
        ds = [d for d in self.decisions_list if d.ip == target]
        return TargetRecords(ds, [], [BanState.from_decision(d) for d in ds if d.action == "ban"])

    def failures(self, cluster: Cluster, ip: str, since: datetime) -> list[Event]:
        return []

    def decisions(self, cluster: Cluster, since: datetime, until: datetime) -> list[Decision]:
        return list(self.decisions_list)

    def publish(self, cluster: Cluster, decision: Decision) -> None:
        raise AssertionError("read-only")


def test_the_recidive_ban_shows_the_bans_it_counted() -> None:
    jails = [
        JailSettings(name="amps", reasons=["auth"], maxretry=2, findtime=10, bantime=5),
        JailSettings(name="recidive", source="bans", maxretry=2, findtime=3600, bantime=600),
    ]
    evs = [
        Event(
            host=h, ip=IP, id=f"{h}:{i}", ts=from_epoch(BASE + t + 0.1 * i), port=1, client="c", reason="auth"
        )
        for t, h in ((0, "h1"), (30, "h2"))
        for i in range(2)
    ]
    decisions = [o.decision for o in Engine(Policy.from_settings(jails)).feed(evs)]
    a1, a2, r = [d for d in decisions if d.action == "ban"]
    assert r.jail == "recidive"
    live = LiveFleet.fixed(FleetView(), KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    live._cluster = Cluster(KafkaSettings(), "127.0.0.1:9")  # the fake readers never use it
    config = ConsoleConfig(settings=Settings(jails=jails), token=None, allow_write=False)
    client = TestClient(create_app(config, live, Readers(decisions)), base_url="http://testserver")
    page = client.get(f"/ip/{IP}").text
    assert "2 bans counted on h1, h2" in page and "2 failures on h1" in page
    assert all(f"ban {d.id} jail=amps" in page for d in (a1, a2))
