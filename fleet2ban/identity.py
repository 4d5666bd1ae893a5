"""Host identity: each host signs what it writes to ``events`` and ``reports``; readers verify (DESIGN §8).

Kafka does not tell a consumer who produced a record, and every shipper (or enforcer) may hold the same
principal, so the ACLs cannot stop one host from speaking for another. Each host therefore has its own
Ed25519 key; its records carry two headers, ``f2b-host`` (the host name) and ``f2b-sig`` (the signature),
and readers check them against the fleet's public keys (``identity.public_keys``: host -> up to two keys,
so a host's key can be rotated without a gap: add the new key, roll the host, drop the old key).

What is signed binds everything a forger would want to move: a domain tag and version, the topic kind
(``events`` or ``reports``: a signed report cannot be replayed as an event), the host name, the record key
and the value, each length-prefixed. The reader also checks that the host named *inside* the value is the
signing host (:meth:`Verifier.check`), so a host can only ever speak for itself.

A record that does not verify is dropped and counted (``fleet2ban_identity_rejected_total{topic,host,
reason}``) with at most one log line per (topic, host) per minute; ``identity.require_signatures: false``
(the default, for a rolling introduction) accepts unsigned records but still refuses bad signatures.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet2ban.exceptions import ConfigError
from fleet2ban.safetext import printable

log = logging.getLogger(__name__)

HOST_HEADER = "f2b-host"
SIG_HEADER = "f2b-sig"
_DOMAIN = b"fleet2ban-record-signature-v1"
KINDS = ("events", "reports")
MAX_KEYS_PER_HOST = 2
LOG_EVERY_S = 60.0
CLAIMED_MAX = 1000
"""Distinct unknown host names a verifier counts, logs and labels metrics with; the rest as OTHER_HOSTS."""
OTHER_HOSTS = "(other)"

REJECTED = Counter(
    "fleet2ban_identity_rejected",
    "events/reports records dropped because their host signature did not verify",
    ["topic", "host", "reason"],
)


class IdentitySettings(BaseModel):
    """This host's signing key and the fleet's public keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    key_path: Path | None = Field(
        None, description="this host's Ed25519 private key (PEM), used by its shipper and enforcer to sign"
    )
    public_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="host -> its Ed25519 public keys (base64, at most two: rotation), used by readers",
    )
    public_keys_file: Path | None = Field(
        None,
        description="a YAML file of more public keys, host -> [keys] (e.g. a mounted Kubernetes Secret), read"
        " at start and merged with public_keys",
    )
    require_signatures: bool = Field(
        False, description="drop unsigned events/reports too (bad signatures are always dropped)"
    )

    def all_public_keys(self) -> dict[str, list[str]]:
        """``public_keys`` with those of ``public_keys_file``; ConfigError naming the setting when the file
        cannot be read or holds something else than host -> one or two valid keys."""
        keys = {h: list(k) for h, k in self.public_keys.items()}
        if self.public_keys_file is None:
            return keys
        import yaml

        where = f"identity.public_keys_file {self.public_keys_file}"
        try:
            data = yaml.safe_load(Path(self.public_keys_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{where}: {exc.strerror or exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: not YAML ({' '.join(str(exc).split())[:200]})") from None
        if isinstance(data, dict) and set(data) == {"identity"} and isinstance(data["identity"], dict):
            data = data["identity"].get("public_keys")  # what `fleet2ban identity keygen` prints
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping host -> [public keys]")
        for host, got in data.items():
            listed = [got] if isinstance(got, str) else got
            if not isinstance(host, str) or not isinstance(listed, list):
                raise ConfigError(f"{where}: expected a mapping host -> [public keys]")
            merged = list(dict.fromkeys([*keys.get(host, []), *map(str, listed)]))
            if not merged or len(merged) > MAX_KEYS_PER_HOST:
                raise ConfigError(
                    f"{where}: host {printable(host)!r}: 1 or {MAX_KEYS_PER_HOST} public keys (rotation),"
                    f" not {len(merged)}"
                )
            for k in merged:
                try:
                    public_key_from_text(k)
                except ValueError as exc:
                    raise ConfigError(f"{where}: host {printable(host)!r}: {exc}") from None
            keys[host] = merged
        return keys

    @field_validator("public_keys")
    @classmethod
    def _keys(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for host, keys in v.items():
            if not keys or len(keys) > MAX_KEYS_PER_HOST:
                raise ValueError(
                    f"host {host!r}: 1 or {MAX_KEYS_PER_HOST} public keys (rotation), not {len(keys)}"
                )
            for k in keys:
                public_key_from_text(k)
        return v


# ------------------------------------------------------------------------------------------ keys


def public_key_from_text(text: str) -> Any:
    """An Ed25519 public key from its base64 text (32 raw bytes); ValueError otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{printable(text[:60])!r} is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_text(private_key: Any) -> str:
    """The base64 text of ``private_key``'s public key (what goes into ``identity.public_keys``)."""
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def generate_key() -> tuple[bytes, str]:
    """A new Ed25519 key: (private key PEM, public key text)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, public_key_text(key)


def load_private_key(path: Path) -> Any:
    """This host's Ed25519 private key from a PEM file; ConfigError naming ``identity.key_path``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"identity.key_path {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity.key_path {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity.key_path {path}: not an Ed25519 key")
    return key


# ------------------------------------------------------------------------------- signing, checking


def _message(kind: str, host: str, key: bytes | None, value: bytes | None) -> bytes:
    parts = [_DOMAIN, kind.encode(), host.encode()]
    out = bytearray()
    for p in parts:
        out += len(p).to_bytes(4, "big") + p
    for field_ in (key, value):
        if field_ is None:
            out += b"\xff\xff\xff\xff"
        else:
            out += len(field_).to_bytes(4, "big") + field_
    return bytes(out)


class Signer:
    """Signs one host's records (its shipper's events and heartbeats, its enforcer's reports)."""

    def __init__(self, host: str, private_key: Any) -> None:
        self.host = host
        self._key = private_key
        self._host = host.encode()

    @classmethod
    def from_settings(cls, host: str, settings: IdentitySettings) -> Signer | None:
        return None if settings.key_path is None else cls(host, load_private_key(settings.key_path))

    def headers(self, kind: str, key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
        """The headers to produce the record with."""
        sig = self._key.sign(_message(kind, self.host, key, value))
        return [(HOST_HEADER, self._host), (SIG_HEADER, sig)]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    host: str | None  # the signing host when the signature verified
    reason: str = ""  # unsigned | unknown-host | bad-signature | host-mismatch


Headers = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None
"""A record's headers: confluent-kafka's and aiokafka's list of pairs, or Faust's mapping."""


def _header(headers: Headers, name: str) -> bytes | None:
    if headers is None:
        return None
    if isinstance(headers, Mapping):
        v = headers.get(name)
        return v if isinstance(v, bytes) or v is None else None
    for k, v in headers:
        if k == name:
            return v if isinstance(v, bytes) or v is None else None
    return None


class Verifier:
    """Checks records against the fleet's public keys; counts and logs (rate-limited) what it drops."""

    def __init__(
        self,
        public_keys: Mapping[str, Sequence[str]],
        *,
        require: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = {host: [public_key_from_text(k) for k in keys] for host, keys in public_keys.items()}
        self.require = require
        self._clock = clock
        self._last_log: dict[tuple[str, str], float] = {}
        self._claimed: set[str] = set()
        """Unknown host names seen claimed, at most :data:`CLAIMED_MAX`."""
        self.rejected: dict[tuple[str, str, str], int] = {}

    @classmethod
    def from_settings(cls, settings: IdentitySettings) -> Verifier | None:
        """The fleet's verifier; None when the settings name no public key and do not require
        signatures (host identity not set up on this reader: every record is taken as it is)."""
        keys = settings.all_public_keys()
        if not keys and not settings.require_signatures:
            return None
        return cls(keys, require=settings.require_signatures)

    def verify(self, kind: str, key: bytes | None, value: bytes | None, headers: Headers) -> Verdict:
        from cryptography.exceptions import InvalidSignature

        host_b, sig = _header(headers, HOST_HEADER), _header(headers, SIG_HEADER)
        if host_b is None or sig is None:
            return Verdict(not self.require, None, "unsigned")
        try:
            host = host_b.decode()
        except UnicodeDecodeError:
            return Verdict(False, None, "bad-signature")
        keys = self.keys.get(host)
        if not keys:
            return Verdict(False, None, "unknown-host")
        msg = _message(kind, host, key, value)
        for pk in keys:
            try:
                pk.verify(sig, msg)
                return Verdict(True, host)
            except InvalidSignature:
                continue
        return Verdict(False, None, "bad-signature")

    def check(
        self,
        kind: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        claimed_host: str,
        *,
        count: bool = True,
    ) -> bool:
        """Whether to accept a record whose value says it comes from ``claimed_host``: its signature
        verifies with one of that host's keys (or it is unsigned and signatures are not required). A
        rejected record is counted and logged (once per topic and host per minute) unless ``count`` is
        false (a record read again, already counted when first read)."""
        v = self.verify(kind, key, value, headers)
        if v.ok and v.host is not None and v.host != claimed_host:
            v = Verdict(False, v.host, "host-mismatch")
        if not v.ok and count:
            self._reject(kind, claimed_host, v)
        return v.ok

    @property
    def rejected_total(self) -> int:
        """Records rejected so far (all topics and hosts)."""
        return sum(self.rejected.values())

    def _reject(self, kind: str, claimed: str, v: Verdict) -> None:
        if claimed not in self.keys and claimed not in self._claimed:
            # a writer without a key can claim any number of host names: past a bound they share one
            # counter, metric series and log line, so the reader's memory and its log stay bounded
            if len(self._claimed) >= CLAIMED_MAX:
                claimed = OTHER_HOSTS
            else:
                self._claimed.add(claimed)
        k = (kind, claimed, v.reason)
        self.rejected[k] = self.rejected.get(k, 0) + 1
        REJECTED.labels(topic=kind, host=printable(claimed[:64]), reason=v.reason).inc()
        now = self._clock()
        last = self._last_log.get((kind, claimed))
        if last is None or now - last >= LOG_EVERY_S:
            self._last_log[(kind, claimed)] = now
            total = sum(n for (kk, h, _r), n in self.rejected.items() if kk == kind and h == claimed)
            signer = f" (signed by {printable(v.host)})" if v.host else ""
            log.warning(
                "dropped %s records claiming host %s: %s%s; %d so far",
                kind,
                printable(claimed[:64]),
                v.reason,
                signer,
                total,
            )


HOST_ROLES = ("shipper", "enforcer")
"""The roles that run on the fleet's hosts and sign with the host key. The processor and the notifier
are central (no host key): their heartbeats are accepted unsigned, and vouch for no host."""


def check_report(
    verifier: Verifier | None,
    key: bytes | str | None,
    value: bytes | None,
    headers: Headers,
    host: str,
    role: str | None,
    *,
    count: bool = True,
) -> bool:
    """Whether to accept a decoded ``reports`` record (``role``: its heartbeat's role; None for an
    enforcer's action report) claiming ``host``: :meth:`Verifier.check`, except that an unsigned heartbeat
    of a central role (:data:`HOST_ROLES`) passes."""
    if verifier is None:
        return True
    if role is not None and role not in HOST_ROLES and _header(headers, SIG_HEADER) is None:
        return True
    k = key.encode() if isinstance(key, str) else key
    return verifier.check("reports", k, value, headers, host, count=count)
