"""The wire contract: every record, topic name and key that crosses Kafka.

Everything that reads or writes a topic imports this module; nothing else defines a record.

- Values are JSON objects with a ``"v"`` schema version. Unknown fields are ignored on decode, so an old
  reader survives a newer writer. Times are RFC 3339 strings in UTC on the wire (``datetime`` here).
- Keys are UTF-8: ``events`` and ``decisions`` by client IP (or network for prefix bans), ``bans`` by
  ``JAIL|IP``, ``reports`` by host. Every producer puts a key in the partition :func:`partition_for`
  gives it (Kafka's murmur2, as librdkafka's ``murmur2_random`` and aiokafka/Faust do), so the records
  of one address and the processor's table entries for it share a partition number.
- ``events`` (``"v": 2``, :class:`EventsRecord`): the lines one host read in one round of the addresses
  of one partition, keyed by the first line's address (so the key alone places the record where its
  lines' addresses hash). The earlier shape (``"v": 1``, :class:`EventBatch`: one address per record)
  is still read (:func:`decode_events` takes both) while shippers are upgraded.
- ``allow`` (compacted, one partition, :class:`AllowEntry`, key ``JAIL|NETWORK`` with ``*`` for every jail):
  the live allow-list. Operators write it (``fleet2ban allow add|remove``, the console); a tombstone
  removes an entry. The processor (every worker) and every enforcer read it whole from the beginning and
  follow it live; an entry stops applying at its ``expires_at`` by each reader's clock. Each change is
  also written to ``decisions`` as an audit record (:func:`allow_decision`: action ``allow`` or
  ``unallow``, origin ``manual``, jail ``*`` for every jail), so it shows in the audit views.
- Decoding is strict: a record that is not JSON, lacks a required field or has a field of the wrong type
  raises :class:`ContractError`, one clear error type that callers log, count and skip.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec

SCHEMA_VERSION: Final = 1
EVENTS_VERSION: Final = 2
"""The ``events`` record's version: 2 is :class:`EventsRecord` (lines of many addresses of one partition);
1 is :class:`EventBatch` (one address), still read during an upgrade."""
EVENTS_RECORD_MAX_BYTES: Final = 256 * 1024
"""Bound on an ``events`` record a shipper writes (its JSON size, estimated as it fills): well under
Kafka's default ``max.message.bytes`` (1 MiB) and the processor's 4 MiB refusal bound."""
DEFAULT_TOPIC_PREFIX: Final = "fleet2ban."
RAW_LINE_MAX: Final = 512
"""Bound on the ``raw`` copy of a log line carried in events and evidence (characters)."""
EVIDENCE_MAX: Final = 5
"""How many raw lines a decision carries as evidence."""
MAX_BAN_SECONDS: Final = 10 * 365 * 86400
"""The longest ban (or any duration an operator gives) accepted anywhere: ten years. Longer is permanent's
job; bounding it keeps every ``at + duration`` far inside what a datetime can hold (year 9999)."""
JAIL_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,24}")
"""What a jail's name may be (settings, topics and firewall chain names; never ``|``, the key separator)."""

Time = Annotated[datetime, msgspec.Meta(tz=True)]
"""A timezone-aware time (a naive one is rejected on decode)."""
Action = Literal["ban", "unban", "allow", "unallow"]
"""``ban``/``unban``: a ban decided or lifted; ``allow``/``unallow``: an allow-list entry added or removed
(audit records; the entry itself lives on the ``allow`` topic)."""
ALL_JAILS: Final = "*"
"""The jail of an allow-list entry that applies in every jail."""
ALLOW_ACTIONS: Final = frozenset({"allow", "unallow"})
Origin = Literal["auto", "manual"]
ReportKind = Literal["applied", "removed", "failed", "skipped"]
Role = Literal["shipper", "processor", "enforcer", "cli", "console", "notifier"]


class ContractError(ValueError):
    """A record that does not follow the wire contract (bad JSON, schema, key or version)."""


# --------------------------------------------------------------------------------------------- records


