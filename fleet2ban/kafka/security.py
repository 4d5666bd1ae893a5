"""The local Apache Kafka with security on: a throw-away CA, a SASL_SSL client listener (SCRAM-SHA-512),
the KRaft StandardAuthorizer and one SCRAM user per fleet role.

:class:`SecureSpec` is the one extension :class:`~fleet2ban.kafka.local.LocalKafka` takes for this: the
listener properties of a node, the SCRAM users to create when a node's storage is formatted, and the
client settings of any of its users (the readiness probe uses the super user's).

Layout of a node (``fleet2ban broker --secure``):

- ``SASL_SSL`` on the client port: TLS with a server certificate for the node's address (an IP SAN, so
  clients verify the host name), SCRAM-SHA-512 users created at format time (``StorageTool -S``);
- ``INTERNAL`` (broker to broker) and ``CONTROLLER`` (KRaft quorum): ``SASL_PLAINTEXT`` with PLAIN and
  one static user ``broker``, a super user; both on loopback, never advertised to clients. (SCRAM cannot
  authenticate controllers: its credentials live in the metadata log the controllers serve; and a
  PLAINTEXT controller listener would make ``User:ANONYMOUS`` a super user.)
- ``allow.everyone.if.no.acl.found=false``: a principal without ACLs gets nothing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("shipper", "processor", "enforcer", "operator", "notifier", "admin")
"""The fleet's roles: one principal each (``User:fleet2ban-<role>``), one settings file each."""

SUPERUSER = "kafka-superuser"
"""The cluster's own administrator (a super user): creates ACLs, and probes the cluster's readiness."""

_BROKER_USER = "broker"
MECHANISM = "SCRAM-SHA-512"
_SECRETS_FILE = "secrets.json"


def role_user(role: str, prefix: str = "fleet2ban-") -> str:
    """The SASL user name of a fleet role (``fleet2ban-shipper``, ...)."""
    return f"{prefix}{role}"


def _password() -> str:
    return secrets.token_hex(16)  # StorageTool -S splits on ',' and ']': hex has neither


@dataclass
class CertificateAuthority:
    """A throw-away CA and what it signs, with the ``cryptography`` package (EC P-256: fast to make)."""

    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls, name: str = "fleet2ban local CA", days: float = 30) -> CertificateAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )

    def issue(
        self,
        hosts: list[str],
        *,
        days: float = 30,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A server certificate for ``hosts`` (IP addresses or DNS names, as SANs): (cert PEM, PKCS#8 key
        PEM). ``not_before``/``not_after`` make an expired one for tests."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_cert = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = serialization.load_pem_private_key(self.key_pem, None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return (
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )


def _props_value(pem: bytes) -> str:
    """A PEM as one .properties value (``\\n`` escapes; Kafka's PEM reader ignores the line breaks)."""
    return pem.decode().strip().replace("\n", "\\n")


@dataclass
class SecureSpec:
    """Security of a :class:`~fleet2ban.kafka.local.LocalKafka`: CA, users, listeners, authorizer.

    Made by :meth:`load_or_create` in a folder (``ca.pem``, ``secrets.json``): a cluster restarted on the
    same data folder keeps its CA and passwords (the SCRAM users live in its metadata log).
    """

    directory: Path
    ca: CertificateAuthority
    passwords: dict[str, str]
    broker_password: str
    host: str = "127.0.0.1"
    _server: tuple[bytes, bytes] | None = field(default=None, repr=False)

    @classmethod
    def load_or_create(
        cls, directory: Path, host: str = "127.0.0.1", users: list[str] | None = None
    ) -> SecureSpec:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        wanted = [SUPERUSER, *(users if users is not None else [role_user(r) for r in ROLES])]
        path = directory / _SECRETS_FILE
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            ca = CertificateAuthority(data["ca_cert"].encode(), data["ca_key"].encode())
            passwords = dict(data["passwords"])
            broker = str(data["broker_password"])
        else:
            ca = CertificateAuthority.create()
            passwords, broker = {}, _password()
        for u in wanted:
            passwords.setdefault(u, _password())
        spec = cls(directory, ca, passwords, broker, host)
        spec._save()
        return spec

    def _save(self) -> None:
        path = self.directory / _SECRETS_FILE
        data = {
            "ca_cert": self.ca.cert_pem.decode(),
            "ca_key": self.ca.key_pem.decode(),
            "passwords": self.passwords,
            "broker_password": self.broker_password,
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        self.ca_path.write_bytes(self.ca.cert_pem)

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    def server_cert(self) -> tuple[bytes, bytes]:
        if self._server is None:
            self._server = self.ca.issue([self.host])
        return self._server

    # ----------------------------------------------------------------------- what LocalKafka asks

    def listener_properties(
        self, host: str, port: int, internal_port: int, controller_port: int
    ) -> dict[str, str]:
        """The listener, SASL, TLS and authorizer properties of one node."""
        cert, key = self.server_cert()
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{_BROKER_USER}" password="{self.broker_password}" '
            f'user_{_BROKER_USER}="{self.broker_password}";'
        )
        return {
            "listeners": f"SASL_SSL://{host}:{port},INTERNAL://{host}:{internal_port},"
            f"CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"SASL_SSL://{host}:{port},INTERNAL://{host}:{internal_port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,INTERNAL:SASL_PLAINTEXT,"
            "CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.internal.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.internal.plain.sasl.jaas.config": plain,
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.certificate.chain": _props_value(cert),
            "listener.name.sasl_ssl.ssl.keystore.key": _props_value(key),
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{_BROKER_USER};User:{SUPERUSER}",
        }

    def format_args(self) -> list[str]:
        """``StorageTool format`` arguments creating every SCRAM user in the initial metadata."""
        out: list[str] = []
        for user, password in self.passwords.items():
            out += ["-S", f"{MECHANISM}=[name={user},password={password}]"]
        return out

    def kafka_settings(self, user: str) -> dict[str, Any]:
        """The ``kafka.*`` settings of ``user`` (security only; the bootstrap is the cluster's)."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_username": user,
            "sasl_password": self.passwords[user],
            "ssl_ca_location": str(self.ca_path),
        }

    def client_config(self, user: str = SUPERUSER) -> dict[str, str]:
        """librdkafka properties for ``user`` (the readiness probe uses the super user)."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM,
            "sasl.username": user,
            "sasl.password": self.passwords[user],
            "ssl.ca.location": str(self.ca_path),
        }


