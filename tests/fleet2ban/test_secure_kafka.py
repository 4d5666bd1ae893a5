"""Kafka with security on (issue 16): SASL_SSL (SCRAM-SHA-512, a throw-away CA), the StandardAuthorizer,
no ACL = nothing, and each fleet role with exactly the ACLs of docs/deploying.md (fleet2ban.kafka.acls).

One secure 1-node cluster for the module, set up as ``fleet2ban broker --secure`` does it
(:func:`fleet2ban.kafka.security.provision`: topics, ACLs, one settings file per role). The tests prove:
every component starts and works under its own principal (end to end: failures spread over three hosts
become a ban on every enforcer; a short manual ban expires everywhere; a manual unban lifts the automatic
one); each denial the doc promises; the one-line errors for wrong credentials and TLS failures; and that
the doc's ACL table is the table the cluster got.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import yaml

from fleet2ban import waiting
from fleet2ban.contract import AddressLine, EventsRecord, encode, utcnow
from fleet2ban.exceptions import BrokerError
from fleet2ban.identity import Signer, generate_key, load_private_key
from fleet2ban.kafka import (
    KafkaAuthorizationError,
    KafkaSecurityError,
    check_connection,
    ensure_topics,
    producer_config,
    read_to_end,
    resolve,
)
from fleet2ban.kafka.acls import fleet_grants, markdown_table
from fleet2ban.kafka.config import Cluster
from fleet2ban.kafka.local import LocalKafka, free_port
from fleet2ban.kafka.security import ROLES, SecureSpec, provision, role_user
from fleet2ban.settings import KafkaSettings, load_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
NOBODY = "fleet2ban-nobody"


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0, every: float = 0.3) -> T:
    return waiting.wait_for(check, timeout, what, every)


class Secure:
    """The module's secure cluster: its role settings files and helpers to act as a role."""

    def __init__(self, kafka: LocalKafka, spec: SecureSpec, files: dict[str, Path], tmp: Path) -> None:
        self.kafka, self.spec, self.files, self.tmp = kafka, spec, files, tmp

    def settings(self, role: str) -> KafkaSettings:
        return load_settings(self.files[role], {}).kafka

    def cluster(self, role: str, **update: Any) -> Cluster:
        return resolve(KafkaSettings.model_validate({**self.settings(role).model_dump(), **update}))

    def nobody(self) -> Cluster:
        s = KafkaSettings(
            bootstrap_servers=self.kafka.bootstrap, partitions=3, **self.spec.kafka_settings(NOBODY)
        )
        return resolve(s)

    def write(self, cluster: Cluster, topic: str) -> str | None:
        """Produce one record as ``cluster``'s principal: None when written, else the error's name."""
        from confluent_kafka import Producer

        result: dict[str, Any] = {}
        p = Producer({**producer_config(cluster, linger_ms=0), "log_level": 0, "message.timeout.ms": 15000})
        p.produce(topic, key=b"198.51.100.1", value=b"{}", on_delivery=lambda e, m: result.update(err=e))
        p.flush(20)
        err = result.get("err", "no delivery report")
        return None if err is None else str(err.name() if hasattr(err, "name") else err)

    def role_config(self, role: str, fleet: dict[str, Any]) -> Path:
        """The role's settings file merged with the fleet's other settings (jails, enforcer...)."""
        body = yaml.safe_load(self.files[role].read_text())
        path = self.tmp / f"{role}-fleet.yaml"
        path.write_text(yaml.safe_dump({**fleet, "kafka": body["kafka"]}))
        return path


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    tmp = tmp_path_factory.mktemp("secure")
    spec = SecureSpec.load_or_create(tmp / "kafka", users=[*(role_user(r) for r in ROLES), NOBODY])
    with LocalKafka(1, data_dir=tmp / "kafka", security=spec) as k:
        files = provision(
            spec, k.bootstrap, {"topic_prefix": "fleet2ban.", "partitions": 3, "replication_factor": 1}
        )
        yield Secure(k, spec, files, tmp)