class Line(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One ``07-0013`` line as carried inside an :class:`EventBatch`."""

    id: str
    ts: Time
    port: int
    client: str
    reason: str
    raw: str = ""


class Event(msgspec.Struct, frozen=True, gc=False):
    """One parsed ``07-0013`` line of one host: what ``fleet2ban parse`` prints, what the policy consumes."""

    host: str
    ip: str
    id: str
    ts: Time
    port: int
    client: str
    reason: str
    raw: str = ""
    instance: str = ""

    def line(self) -> Line:
        return Line(
            id=self.id, ts=self.ts, port=self.port, client=self.client, reason=self.reason, raw=self.raw
        )


class EventBatch(msgspec.Struct, frozen=True):
    """The ``events`` record of schema version 1: the lines of one IP that one host read in one round.

    Written by shippers before :class:`EventsRecord` (v2); still read (:func:`decode_events`)."""

    host: str
    ip: str
    lines: list[Line]
    instance: str = ""
    v: int = SCHEMA_VERSION

    def events(self) -> list[Event]:
        return [
            Event(
                host=self.host,
                ip=self.ip,
                id=ln.id,
                ts=ln.ts,
                port=ln.port,
                client=ln.client,
                reason=ln.reason,
                raw=ln.raw,
                instance=self.instance,
            )
            for ln in self.lines
        ]


class AddressLine(msgspec.Struct, frozen=True, gc=False):
    """One ``07-0013`` line inside an :class:`EventsRecord`: a :class:`Line` with its client address."""

    ip: str
    id: str
    ts: Time
    port: int
    client: str
    reason: str
    raw: str = ""


class EventsRecord(msgspec.Struct, frozen=True):
    """The ``events`` record (``"v": 2``): the lines that one host read in one round, of every address
    whose partition (:func:`partition_for`) is the record's, in the order read.

    Key: the first line's address, so the record is in the partition of every address it holds (a
    reader or a re-producer that goes by the key finds the same partition). Bounded by the shipper at
    ``shipper.max_lines_per_record`` lines and :data:`EVENTS_RECORD_MAX_BYTES`."""

    host: str
    lines: list[AddressLine]
    instance: str = ""
    v: int = EVENTS_VERSION

    def key(self) -> bytes:
        return self.lines[0].ip.encode()

    def events(self) -> list[Event]:
        host, instance = self.host, self.instance
        return [
            Event(host, ln.ip, ln.id, ln.ts, ln.port, ln.client, ln.reason, ln.raw, instance)
            for ln in self.lines
        ]


def address_line(ip: str, line: Line) -> AddressLine:
    return AddressLine(ip, line.id, line.ts, line.port, line.client, line.reason, line.raw)


class Decision(msgspec.Struct, frozen=True):
    """The ``decisions`` record: one ban or unban, with its evidence. The audit log."""

    id: str
    action: Action
    ip: str
    jail: str
    at: Time
    ports: list[int] = msgspec.field(default_factory=list)
    expires_at: Time | None = None
    failures: int = 0
    first_failure_at: Time | None = None
    last_failure_at: Time | None = None
    hosts: list[str] = msgspec.field(default_factory=list)
    ban_count: int = 0
    origin: Origin = "auto"
    by: str | None = None
    reason: str | None = None
    evidence: list[str] = msgspec.field(default_factory=list)
    scope: list[str] | None = None
    """The hosts a ban applies on (a jail's ``min_hosts`` not reached: the hosts that saw the failures);
    None (and in records written before scopes existed): every host."""
    v: int = SCHEMA_VERSION


class BanState(msgspec.Struct, frozen=True):
    """The ``bans`` value (key ``JAIL|IP``): the decision in force. A tombstone (no value) lifts it."""

    decision_id: str
    ip: str
    jail: str
    at: Time
    ports: list[int] = msgspec.field(default_factory=list)
    expires_at: Time | None = None
    origin: Origin = "auto"
    ban_count: int = 1
    failures: int = 0
    hosts: list[str] = msgspec.field(default_factory=list)
    by: str | None = None
    reason: str | None = None
    scope: list[str] | None = None
    """The hosts the ban applies on; None: every host (see :attr:`Decision.scope`)."""
    v: int = SCHEMA_VERSION

    @classmethod
    def from_decision(cls, d: Decision) -> BanState:
        return cls(
            decision_id=d.id,
            ip=d.ip,
            jail=d.jail,
            at=d.at,
            ports=d.ports,
            expires_at=d.expires_at,
            origin=d.origin,
            ban_count=d.ban_count,
            failures=d.failures,
            hosts=d.hosts,
            by=d.by,
            reason=d.reason,
            scope=d.scope,
        )

    def applies_on(self, host: str) -> bool:
        """Whether this ban is to be applied on ``host`` (its scope includes it, or it has none)."""
        return self.scope is None or host in self.scope

    def active_at(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


class AllowEntry(msgspec.Struct, frozen=True):
    """The ``allow`` value (key ``JAIL|NETWORK``, :func:`allow_key`): never ban ``network`` in ``jail``
    (``*``: in every jail) until ``expires_at`` (None: until removed). A tombstone removes it."""

    id: str
    network: str
    at: Time
    jail: str = ALL_JAILS
    expires_at: Time | None = None
    by: str | None = None
    reason: str | None = None
    v: int = SCHEMA_VERSION

    def key(self) -> str:
        return allow_key(self.jail, self.network)

    def active_at(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now

    def applies_to(self, jail: str) -> bool:
        return self.jail in (ALL_JAILS, jail)


class Report(msgspec.Struct, frozen=True, tag="report", tag_field="type"):
    """On ``reports`` (key: host): what one enforcer did about one ban."""

    host: str
    kind: ReportKind
    jail: str
    ip: str
    at: Time
    decision_id: str | None = None
    detail: str | None = None
    backend: str | None = None
    v: int = SCHEMA_VERSION


class Heartbeat(msgspec.Struct, frozen=True, tag="heartbeat", tag_field="type"):
    """On ``reports`` (key: host): a component is alive, with its counters."""

    host: str
    role: Role
    at: Time
    instance: str = ""
    version: str = ""
    started_at: Time | None = None
    interval_s: float = 10.0
    lag: float | None = None
    counters: dict[str, float] = msgspec.field(default_factory=dict)
    applied: list[str] = msgspec.field(default_factory=list)
    """For enforcers: the ``JAIL|IP`` keys in force in the kernel at ``at`` (bounded by the sender)."""
    applied_total: int | None = None
    """For enforcers: how many keys are in force in all; when larger than ``len(applied)`` the list was
    cut by the sender's bound, and readers (fleet2ban.audit) merge it with ``reports`` instead of taking it
    as the whole set. ``None``: ``applied`` is complete."""
    applied_digest: str | None = None
    """For enforcers: :func:`applied_digest` of the bans in force at ``at`` that it has applied, as
    ``COUNT:HEX``, so a reader that derives the bans in force from ``bans`` can check that the host has
    them all without its per-ban reports. ``None``: not sent (an older enforcer)."""
    bans_offsets: dict[int, int] | None = None
    """For enforcers: per ``bans`` partition, the offset of the next record it would read: the
    ``applied_digest`` is over the bans in force in the topic before these offsets."""
    v: int = SCHEMA_VERSION


ReportsRecord = Report | Heartbeat


# ------------------------------------------------------------------------------------------- encoding

_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(EventBatch)
_decision_decoder = msgspec.json.Decoder(Decision)
_ban_decoder = msgspec.json.Decoder(BanState)
_allow_decoder = msgspec.json.Decoder(AllowEntry)
_reports_decoder: msgspec.json.Decoder[ReportsRecord] = msgspec.json.Decoder(ReportsRecord)
_event_decoder = msgspec.json.Decoder(Event)


LinePort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""A client's port on an events line: 0 is a port a fail2ban filter did not capture (checked on decode)."""


class _AnyLine(msgspec.Struct, frozen=True, gc=False):
    id: str
    ts: Time
    port: LinePort
    client: str
    reason: str
    raw: str = ""
    ip: str = ""


class _AnyEvents(msgspec.Struct, frozen=True):
    """Either ``events`` shape: v1 names the address once, v2 on every line."""

    host: str
    lines: list[_AnyLine]
    ip: str = ""
    instance: str = ""
    v: int = SCHEMA_VERSION


_any_events_decoder = msgspec.json.Decoder(_AnyEvents)

CANONICAL_SEEN_MAX: Final = 200_000
"""Addresses of events lines already found canonical that the decoder remembers (cleared when full)."""
_canonical_seen: set[str] = set()


def encode(record: msgspec.Struct) -> bytes:
    """Serialise any record of this module to its JSON wire form."""
    return _encoder.encode(record)


def to_builtins(record: msgspec.Struct) -> dict[str, Any]:
    """A record as plain JSON-ready builtins (RFC 3339 strings for times)."""
    out = msgspec.to_builtins(record)
    assert isinstance(out, dict)
    return out


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes | str | None, what: str) -> Any:
    if data is None:
        raise ContractError(f"{what}: empty value")
    try:
        rec = decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError(f"{what}: {exc}") from None
    if getattr(rec, "v", SCHEMA_VERSION) > SCHEMA_VERSION:  # an Event (parse's JSON lines) has no "v"
        # Newer minor writers add fields (ignored); a bumped version means an incompatible change.
        raise ContractError(f"{what}: schema version {rec.v} is newer than {SCHEMA_VERSION}")
    return rec