def settings_files(
    spec: SecureSpec, bootstrap: str, kafka: dict[str, Any], directory: Path | None = None
) -> dict[str, Path]:
    """Write one settings file per role (``shipper.yaml``, ...) and ``superuser.yaml`` into
    ``directory`` (default: the spec's): ``kafka`` (prefix, partitions, replication...) plus the role's
    bootstrap, credentials and CA. Every command takes one with ``--config``. Files are 0600."""
    import yaml

    out: dict[str, Path] = {}
    target = Path(directory or spec.directory)
    for name, user in [*((r, role_user(r)) for r in ROLES), ("superuser", SUPERUSER)]:
        body = {"kafka": {**kafka, "bootstrap_servers": bootstrap, **spec.kafka_settings(user)}}
        path = target / f"{name}.yaml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"# fleet2ban settings of the {name} role on the local secure Kafka ({user})\n")
            yaml.safe_dump(body, f, sort_keys=False)
        out[name] = path
    return out


def provision(
    spec: SecureSpec,
    bootstrap: str,
    kafka: dict[str, Any],
    *,
    processor_app_id: str = "fleet2ban-processor",
    notifier_group_id: str = "fleet2ban-notifier",
    create_topics: bool = True,
) -> dict[str, Path]:
    """What ``fleet2ban broker --secure`` does once the cluster is up, as its super user: create the
    fleet's topics, apply the fleet's ACLs (:mod:`fleet2ban.kafka.acls`, the same code as ``fleet2ban
    acls apply``), and write the role settings files. Returns the files by role."""
    from fleet2ban.kafka.acls import apply_acls, fleet_grants
    from fleet2ban.kafka.config import admin_config, resolve
    from fleet2ban.kafka.topics import ensure_topics
    from fleet2ban.settings import KafkaSettings

    admin = resolve(KafkaSettings(**{**kafka, **spec.kafka_settings(SUPERUSER)}), bootstrap)
    if create_topics:
        ensure_topics(admin)
    grants = fleet_grants(admin.settings.topic_prefix, processor_app_id, notifier_group_id)
    apply_acls(admin_config(admin), grants)
    _wait_for_acls(spec, bootstrap, admin.topics.events)
    return settings_files(spec, bootstrap, kafka)


def _wait_for_acls(spec: SecureSpec, bootstrap: str, topic: str, timeout: float = 30.0) -> None:
    """Return once the brokers enforce the ACLs just created (the controller commits them; each broker
    applies them when it replays the metadata log): the shipper can see ``topic``."""
    import time

    from confluent_kafka.admin import AdminClient

    from fleet2ban.exceptions import BrokerError

    user = role_user("shipper")
    if user not in spec.passwords:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap, **spec.client_config(user), "log_level": 0})
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(topic=topic, timeout=10)
        tmeta = meta.topics.get(topic)
        if tmeta is not None and tmeta.error is None:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"the ACLs just created were not in force within {timeout:.0f}s")
        time.sleep(0.05)