# ----------------------------------------------------------------------------------------- the doc


def test_docs_acl_table_is_the_applied_table() -> None:
    doc = (ROOT / "docs" / "deploying.md").read_text()
    assert markdown_table(fleet_grants()) in doc
    assert "not verified" not in doc


# ------------------------------------------------------------------------------------ end to end

SPREADER = "198.51.100.77"
FORGED = "198.51.100.78"
HOSTS = ("amps1", "amps2", "amps3", "eA", "eB")


def _amps_lines(ip: str, n: int, first_port: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"
    return "".join(
        f"{stamp} [26] info: 07-0013 client[bot{i}]({ip}:{first_port + i}) disconnected: auth.\n"
        for i in range(n)
    )


class Fleet:
    def __init__(self, secure: Secure) -> None:
        self.secure = secure
        self.tmp = secure.tmp / "e2e"
        self.tmp.mkdir()
        fleet = {
            "jails": [{"name": "amps", "maxretry": 20, "findtime": 30, "bantime": 600}],
            "metrics": {"port": 0, "heartbeat_interval_s": 1.0},
            "enforcer": {"backend": "dryrun", "reconcile_interval_s": 5},
            "processor": {"expiry_interval_s": 0.2},
            "state_dir": str(self.tmp / "state"),
        }
        # host identity: every shipper and enforcer signs with its own key; everybody requires signatures
        self.keys: dict[str, Path] = {}
        public: dict[str, list[str]] = {}
        for host in HOSTS:
            pem, pub = generate_key()
            self.keys[host] = self.tmp / f"{host}.pem"
            self.keys[host].write_bytes(pem)
            public[host] = [pub]
        fleet["identity"] = {"public_keys": public, "require_signatures": True}
        self.config = {
            r: secure.role_config(r, fleet) for r in ("shipper", "processor", "enforcer", "operator")
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, role: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET2BAN_")}
        if name in self.keys:
            env["FLEET2BAN_IDENTITY__KEY_PATH"] = str(self.keys[name])
        with open(self.tmp / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "fleet2ban.cli.main", "--config", str(self.config[role]), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {n}\n" + (self.tmp / f"{n}.log").read_text(errors="replace")[-2500:] for n in self.procs
        )

    def operator(self, *args: str, code: int = 0) -> Any:
        res = _fleet2ban(self.config["operator"], *args, "--json")
        assert res.returncode == code, (args, res.returncode, res.stdout, res.stderr, self.logs())
        return msgspec.json.decode(res.stdout)

    def coverage(self, ip: str) -> list[str] | None:
        for b in self.operator("bans", "list"):
            if b["ban"]["ip"] == ip:
                return list(b["coverage"]["applied"])
        return None


def _forged_record(ip: str, host: str) -> bytes:
    now = utcnow()
    lines = [
        AddressLine(ip, f"{host}:forged:{i}", now, 40000 + i, "bot", "auth", "forged") for i in range(30)
    ]
    return encode(EventsRecord(host=host, lines=lines))


def test_end_to_end_each_component_under_its_own_principal(secure: Secure) -> None:
    f = Fleet(secure)
    try:
        f.start("processor", "processor", "processor", "--metrics-port", "0")
        for h in ("eA", "eB"):
            f.start(h, "enforcer", "enforcer", "--host", h)
        for i, host in enumerate(("amps1", "amps2", "amps3")):
            log = f.tmp / f"{host}-ban.log"
            log.write_text(_amps_lines(SPREADER, 8, 40000 + 100 * i))  # 8 per host: 24 fleet-wide
            f.start(
                host,
                "shipper",
                "shipper",
                "--log",
                str(log),
                "--host",
                host,
                "--from-start",
                "--poll",
                "--checkpoint",
                str(f.tmp / f"{host}.ckpt"),
                "--metrics-port",
                "0",
            )

        # failures spread over three hosts (none reaches maxretry alone) become a ban on both enforcers
        # (signed events, and the enforcers' signed heartbeats and reports: signatures are required)
        wait_for("the spreader banned on eA and eB", lambda: f.coverage(SPREADER) == ["eA", "eB"] or None, 90)
        (ban,) = [b["ban"] for b in f.operator("bans", "list") if b["ban"]["ip"] == SPREADER]
        assert ban["origin"] == "auto" and sorted(ban["hosts"]) == ["amps1", "amps2", "amps3"]
        assert ban["failures"] >= 20

        # with the shipper's password: 30 failures of FORGED in amps1's name signed by amps2's key, and
        # 30 unsigned in amps3's: dropped, counted and said, never a ban
        from confluent_kafka import Producer

        forged = _forged_record(FORGED, "amps1")
        signer = Signer("amps2", load_private_key(f.keys["amps2"]))
        unsigned = _forged_record(FORGED, "amps3")
        shipper = secure.cluster("shipper")
        p = Producer(producer_config(shipper, linger_ms=0))
        p.produce(
            shipper.topics.events,
            forged,
            FORGED.encode(),
            headers=signer.headers("events", FORGED.encode(), forged),
        )
        p.produce(shipper.topics.events, unsigned, FORGED.encode())
        assert p.flush(20) == 0

        def dropped() -> bool:
            log = (f.tmp / "processor.log").read_text(errors="replace")
            return "claiming host amps1: host-mismatch (signed by amps2)" in log and "amps3: unsigned" in log

        wait_for("the processor to drop both forgeries", dropped, 60)
        assert f.operator("bans", "show", FORGED)["decisions"] == []

        # a short manual ban (the operator's principal) expires everywhere on its own
        added = f.operator("bans", "add", "203.0.113.60", "--for", "4s", "--reason", "probe", "--wait", "45")
        assert added["mirrored"] is True

        def expired() -> bool:
            show = f.operator("bans", "show", "203.0.113.60")
            removed = {r["host"] for r in show["reports"] if r["kind"] == "removed"}
            return show["in_force"] == [] and removed == {"eA", "eB"}

        wait_for("the short manual ban lifted on eA and eB", expired, 60)

        # a manual unban lifts the automatic ban everywhere
        f.operator("bans", "remove", SPREADER, "--reason", "false positive", "--wait", "45")

        def lifted() -> bool:
            show = f.operator("bans", "show", SPREADER)
            removed = {r["host"] for r in show["reports"] if r["kind"] == "removed"}
            return show["in_force"] == [] and removed == {"eA", "eB"}

        wait_for("the spreader's ban lifted on eA and eB", lifted, 60)
        for name, proc in f.procs.items():
            assert proc.poll() is None, (name, f.logs())
    finally:
        f.stop_all()
    logs = f.logs()
    assert "AUTHORIZATION_FAILED" not in logs and "Authorization failed" not in logs, logs
    assert not re.search(r"Group authorization failed|may not see topic", logs), logs


# ------------------------------------------------------------------------------------------ denials


def test_each_role_writes_only_where_the_doc_says(secure: Secure) -> None:
    t = secure.cluster("shipper").topics
    shipper, enforcer, operator = (secure.cluster(r) for r in ("shipper", "enforcer", "operator"))
    denied = "TOPIC_AUTHORIZATION_FAILED"
    assert secure.write(shipper, t.events) is None
    assert secure.write(shipper, t.bans) == denied
    assert secure.write(shipper, t.decisions) == denied
    assert secure.write(enforcer, t.reports) is None
    assert secure.write(enforcer, t.events) == denied
    assert secure.write(enforcer, t.bans) == denied
    assert secure.write(operator, t.bans) == denied
    # nobody but the processor writes bans; the processor writes no events
    processor = secure.cluster("processor")
    assert secure.write(processor, t.bans) is None
    assert secure.write(processor, t.reports) is None  # its heartbeats
    assert secure.write(processor, t.events) == denied
    notifier = secure.cluster("notifier")
    assert secure.write(notifier, t.reports) is None
    for topic in (t.decisions, t.bans, t.events):
        assert secure.write(notifier, topic) == denied
    # the allow-list: the operator's alone to write (it can stop any ban)
    assert secure.write(operator, t.allow) is None
    for role in (shipper, enforcer, processor, notifier):
        assert secure.write(role, t.allow) == denied


def test_a_principal_without_acls_gets_nothing(secure: Secure) -> None:
    from confluent_kafka.admin import AdminClient

    nobody = secure.nobody()
    t = nobody.topics
    meta = AdminClient({**producer_config(nobody), "log_level": 0}).list_topics(timeout=10)
    assert not [name for name in meta.topics if name.startswith("fleet2ban.")]
    for topic in (t.events, t.decisions, t.bans, t.reports):
        assert secure.write(nobody, topic) == "TOPIC_AUTHORIZATION_FAILED"
        with pytest.raises(BrokerError, match="not authorized to read topic"):
            read_to_end(nobody, topic, timeout=10)
    with pytest.raises(KafkaAuthorizationError, match=f"User:{NOBODY} may not see topic fleet2ban.events"):
        ensure_topics(nobody, uses=("events",))


def test_topic_checks_cover_only_the_role_topics_and_never_create(secure: Secure) -> None:
    uses = {
        "shipper": ("events", "reports"),
        "processor": ("events", "decisions", "bans"),
        "enforcer": ("bans", "reports"),
        "operator": ("events", "decisions", "bans", "reports"),
        "notifier": ("decisions", "reports"),
    }
    for role, topics in uses.items():
        checks = ensure_topics(secure.cluster(role), uses=topics)
        assert [(c.name.removeprefix("fleet2ban."), c.status) for c in checks] == [(x, "ok") for x in topics]
    # a shipper asked for every topic names the first one it may not see, instead of creating it
    with pytest.raises(
        KafkaAuthorizationError, match=r"fleet2ban-shipper may not see topic fleet2ban\.decisions"
    ):
        ensure_topics(secure.cluster("shipper"))
    # the admin role (the topics Job) sees every setting, RF and min ISR included; a new prefix it creates
    full = ensure_topics(secure.cluster("admin"), configs=True)
    assert {c.status for c in full} == {"ok"}, full
    fresh = ensure_topics(secure.cluster("admin", topic_prefix="fleet2ban.x."), configs=True)
    assert {c.status for c in fresh} == {"created"}
    wider = ensure_topics(
        secure.cluster("admin", events_retention_hours=48, min_insync_replicas=1), configs=True
    )
    (events,) = [c for c in wider if c.name == "fleet2ban.events"]
    assert events.status == "mismatch" and "retention.ms=86400000 (want 172800000)" in events.detail
    # a role that may not create a missing topic says so in one line
    with pytest.raises(KafkaAuthorizationError, match=r"may not see topic fleet2ban\.y\.events"):
        ensure_topics(secure.cluster("shipper", topic_prefix="fleet2ban.y."), uses=("events",))


def _fleet2ban(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET2BAN_")}
    return subprocess.run(
        [sys.executable, "-m", "fleet2ban.cli.main", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bans_add_with_the_shipper_settings_fails_naming_the_permission(secure: Secure) -> None:
    started = time.monotonic()
    res = _fleet2ban(secure.files["shipper"], "bans", "add", "203.0.113.99", "--reason", "not mine")
    took = time.monotonic() - started
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "fleet2ban-shipper may not write to topic fleet2ban.decisions" in lines[0]
    assert "Write" in lines[0]
    assert took < 20, took
    written = read_to_end(secure.cluster("operator"), "fleet2ban.decisions", timeout=20)
    assert not any(b"203.0.113.99" in (r.value or b"") for r in written)


def test_a_component_without_its_acls_waits_healthy_and_names_the_acl(secure: Secure) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET2BAN_")}
    env.update(FLEET2BAN_METRICS__PORT=str(port), FLEET2BAN_STATE_DIR=str(secure.tmp / "wrong-state"))
    log = secure.tmp / "wrong-processor.log"
    with open(log, "wb") as out:
        # the processor started with the shipper's settings: it may not see decisions nor bans
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleet2ban.cli.main",
                "--config",
                str(secure.files["shipper"]),
                "processor",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def healthz() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body: dict[str, Any] = msgspec.json.decode(r.read())
                    return body if r.status == 200 and "waiting" in body else None
            except OSError:
                return None

        body = wait_for("healthz healthy but waiting", healthz, timeout=45)
        assert "may not see topic fleet2ban.decisions" in body["waiting"]
        assert proc.poll() is None
        text = log.read_text()
        assert "may not see topic fleet2ban.decisions: it needs an ACL allowing Describe" in text
        assert "Traceback" not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


# ---------------------------------------------------------------------------- credentials and TLS


def test_wrong_password_unknown_ca_and_host_name_mismatch_are_one_clear_line(secure: Secure) -> None:
    from fleet2ban.kafka.security import CertificateAuthority

    with pytest.raises(
        KafkaSecurityError, match=r"refused the SASL login of kafka.sasl_username=fleet2ban-enforcer"
    ):
        check_connection(secure.cluster("enforcer", sasl_password="wrong"), timeout=5)
    other = secure.tmp / "other-ca.pem"
    other.write_bytes(CertificateAuthority.create().cert_pem)
    with pytest.raises(
        KafkaSecurityError, match=r"not signed by a CA in kafka.ssl_ca_location=.*other-ca.pem"
    ):
        check_connection(secure.cluster("enforcer", ssl_ca_location=other), timeout=5)
    port = secure.kafka.nodes[0].port
    with pytest.raises(
        KafkaSecurityError, match=r"not valid for the name localhost \(kafka.bootstrap_servers\)"
    ):
        check_connection(secure.cluster("enforcer", bootstrap_servers=f"localhost:{port}"), timeout=5)
    # the command line: one line, exit 2, no traceback
    bad = secure.tmp / "bad-operator.yaml"
    body = yaml.safe_load(secure.files["operator"].read_text())
    body["kafka"]["sasl_password"] = "wrong"
    bad.write_text(yaml.safe_dump(body))
    line = (
        f"fleet2ban: error: Kafka at {secure.kafka.bootstrap} refused the SASL login of "
        "kafka.sasl_username=fleet2ban-operator (SCRAM-SHA-512): wrong kafka.sasl_password, or no such user"
    )
    res = _fleet2ban(bad, "bans", "list")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [line]
    # a long-running component stops at start too (it keeps waiting only for Kafka and for ACLs)
    log = secure.tmp / "amps-bad.log"
    log.write_text("")
    args = ["shipper", "--log", str(log), "--checkpoint", str(secure.tmp / "bad.ckpt"), "--metrics-port", "0"]
    res = _fleet2ban(bad, *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in res.stderr


def test_an_expired_broker_certificate_is_named(secure: Secure) -> None:
    """A TLS endpoint with an expired certificate from the cluster's own CA (the handshake fails before
    any Kafka request, so a tiny TLS server stands in for the broker)."""
    now = datetime.now(UTC)
    cert, key = secure.spec.ca.issue(
        ["127.0.0.1"], not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)
    )
    (secure.tmp / "expired.pem").write_bytes(cert + key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(secure.tmp / "expired.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(KafkaSecurityError, match=r"certificate of the broker 127.0.0.1:\d+ has expired"):
            check_connection(secure.cluster("enforcer", bootstrap_servers=f"127.0.0.1:{port}"), timeout=5)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
