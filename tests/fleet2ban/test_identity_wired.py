"""Host identity wired in (DESIGN §8, issue 16), without Kafka: the processor's events handling and the
audit view's reports handling drop and count what does not verify, and change no count or coverage;
the shipper and the enforcer sign what they write."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from fleet2ban.audit import queries
from fleet2ban.audit.view import FleetView
from fleet2ban.contract import (
    BanState,
    EventBatch,
    Heartbeat,
    Line,
    Report,
    ban_key,
    encode,
    from_epoch,
    utcnow,
)
from fleet2ban.identity import SIG_HEADER, IdentitySettings, Signer, Verifier, generate_key, load_private_key
from fleet2ban.settings import JailSettings
from processor.app import Processor
from processor.policy import Output, Policy

BASE = 1_764_000_000.0


def _key(tmp: Path, name: str) -> tuple[Signer, str, Path]:
    pem, public = generate_key()
    path = tmp / f"{name}.pem"
    path.write_bytes(pem)
    return Signer(name, load_private_key(path)), public, path


def _batch(ip: str, n: int, host: str, start: int, t: float = 0.0) -> bytes:
    lines = [
        Line(id=f"{host}:{start + i}", ts=from_epoch(BASE + t + 0.01 * i), port=1, client="c", reason="auth")
        for i in range(n)
    ]
    return encode(EventBatch(host=host, ip=ip, lines=lines))


def _tamper(value: bytes) -> bytes:
    return value.replace(b'"port":1', b'"port":2', 1)


def test_events_that_do_not_verify_change_no_count(tmp_path: Path) -> None:
    h1, pub1, _ = _key(tmp_path, "h1")
    h2, pub2, _ = _key(tmp_path, "h2")
    rogue, _pub9, _ = _key(tmp_path, "h9")
    verifier = Verifier({"h1": [pub1], "h2": [pub2]}, require=True)
    policy = Policy.from_settings([JailSettings(maxretry=3, bantime=60)], 5.0)
    proc = Processor(policy, {}, verifier=verifier)
    out: list[Output] = []
    ip, key = "10.0.0.9", b"10.0.0.9"

    v = _batch(ip, 2, "h1", 0)
    proc.on_events_record(key, v, out, headers=h1.headers("events", key, v))
    assert len(proc.live[ip].jails["amps"].window) == 2

    # each of these holds 3 failures "seen by h1": any one of them counted would ban
    forged = _batch(ip, 3, "h1", 10)
    forgeries: list[tuple[bytes, Any]] = [
        (forged, h2.headers("events", key, forged)),  # h2 signs a record naming h1
        (forged, None),  # unsigned, signatures required
        (_tamper(forged), h1.headers("events", key, forged)),  # h1's signature, value changed after
        (forged, h1.headers("events", b"10.0.0.10", forged)),  # h1's signature, moved to another key
        (forged, h1.headers("reports", key, forged)),  # a signed report replayed as an event
        (forged, rogue.headers("events", key, forged)),  # signed by a key the fleet does not know
    ]
    rogue_named = _batch(ip, 3, "h9", 20)
    forgeries.append((rogue_named, rogue.headers("events", key, rogue_named)))  # an unknown host
    for value, headers in forgeries:
        proc.on_events_record(key, value, out, headers=headers)
    assert out == []
    assert len(proc.live[ip].jails["amps"].window) == 2
    assert policy.counters.failures == 2
    assert verifier.rejected == {
        ("events", "h1", "host-mismatch"): 1,
        ("events", "h1", "unsigned"): 1,
        ("events", "h1", "bad-signature"): 3,
        ("events", "h1", "unknown-host"): 1,  # the rogue key is unknown: h9 is no host of the fleet
        ("events", "h9", "unknown-host"): 1,
    }

    # a record read back to rebuild windows is checked alike, but not counted again
    proc.on_events_record(key, forged, out, replay=True, headers=None)
    assert len(proc.live[ip].jails["amps"].window) == 2 and verifier.rejected_total == 7

    v = _batch(ip, 1, "h1", 2, t=1)
    proc.on_events_record(key, v, out, headers=h1.headers("events", key, v))
    (o,) = out
    assert o.decision.action == "ban" and o.decision.failures == 3 and o.decision.hosts == ["h1"]


def test_unsigned_events_pass_while_signatures_are_not_required(tmp_path: Path) -> None:
    _h1, pub1, _ = _key(tmp_path, "h1")
    h2, _pub2, _ = _key(tmp_path, "h2")
    verifier = Verifier({"h1": [pub1]}, require=False)
    proc = Processor(Policy.from_settings([JailSettings(maxretry=3)], 5.0), {}, verifier=verifier)
    out: list[Output] = []
    v = _batch("10.0.0.1", 2, "h1", 0)
    proc.on_events_record(b"10.0.0.1", v, out)
    assert len(proc.live["10.0.0.1"].jails["amps"].window) == 2
    # a bad signature never passes, required or not
    v = _batch("10.0.0.1", 2, "h1", 5)
    proc.on_events_record(b"10.0.0.1", v, out, headers=h2.headers("events", b"10.0.0.1", v))
    assert len(proc.live["10.0.0.1"].jails["amps"].window) == 2 and out == []


def _hb(host: str, keys: list[str], role: str = "enforcer") -> Heartbeat:
    return Heartbeat(host=host, role=role, at=utcnow(), interval_s=5.0, applied=keys)


def test_reports_that_do_not_verify_change_no_coverage_nor_status(tmp_path: Path) -> None:
    h1, pub1, _ = _key(tmp_path, "h1")
    h2, pub2, _ = _key(tmp_path, "h2")
    now = utcnow()
    k = ban_key("amps", "10.0.0.7")
    view = FleetView(verifier=Verifier({"h1": [pub1], "h2": [pub2]}, require=True))
    view.add_ban(k, BanState("d1", "10.0.0.7", "amps", now, expires_at=now + timedelta(hours=1)))

    def add(value: bytes, key: bytes, headers: Any) -> None:
        assert view.add_raw("reports", key, value, now, headers)

    good = encode(_hb("h1", [k]))
    add(good, b"h1", h1.headers("reports", b"h1", good))
    forged_hb = encode(_hb("h2", [k]))  # h2 did not apply the ban; h1 says it did, in h2's name
    add(forged_hb, b"h2", h1.headers("reports", b"h2", forged_hb))
    add(forged_hb, b"h2", None)  # unsigned
    applied = encode(Report(kind="applied", host="h2", ip="10.0.0.7", jail="amps", at=now, decision_id="d1"))
    add(_tamper(applied) + b" ", b"h2", h2.headers("reports", b"h2", applied))  # tampered
    assert view.rejected == 3
    assert set(view.enforcers) == {"h1"}
    (ban,) = queries.bans_in_force(view, now, None)
    assert ban.coverage.applied == ["h1"]

    # h2's own, signed heartbeat: h2 is live and does not have the ban
    mine = encode(_hb("h2", []))
    add(mine, b"h2", h2.headers("reports", b"h2", mine))
    (ban,) = queries.bans_in_force(view, now, None)
    assert ban.coverage.applied == ["h1"] and ban.coverage.missing == ["h2"]
    assert {(h.role, h.host) for h in queries.fleet_status(view, now)} == {
        ("enforcer", "h1"),
        ("enforcer", "h2"),
    }

    # a central component (no host key) is accepted unsigned; a signature that does not verify never is
    proc_hb = encode(_hb("worker-1", [], role="processor"))
    add(proc_hb, b"worker-1", None)
    add(proc_hb, b"worker-1", [(SIG_HEADER, b"x" * 64), ("f2b-host", b"h1")])
    assert view.rejected == 4
    assert ("processor", "worker-1") in {(h.role, h.host) for h in queries.fleet_status(view, now)}


def test_the_shipper_and_the_enforcer_sign_with_the_host_key(tmp_path: Path) -> None:
    from enforcer.agent import Agent
    from enforcer.backends import make_backend
    from fleet2ban.kafka import resolve
    from fleet2ban.settings import KafkaSettings, Settings, ShipperSettings
    from shipper.ship import Shipper

    _h, pub, path = _key(tmp_path, "h1")
    verifier = Verifier({"h1": [pub]}, require=True)
    log = tmp_path / "ban.log"
    log.write_bytes(b"")
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", partitions=3),
        shipper=ShipperSettings(log_path=log, host="h1", instance="amps", from_start=True),
        enforcer={"host": "h1", "backend": "dryrun"},  # type: ignore[arg-type]
        identity=IdentitySettings(key_path=path),
        state_dir=tmp_path / "state",
    )
    cluster = resolve(settings.kafka)
    produced: list[tuple[str, bytes, bytes, Any]] = []

    class Capture:
        def __init__(self, conf: dict[str, Any]) -> None:
            pass

        def produce(
            self,
            topic: str,
            value: bytes,
            key: bytes,
            partition: int = -1,
            on_delivery: Any = None,
            headers: Any = None,
            timestamp: int = 0,
        ) -> None:
            produced.append((topic, key, value, headers))

        def poll(self, timeout: float = 0) -> int:
            return 0

    ship = Shipper(settings, cluster, producer_factory=Capture, use_inotify=False)
    log.write_bytes(
        b"2026-11-25T06:00:00.0000000+00:00 [7] info: 07-0013 client[c](10.0.0.1:1024) disconnected: auth.\n"
    )
    for _ in range(3):
        ship.step()  # idle: the lone failure goes out at once
    ship._maybe_heartbeat(1e9)
    topics = cluster.topics
    kinds = {topics.events: "events", topics.reports: "reports"}
    assert {t for t, *_ in produced} == {topics.events, topics.reports}
    for topic, key, value, headers in produced:
        assert verifier.check(kinds[topic], key, value, headers, "h1")

    agent = Agent(settings, cluster, make_backend("dryrun", [], settings.enforcer))
    produced.clear()
    value = encode(_hb("h1", []))
    agent._produce(Capture({}), topics.reports, value)
    ((_t, key, got, headers),) = produced
    assert got == value and verifier.check("reports", key, value, headers, "h1")
    assert not verifier.check("reports", key, value, headers, "h2")


def test_public_keys_from_a_file_as_keygen_prints_them(tmp_path: Path) -> None:
    import pytest

    from fleet2ban.exceptions import ConfigError

    h1, pub1, _ = _key(tmp_path, "h1")
    _h2, pub2, _ = _key(tmp_path, "h2")
    _new, new1, _ = _key(tmp_path, "h1-new")
    f = tmp_path / "public_keys.yaml"
    f.write_text(f"h1: [{new1}]\nh2: {pub2}\n")
    s = IdentitySettings(public_keys={"h1": [pub1]}, public_keys_file=f)
    assert s.all_public_keys() == {"h1": [pub1, new1], "h2": [pub2]}  # rotation: old and new
    v = Verifier.from_settings(s)
    assert v is not None and v.check("events", b"k", b"v", h1.headers("events", b"k", b"v"), "h1")
    f.write_text(f"identity:\n  public_keys:\n    h2: [{pub2}]\n")  # keygen's output, pasted as is
    assert IdentitySettings(public_keys_file=f).all_public_keys() == {"h2": [pub2]}
    for bad, says in [
        (f"h1: [{pub1}, {pub2}, {new1}]\n", "1 or 2 public keys"),
        ("h1: [not-base64]\n", "not base64"),
        ("- just a list\n", "expected a mapping"),
    ]:
        f.write_text(bad)
        with pytest.raises(ConfigError, match=says) as err:
            IdentitySettings(public_keys_file=f).all_public_keys()
        assert "identity.public_keys_file" in str(err.value)
    with pytest.raises(ConfigError, match=r"identity\.public_keys_file"):
        IdentitySettings(public_keys_file=tmp_path / "missing.yaml").all_public_keys()