def decode_batch(data: bytes | str | None) -> EventBatch:
    rec: EventBatch = _decode(_batch_decoder, data, "events record")
    if not rec.lines:
        raise ContractError("events record: no lines")
    _check_canonical(rec.ip, normalize_ip, "events record")
    for ln in rec.lines:
        _check_port(ln.port, "events record", unknown_ok=True)
    return rec


def _decode_events_any(data: bytes | str | None) -> _AnyEvents:
    """An ``events`` record of either shape, checked (every line then has its address in ``ip``)."""
    if data is None:
        raise ContractError("events record: empty value")
    try:
        rec = _any_events_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError(f"events record: {exc}") from None
    if not rec.lines:
        raise ContractError("events record: no lines")
    v = rec.v  # ports were checked by the decoder (LinePort)
    if v == EVENTS_VERSION:
        known = _canonical_seen
        if not known.issuperset({ln.ip for ln in rec.lines}):  # most addresses were seen already
            for ln in rec.lines:
                ip = ln.ip
                if ip not in known:
                    _check_canonical(ip, normalize_ip, "events record")
                    if len(known) >= CANONICAL_SEEN_MAX:
                        known.clear()
                    known.add(ip)
    elif v == 1:
        ip = rec.ip
        _check_canonical(ip, normalize_ip, "events record")
        rec.lines[:] = [msgspec.structs.replace(ln, ip=ip) for ln in rec.lines]
    elif v > EVENTS_VERSION:
        raise ContractError(f"events record: schema version {v} is newer than {EVENTS_VERSION}")
    else:
        raise ContractError(f"events record: unknown schema version {v}")
    return rec


