"""Host identity end to end on the real broker (issue 16): a processor worker with
``identity.require_signatures`` counts only events signed by the host they name; a host signing with
another host's name, an unsigned record and a tampered one change no count and are counted rejected; a
real shipper's signed events ban; the audit views drop reports that do not verify."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization

from fleet2ban.audit import queries
from fleet2ban.audit.reader import load_coverage_view, load_view, read_target
from fleet2ban.contract import BanState, EventBatch, Heartbeat, Line, Report, ban_key, encode, utcnow
from fleet2ban.identity import IdentitySettings, Signer, Verifier, generate_key
from fleet2ban.settings import Settings, ShipperSettings
from shipper.ship import Shipper


def _signer(host: str) -> tuple[Signer, str, bytes]:
    pem, public = generate_key()
    return Signer(host, serialization.load_pem_private_key(pem, None)), public, pem


H1, PUB1, PEM1 = _signer("h1")
H2, PUB2, PEM2 = _signer("h2")
ROGUE, _PUB9, _PEM9 = _signer("h9")
PUBLIC_KEYS = {"h1": [PUB1], "h2": [PUB2]}

FLEET_SETTINGS = {"identity": {"public_keys": PUBLIC_KEYS, "require_signatures": True}}
FLEET_JAIL_CHANGES = {"amps": {"maxretry": 3, "findtime": 600, "bantime": 600}}
FLEET_SIGNERS = {"h1": H1, "h2": H2}


def _rejected(fleet: Any, topic: str = "events") -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for m in re.finditer(r"^fleet2ban_identity_rejected_total\{([^}]*)\} (\S+)$", fleet.metrics(), re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels["topic"] == topic:
            out[(labels["host"], labels["reason"])] = float(m.group(2))
    return out


def _batch(ip: str, host: str, ids: list[str]) -> bytes:
    ts = utcnow()
    lines = [Line(id=i, ts=ts, port=40000, client="c", reason="auth", raw=f"line {i}") for i in ids]
    return encode(EventBatch(host=host, ip=ip, lines=lines))


def test_forged_unsigned_and_tampered_events_change_no_count(fleet: Any) -> None:
    ip = "198.51.100.7"
    key = ip.encode()
    genuine = fleet.fail(ip, 2, host="h1")  # signed by h1 (FLEET_SIGNERS)

    # each holds 3 failures in h1's name: any one counted would ban at once (maxretry 3)
    forged = _batch(ip, "h1", fleet.line_ids("h1", 3))
    tampered = forged.replace(b'"port":40000', b'"port":40001', 1)
    for value, headers in [
        (forged, H2.headers("events", key, forged)),  # h2 signs for h1
        (forged, None),  # unsigned
        (tampered, H1.headers("events", key, forged)),  # h1's signature over another value
        (forged, ROGUE.headers("events", key, forged)),  # a key the fleet does not know
    ]:
        fleet.produce_raw(key, value, headers=headers)
    fleet.wait_for(
        "the four forgeries counted as rejected",
        lambda: (
            _rejected(fleet)
            == {
                ("h1", "host-mismatch"): 1,
                ("h1", "unsigned"): 1,
                ("h1", "bad-signature"): 1,
                ("h1", "unknown-host"): 1,
            }
        ),
    )
    last = fleet.fail(ip, 1, host="h1")
    (ban,) = fleet.wait_decision(ip)
    assert ban.failures == 3 and ban.hosts == ["h1"]
    assert ban.evidence == [f"line {i}" for i in genuine + last]
    assert [d.action for d in fleet.decisions(ip)] == ["ban"]  # no earlier ban from a forged record
    assert "dropped events records claiming host h1" in fleet.logs()


def test_a_real_shipper_signs_what_it_ships(fleet: Any, tmp_path: Path) -> None:
    ip = "198.51.100.8"
    key_path = tmp_path / "h2.pem"
    key_path.write_bytes(PEM2)
    log = tmp_path / "ban.log"
    log.write_bytes(
        b"".join(
            f"2026-12-07T10:00:0{i}.0000000+00:00 [7] info: 07-0013 client[c{i}]({ip}:{1024 + i}) disconnected:"
            f" auth.\n".encode()
            for i in range(3)
        )
    )
    settings = Settings(
        kafka=fleet.kafka,
        shipper=ShipperSettings(log_path=log, host="h2", instance="amps", from_start=True),
        identity=IdentitySettings(key_path=key_path),
        state_dir=tmp_path / "state",
    )
    ship = Shipper(settings, fleet.cluster, use_inotify=False)
    stop = threading.Event()
    t = threading.Thread(target=ship.run, args=(stop,), daemon=True)
    t.start()
    try:
        (ban,) = fleet.wait_decision(ip)
    finally:
        stop.set()
        t.join(10)
    assert ban.hosts == ["h2"] and ban.failures == 3

    # a shipper naming itself h2 but holding h1's key (h2's was not deployed, or h1 speaks for h2): refused
    ip = "198.51.100.9"
    key_path.write_bytes(PEM1)
    log2 = tmp_path / "ban2.log"
    log2.write_bytes(log.read_bytes().replace(b"198.51.100.8", ip.encode()))
    settings.shipper.log_path = log2
    settings.shipper.checkpoint_path = tmp_path / "cp2"
    before = _rejected(fleet).get(("h2", "bad-signature"), 0)
    ship = Shipper(settings, fleet.cluster, use_inotify=False)
    stop = threading.Event()
    t = threading.Thread(target=ship.run, args=(stop,), daemon=True)
    t.start()
    try:
        fleet.wait_for(
            "h2's record signed by h1 rejected",
            lambda: _rejected(fleet).get(("h2", "bad-signature"), 0) > before,
        )
    finally:
        stop.set()
        t.join(10)
    assert fleet.decisions(ip) == []


def test_reports_that_do_not_verify_change_no_coverage(cluster: Any, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    from fleet2ban.kafka import producer_config

    c = cluster  # topics of its own: the shipper test's heartbeats are not here
    now = utcnow()
    k = ban_key("amps", "203.0.113.50")
    producer = Producer(producer_config(c, linger_ms=0))
    ban = BanState("d-identity", "203.0.113.50", "amps", now, expires_at=now + timedelta(hours=1))
    producer.produce(c.topics.bans, key=k.encode(), value=encode(ban))

    def report(value: bytes, host: str, headers: Any) -> None:
        producer.produce(c.topics.reports, key=host.encode(), value=value, headers=headers)

    def hb(host: str, keys: list[str]) -> bytes:
        return encode(Heartbeat(host=host, role="enforcer", at=utcnow(), interval_s=60.0, applied=keys))

    good = hb("h1", [k])
    report(good, "h1", H1.headers("reports", b"h1", good))
    mine = hb("h2", [])
    report(mine, "h2", H2.headers("reports", b"h2", mine))
    forged = hb("h2", [k])  # h2 does not have the ban; h1 says it has, in h2's name
    report(forged, "h2", H1.headers("reports", b"h2", forged))
    report(forged, "h2", None)
    applied = encode(
        Report(
            kind="applied", host="h2", ip="203.0.113.50", jail="amps", at=utcnow(), decision_id="d-identity"
        )
    )
    report(applied + b" ", "h2", H2.headers("reports", b"h2", applied))  # tampered
    producer.flush(10)

    verifier = Verifier(PUBLIC_KEYS, require=True)
    at = utcnow() + timedelta(seconds=1)
    view = load_view(c, at, verifier=verifier)
    assert view.rejected == 3
    (bv,) = queries.bans_in_force(view, at, None)
    assert bv.coverage.applied == ["h1"] and bv.coverage.missing == ["h2"]
    cview = load_coverage_view(c, at, heartbeat_interval_s=60.0, verifier=Verifier(PUBLIC_KEYS, require=True))
    (bv,) = queries.bans_in_force(cview, at, None)
    assert bv.coverage.applied == ["h1"] and bv.coverage.missing == ["h2"] and cview.rejected >= 2
    recs = read_target(c, "203.0.113.50", at, verifier=Verifier(PUBLIC_KEYS, require=True))
    assert recs.reports == []  # the only report naming it is the tampered one

    # the console's live view, the same
    from fleet2ban.audit.view import FleetView
    from fleet2ban.console.live import LiveFleet

    with LiveFleet(
        c.settings, view_factory=lambda: FleetView(verifier=Verifier(PUBLIC_KEYS, require=True))
    ) as live:
        assert live.wait_until(lambda s: s.caught_up, 60), live.status
        with live.read() as lview:
            assert lview.rejected == 3
            (bv,) = queries.bans_in_force(lview, at, None)
            assert bv.coverage.applied == ["h1"] and bv.coverage.missing == ["h2"]

    # without verification the forgeries would count: h2 would cover the ban
    plain = load_view(c, at)
    (bv,) = queries.bans_in_force(plain, at, None)
    assert bv.coverage.applied == ["h1", "h2"]

    # the CLI says it dropped them
    conf = tmp_path / "operator.yaml"
    conf.write_text(yaml.safe_dump({"identity": {"public_keys": PUBLIC_KEYS, "require_signatures": True}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET2BAN_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet2ban.cli.main",
            "-c",
            str(conf),
            "-b",
            c.bootstrap,
            "--topic-prefix",
            c.settings.topic_prefix,
            "status",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "3 reports records dropped: their host signature did not verify" in done.stderr, done.stderr