def decode_events_record(data: bytes | str | None) -> EventsRecord:
    """An ``events`` record of either shape as an :class:`EventsRecord` (a v1 one's address on each line)."""
    rec = _decode_events_any(data)
    lines = [AddressLine(ln.ip, ln.id, ln.ts, ln.port, ln.client, ln.reason, ln.raw) for ln in rec.lines]
    return EventsRecord(rec.host, lines, rec.instance)


def decode_events(data: bytes | str | None) -> list[Event]:
    """Every line of an ``events`` record of either shape (v2 :class:`EventsRecord`, v1 :class:`EventBatch`),
    as events in the record's order. ContractError for anything else (no lines, a bad address or port)."""
    rec = _decode_events_any(data)
    host, instance = rec.host, rec.instance
    return [
        Event(host, ln.ip, ln.id, ln.ts, ln.port, ln.client, ln.reason, ln.raw, instance) for ln in rec.lines
    ]


def decode_event(data: bytes | str | None) -> Event:
    rec: Event = _decode(_event_decoder, data, "event")
    _check_canonical(rec.ip, normalize_ip, "event")
    _check_port(rec.port, "event", unknown_ok=True)
    return rec


def decode_decision(data: bytes | str | None) -> Decision:
    rec: Decision = _decode(_decision_decoder, data, "decision")
    _check_canonical(rec.ip, normalize_target, "decision")
    if not (rec.jail == ALL_JAILS and rec.action in ALLOW_ACTIONS):
        check_jail_name(rec.jail)
    for p in rec.ports:
        _check_port(p, "decision")
    _check_duration(rec.at, rec.expires_at, "decision")
    return rec


def decode_ban(data: bytes | str | None) -> BanState:
    rec: BanState = _decode(_ban_decoder, data, "ban state")
    _check_canonical(rec.ip, normalize_target, "ban state")
    check_jail_name(rec.jail)
    for p in rec.ports:
        _check_port(p, "ban state")
    _check_duration(rec.at, rec.expires_at, "ban state")
    return rec


def decode_allow(data: bytes | str | None) -> AllowEntry:
    """An ``allow`` value; ContractError for anything else (a network not canonical, a bad jail)."""
    rec: AllowEntry = _decode(_allow_decoder, data, "allow entry")
    _check_canonical(rec.network, normalize_target, "allow entry")
    space = exempts_most([ipaddress.ip_network(rec.network)])
    if space is not None:  # only a writer that skipped fleet2ban.allowlist.new_entry's checks gets here
        raise ContractError(f"allow entry: {rec.network} is half or more of {space} (banning would be off)")
    if rec.jail != ALL_JAILS:
        check_jail_name(rec.jail)
    _check_duration(rec.at, rec.expires_at, "allow entry")
    return rec


def allow_key(jail: str, network: str) -> str:
    """The ``allow`` key of one entry: ``JAIL|NETWORK`` (``*|NETWORK`` for every jail)."""
    return f"{jail}|{network}"


def split_allow_key(key: bytes | str) -> tuple[str, str]:
    """(jail or ``*``, canonical network) of an ``allow`` key; ContractError when it is not one."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    jail, sep, net = text.rpartition("|")
    if not sep or not jail:
        raise ContractError(f"allow key is not JAIL|NETWORK: {text[:80]!r}")
    if jail != ALL_JAILS:
        check_jail_name(jail)
    network = normalize_target(net)
    if network != net:
        raise ContractError(f"allow key {text[:80]!r}: network not in canonical form")
    return jail, network


def allow_decision(entry: AllowEntry, action: Literal["allow", "unallow"], **changes: Any) -> Decision:
    """The audit record on ``decisions`` of an allow-list change (``unallow``: pass its own ``id``,
    ``at``, ``by`` and ``reason``)."""
    d = Decision(
        id=entry.id,
        action=action,
        ip=entry.network,
        jail=entry.jail,
        at=entry.at,
        expires_at=entry.expires_at if action == "allow" else None,
        origin="manual",
        by=entry.by,
        reason=entry.reason,
    )
    return msgspec.structs.replace(d, **changes) if changes else d


_LONGEST_BAN: Final = timedelta(seconds=MAX_BAN_SECONDS, days=1)


def _check_duration(at: datetime, expires_at: datetime | None, what: str) -> None:
    """A ban lasts at most ten years (a day of slack): longer is what ``expires_at: null`` (permanent) is
    for, and an expiry near year 9999 would overflow when the ban is lifted."""
    if expires_at is not None and expires_at - at > _LONGEST_BAN:
        raise ContractError(f"{what}: expires_at {rfc3339(expires_at)} is more than ten years after at")


def _check_canonical(text: str, normalize: Callable[[str], str], what: str) -> None:
    """Addresses travel in their one canonical form: anything else is refused, not repaired."""
    if normalize(text) != text:
        raise ContractError(f"{what}: address {text[:64]!r} is not in canonical form")


def _check_port(port: int, what: str, unknown_ok: bool = False) -> None:
    """A TCP port; ``unknown_ok``: 0 too (a client's source port that a fail2ban filter did not capture)."""
    if not (0 if unknown_ok else 1) <= port < 65536:
        raise ContractError(f"{what}: port {port} out of range {'0' if unknown_ok else '1'}-65535")


def check_jail_name(name: str) -> str:
    """``name`` when it is a valid jail name (:data:`JAIL_NAME`); ContractError otherwise."""
    if JAIL_NAME.fullmatch(name) is None:
        raise ContractError(f"not a jail name: {name[:40]!r} (letters, digits, _ . -; at most 24)")
    return name


HEARTBEAT_INTERVAL_MAX_S: Final = 86400.0
"""The longest heartbeat interval a reader accepts (a longer one would keep a dead component "live")."""


def decode_report(data: bytes | str | None) -> ReportsRecord:
    """A ``reports`` record; ContractError for anything else, including a heartbeat whose numbers are not
    finite or out of range (``interval_s: 1e308`` kept a dead enforcer "live" and crashed the readers'
    arithmetic, issue 20)."""
    rec: ReportsRecord = _decode(_reports_decoder, data, "reports record")
    if isinstance(rec, Heartbeat):
        if not 0 < rec.interval_s <= HEARTBEAT_INTERVAL_MAX_S:  # also false for NaN
            raise ContractError(f"heartbeat: interval_s {rec.interval_s!r} out of range (0, 86400]")
        if rec.lag is not None and not math.isfinite(rec.lag):
            raise ContractError(f"heartbeat: lag {rec.lag!r} is not finite")
        if not all(math.isfinite(v) for v in rec.counters.values()):
            raise ContractError("heartbeat: a counter is not finite")
        if rec.applied_total is not None and rec.applied_total < 0:
            raise ContractError(f"heartbeat: applied_total {rec.applied_total} is negative")
    return rec


def may_be_heartbeat(value: bytes | None) -> bool:
    """Whether a ``reports`` value can be a :class:`Heartbeat`: False means it cannot (its JSON lacks the
    tag ``"heartbeat"`` of the ``type`` field), so a reader skips it without decoding; True still needs
    :func:`decode_report`."""
    return value is not None and b'"heartbeat"' in value


# ---------------------------------------------------------------------------------------- addresses


_CANONICAL_V4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)
"""Dotted-quad text that is already canonical (no leading zeros): returned as is, without ipaddress."""


_ADDRESS_CHARS: Final = frozenset("0123456789abcdefABCDEF:./")
"""Every character an address or network may hold once its optional brackets are removed: nothing else
(no IPv6 scope id ``%eth0``, no whitespace or newline inside) ever reaches a firewall backend."""
_V4_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def _address_text(text: str) -> str:
    """``text`` without surrounding whitespace and IPv6 brackets, when every character left can belong
    to an address; ContractError otherwise."""
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    if not t or len(t) > 64 or not _ADDRESS_CHARS.issuperset(t):
        raise ContractError(f"not an IP address: {text[:64]!r}")
    return t


def normalize_ip(text: str) -> str:
    """Canonical text of one address: compressed, lower case, IPv4-mapped IPv6 as IPv4.

    This is the one address parser: every way in (log lines, topics, the CLI, the console, settings)
    goes through it or :func:`normalize_target`. It refuses scope ids (``fe80::1%eth0``), inner
    whitespace and anything but an address (ContractError); its result is the only form on the wire."""
    if _CANONICAL_V4.fullmatch(text):  # fast path (readers decode 100,000s of keys): same result
        return text
    t = _address_text(text)
    if "/" in t:
        raise ContractError(f"not an IP address: {text[:64]!r}")
    try:
        addr = ipaddress.ip_address(t)
    except ValueError:
        raise ContractError(f"not an IP address: {text[:64]!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def normalize_target(text: str) -> str:
    """Canonical text of a ban target: one address (``10.1.2.3``) or a network (``2001:db8::/64``).

    An IPv4-mapped IPv6 network (``::ffff:10.0.0.0/104``) is the IPv4 network it maps (``10.0.0.0/8``),
    so the rails judge it as what the kernel would match."""
    if "/" not in text:
        return normalize_ip(text)
    t = _address_text(text)
    prefix = t.partition("/")[2]
    if not prefix.isdigit() or len(prefix) > 3:
        raise ContractError(f"not an IP network: {text[:64]!r}")
    try:
        net = ipaddress.ip_network(t, strict=False)
    except ValueError:
        raise ContractError(f"not an IP network: {text[:64]!r}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_V4_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        net = ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    if net.num_addresses == 1:
        return str(net.network_address)
    return str(net)


def target_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A ban target as a network (a single address is a /32 or /128), after :func:`normalize_target`."""
    return ipaddress.ip_network(normalize_target(text), strict=False)


_BANNABLE: Final = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("2000::/3"))
"""Per family, the addresses bans are for: all of IPv4; IPv6's global unicast space (the rest is not
routed on the Internet)."""


def exempts_most(
    nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The space (:data:`_BANNABLE`) of which ``nets`` together cover half or more, or None.

    An exemption that wide (``ignoreip``, ``enforcer.protect``, an allow-list entry) switches banning off
    for most of the Internet: ``0.0.0.0/0`` does it alone, and so do ``0.0.0.0/1 128.0.0.0/1`` or
    ``2000::/3`` (issue 20). Private and local ranges (``10.0.0.0/8``, ``fc00::/7``) are far below it."""
    items = list(nets)
    for space in _BANNABLE:
        same = [n for n in items if n.version == space.version]
        if not same:
            continue
        covered = 0
        for n in ipaddress.collapse_addresses(same):  # type: ignore[type-var]
            if n.subnet_of(space):  # type: ignore[arg-type]
                covered += n.num_addresses
            elif space.subnet_of(n):  # type: ignore[arg-type]
                covered += space.num_addresses
        if covered * 2 >= space.num_addresses:
            return space
    return None


# --------------------------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


@dataclass(frozen=True)
class Topics:
    """The topic names under one prefix (default ``fleet2ban.``)."""

    prefix: str = DEFAULT_TOPIC_PREFIX
    SUFFIXES: ClassVar[tuple[str, ...]] = ("events", "decisions", "bans", "reports", "deadletter", "allow")

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def decisions(self) -> str:
        return f"{self.prefix}decisions"

    @property
    def bans(self) -> str:
        return f"{self.prefix}bans"

    @property
    def reports(self) -> str:
        return f"{self.prefix}reports"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}deadletter"

    @property
    def allow(self) -> str:
        return f"{self.prefix}allow"

    def specs(
        self,
        partitions: int,
        decisions_retention_days: float = 30.0,
        events_retention_hours: float = 24.0,
        reports_retention_days: float = 7.0,
    ) -> list[TopicSpec]:
        """The topics with partitions, retention and cleanup policy (DESIGN §2)."""
        day_ms = 24 * 3600 * 1000
        return [
            TopicSpec(
                self.events,
                partitions,
                {"cleanup.policy": "delete", "retention.ms": str(int(events_retention_hours * 3600 * 1000))},
            ),
            TopicSpec(
                self.decisions,
                partitions,
                {"cleanup.policy": "delete", "retention.ms": str(int(decisions_retention_days * day_ms))},
            ),
            TopicSpec(self.bans, partitions, {"cleanup.policy": "compact"}),
            TopicSpec(
                self.reports,
                partitions,
                {"cleanup.policy": "delete", "retention.ms": str(int(reports_retention_days * day_ms))},
            ),
            TopicSpec(self.deadletter, 1, {"cleanup.policy": "delete", "retention.ms": str(7 * day_ms)}),
            TopicSpec(self.allow, 1, {"cleanup.policy": "compact"}),
        ]


def ban_key(jail: str, ip: str) -> str:
    """The ``bans`` key of one (jail, target)."""
    return f"{jail}|{ip}"


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_DIGEST_MOD: Final = 1 << 128


def digest_item(key: str, expires_at: datetime | None) -> int:
    """One ban's share of an :func:`applied_digest`: a 128-bit hash of its ``JAIL|IP`` key and expiry."""
    exp = "-" if expires_at is None else str((expires_at - _EPOCH) // _MICROSECOND)
    return int.from_bytes(hashlib.blake2b(f"{key}|{exp}".encode(), digest_size=16).digest(), "big")


def applied_digest(items: Iterable[int]) -> str:
    """An order-independent digest of a set of bans (their :func:`digest_item` values, each ban once):
    ``COUNT:HEX`` with the sum of the items modulo 2**128. Two sets agree on it only if they are equal,
    but for a chance of about 2**-128."""
    total = 0
    count = 0
    for item in items:
        total += item
        count += 1
    return f"{count}:{total % _DIGEST_MOD:032x}"


def split_ban_key(key: bytes | str) -> tuple[str, str]:
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    jail, sep, ip = text.rpartition("|")
    if not sep or not jail:
        raise ContractError(f"bans key is not JAIL|IP: {text[:80]!r}")
    return jail, normalize_target(ip)


# ---------------------------------------------------------------------------------------- partitions

_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (seed 0x9747b28c) as a signed 32-bit int, like the Java client's ``Utils.murmur2``
    (librdkafka's ``murmur2_random`` and aiokafka's default partitioner compute the same)."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length & 3
    tail = 4 * n4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (``toPositive(murmur2(key)) % partitions``): where
    every fleet2ban producer puts a key, where the processor's table keeps it, where readers look."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions


def events_key(address: str, prefix_v6: int) -> str:
    """What places an address, or a target (an address, or an IPv6 network a jail bans by its
    ``ban_prefix_v6``), in the ``events`` topic and the processor's table: an IPv4 address itself; an
    IPv6 one (or network) as the ``/prefix_v6`` network holding it (``kafka.partition_prefix_v6``), so that
    every address of a prefix a jail counts together is counted by one worker, in one partition. With
    ``prefix_v6`` 128, the address (or network) itself."""
    if ":" not in address or prefix_v6 >= 128:
        return address
    net = ipaddress.IPv6Network(address, strict=False)
    if net.prefixlen > prefix_v6:
        net = net.supernet(new_prefix=prefix_v6)
    return str(net)


def events_partition(address: str, partitions: int, prefix_v6: int) -> int:
    """The ``events`` partition of an address or target (:func:`events_key`, then :func:`partition_for`)."""
    return partition_for(events_key(address, prefix_v6), partitions)


PARTITION_CACHE_MAX: Final = 200_000
"""Addresses whose partition an :class:`EventsPartitions` remembers by default (cleared when full)."""


class EventsPartitions:
    """:func:`events_partition` for one ``events`` topic (its partition count and ``partition_prefix_v6``),
    remembered per address: what a shipper groups lines by and a worker checks records against. The
    cache holds at most ``limit`` addresses (cleared when full)."""

    __slots__ = ("_cache", "limit", "partitions", "prefix_v6")

    def __init__(self, partitions: int, prefix_v6: int, limit: int = PARTITION_CACHE_MAX) -> None:
        self.partitions = partitions
        self.prefix_v6 = prefix_v6
        self.limit = limit
        self._cache: dict[str, int] = {}

    def of(self, address: str) -> int:
        """The partition of one address or target."""
        cache = self._cache
        p = cache.get(address)
        if p is None:
            if len(cache) >= self.limit:
                cache.clear()
            p = cache[address] = events_partition(address, self.partitions, self.prefix_v6)
        return p

    def each(self, addresses: list[str]) -> list[int]:
        """The partitions of many addresses, in order (one lookup in C when all are remembered)."""
        got = list(map(self._cache.get, addresses))
        if None in got:
            return [self.of(a) for a in addresses]
        return got  # type: ignore[return-value]  # no None left


# -------------------------------------------------------------------------------------------- ids


def line_id(host: str, file_id: str, offset: int) -> str:
    """Stable id of one log line: the same line read twice (a replay after restart) has the same id."""
    return f"{host}:{file_id}:{offset}"


def auto_decision_id(jail: str, ip: str, trigger_line_id: str, action: Action = "ban") -> str:
    """Deterministic id of an automatic decision: a re-emitted decision is recognised downstream."""
    digest = hashlib.blake2b(f"{action}|{jail}|{ip}|{trigger_line_id}".encode(), digest_size=10).hexdigest()
    return f"{action[0]}-{digest}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def rfc3339(ts: datetime) -> str:
    """RFC 3339 text of a UTC time, as on the wire (``2017-12-08T00:55:49.939559Z``)."""
    return msgspec.json.encode(ts).decode().strip('"')
