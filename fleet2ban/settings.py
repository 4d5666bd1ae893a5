"""The one typed settings model: a YAML file, then ``FLEET2BAN_*`` environment variables, then CLI flags.

Precedence, lowest to highest: defaults < YAML file (``--config`` or ``FLEET2BAN_CONFIG``) < environment
(``FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS``, nested names joined by ``__``) < command-line flags. The same
dotted names (``kafka.bootstrap_servers``) are used in docs, CLI help and the k8s ConfigMap.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from fleet2ban.contract import (
    DEFAULT_TOPIC_PREFIX,
    JAIL_NAME,
    MAX_BAN_SECONDS,
    ContractError,
    exempts_most,
    target_network,
)
from fleet2ban.exceptions import ConfigError
from fleet2ban.formula import compile_formula
from fleet2ban.identity import IdentitySettings

ENV_PREFIX = "FLEET2BAN_"
CONFIG_ENV = "FLEET2BAN_CONFIG"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class KafkaSettings(_Section):
    """How every component reaches Kafka. Without ``bootstrap_servers`` local runs start a local Apache
    Kafka (see :class:`BrokerSettings`)."""

    bootstrap_servers: str | None = Field(
        None, description="host:port[,host:port]; unset = start a local Apache Kafka on loopback"
    )
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    partitions: int = Field(6, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=16)
    partition_prefix_v6: int = Field(
        64,
        ge=16,
        le=128,
        description="IPv6 clients' events are partitioned by this prefix (the same on every shipper and"
        " processor; at most every jail's ban_prefix_v6)",
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, le=16, description="of the fleet's topics (unset: 2 with replication 3+, else 1)"
    )
    decisions_retention_days: float = Field(30.0, gt=0)
    events_retention_hours: float = Field(24.0, gt=0)
    reports_retention_days: float = Field(7.0, gt=0, description="enforcers' reports and heartbeats")
    client_id: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    extra: dict[str, str] = Field(
        default_factory=dict,
        description="extra librdkafka properties for confluent-kafka clients; those with an aiokafka"
        " equivalent (TLS verification, timeouts) reach the processor too",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        for part in v.split(","):
            host, sep, port = part.strip().removeprefix("kafka://").rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{part!r} is not host:port")
        return ",".join(p.strip().removeprefix("kafka://") for p in v.split(","))

    @model_validator(mode="after")
    def _sasl(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            raise ValueError("SASL security_protocol needs sasl_mechanism and sasl_username")
        return self


class BrokerSettings(_Section):
    """The local Apache Kafka (KRaft) that ``fleet2ban broker``, ``fleet2ban dev``, the benches and the
    tests run from the Maven Central jars when no ``kafka.bootstrap_servers`` is configured."""

    version: str = Field(
        "4.1.1", pattern=r"^4\.\d+\.\d+$", description="Apache Kafka release (org.apache.kafka:kafka_2.13)"
    )
    nodes: Literal[1, 3] = Field(1, description="1 node, or 3 (replication factor 3, min.insync.replicas 2)")
    port: int = Field(0, ge=0, le=65535, description="first client port on 127.0.0.1 (0 = free ports)")
    data_dir: Path | None = Field(None, description="log and metadata directories (unset = a temp folder)")
    cache_dir: Path | None = Field(
        None, description="where the jars are fetched once (unset = ~/.cache/fleet2ban/kafka-VERSION)"
    )
    heap_mb: int = Field(384, ge=128, le=8192, description="JVM heap per node (-Xmx)")


class IncrementSettings(_Section):
    """fail2ban's ``bantime.increment`` options (jail.conf(5))."""

    enabled: bool = False
    factor: float = Field(1.0, gt=0, le=1e6)
    formula: str | None = Field(
        None,
        description="fail2ban's formula, e.g. ban.Time * (1<<(ban.Count if ban.Count<20 else 20)) * banFactor",
    )
    multipliers: list[float] = Field(default_factory=list, max_length=1000)
    maxtime: float | None = Field(
        None, gt=0, le=MAX_BAN_SECONDS, description="seconds; upper bound of an increased bantime"
    )
    rndtime: float | None = Field(
        None, ge=0, le=MAX_BAN_SECONDS, description="seconds of random jitter added to a bantime"
    )
    overalljails: bool = False

    @field_validator("formula")
    @classmethod
    def _formula(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                compile_formula(v)  # arithmetic only (fleet2ban.formula): it may come from a copied jail file
            except ValueError as exc:
                raise ValueError(f"not an accepted formula: {exc}") from None
        return v

    @field_validator("multipliers")
    @classmethod
    def _multipliers(cls, v: list[float]) -> list[float]:
        for m in v:
            if not 0 < m <= 1e6:
                raise ValueError(f"multiplier {m} out of range (0, 1e6]")
        return v


def _networks(v: Any, what: str) -> Any:
    """A list (or a space/comma separated string) of addresses and CIDRs, through the contract's one
    parser; one that covers every address of its family is refused (nothing could ever be banned)."""
    if isinstance(v, str):
        v = v.replace(",", " ").split()
    if not isinstance(v, list):
        return v
    out: list[IPNetwork] = []
    for item in v:
        x = str(item) if isinstance(item, IPNetwork) else item
        if not isinstance(x, str):
            raise ValueError(f"{what}: {x!r:.60} is not an address or CIDR")
        try:
            net = target_network(x)
        except ContractError as exc:
            raise ValueError(f"{what}: {exc}") from None
        if net.prefixlen == 0:
            raise ValueError(
                f"{what}: {net} covers every IPv{net.version} address, so none could ever be banned"
            )
        out.append(net)
    space = exempts_most(out)
    if space is not None:
        raise ValueError(
            f"{what}: together its networks cover half or more of {space}, so banning would be off for most"
            " of the Internet"
        )
    return out


class JailSettings(_Section):
    """One jail: which failures count, how many in which window, and what a ban covers."""

    name: str = Field("amps", pattern=f"^{JAIL_NAME.pattern}$")
    enabled: bool = True
    reasons: list[str] = Field(default_factory=lambda: ["auth", "name in use"], min_length=1)
    maxretry: int = Field(20, ge=1, le=1_000_000)
    findtime: float = Field(10.0, gt=0, le=MAX_BAN_SECONDS, description="seconds")
    bantime: float = Field(
        120.0,
        ge=-MAX_BAN_SECONDS,
        le=MAX_BAN_SECONDS,
        description="seconds (at most ten years); negative means permanent (as fail2ban's -1)",
    )
    ports: list[int] = Field(default_factory=lambda: [9007], min_length=1)
    ignoreip: list[IPNetwork] = Field(default_factory=list)
    ban_prefix_v6: int = Field(128, ge=16, le=128, description="count and ban IPv6 clients by this prefix")
    bantime_increment: IncrementSettings = Field(default_factory=IncrementSettings)
    source: Literal["events", "bans"] = Field(
        "events",
        description="what the jail counts: failures in events, or (as fail2ban's recidive) other jails' bans",
    )
    jails: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="source bans: whose bans count (empty: every jail whose source is events)",
    )
    min_hosts: int = Field(
        1,
        ge=1,
        le=10_000,
        description="distinct hosts whose failures must be in the window for a fleet-wide ban; below it a"
        " ban covers only the hosts that saw the failures (1: always fleet-wide)",
    )

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 0 < p < 65536:
                raise ValueError(f"port {p} out of range")
        return v

    @field_validator("bantime")
    @classmethod
    def _bantime(cls, v: float) -> float:
        if v == 0:
            raise ValueError("bantime 0 bans for no time: give seconds, or a negative value for permanent")
        return v

    @field_validator("ignoreip", mode="before")
    @classmethod
    def _ignoreip(cls, v: Any) -> Any:
        return _networks(v, "ignoreip")

    @property
    def permanent(self) -> bool:
        return self.bantime < 0

    @model_validator(mode="after")
    def _source(self) -> JailSettings:
        if self.jails and self.source != "bans":
            raise ValueError("jails (whose bans count) applies to a jail with source: bans only")
        if self.name in self.jails:
            raise ValueError(f"jail {self.name!r} cannot count its own bans")
        return self


def counted_jails(jails: list[JailSettings]) -> dict[str, tuple[str, ...]]:
    """For each jail with ``source: bans``, the jails whose (automatic) bans it counts: its ``jails``, or
    every jail whose source is ``events``. ValueError for an unknown name or a cycle (a jail's bans would
    count towards themselves through others)."""
    names = {j.name for j in jails}
    counted: dict[str, tuple[str, ...]] = {}
    for j in jails:
        if j.source != "bans":
            continue
        unknown = [n for n in j.jails if n not in names]
        if unknown:
            raise ValueError(f"jail {j.name!r} counts the bans of unknown jails: {', '.join(unknown)}")
        counted[j.name] = tuple(j.jails) or tuple(o.name for o in jails if o.source == "events")

    def cycle(name: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for n in counted.get(name, ()):
            if n in path:
                return (*path, n)
            found = cycle(n, (*path, n))
            if found:
                return found
        return None

    for name in counted:
        found = cycle(name, (name,))
        if found:
            raise ValueError(f"jails count each other's bans in a cycle: {' <- '.join(found)}")
    return counted


class ShipperSettings(_Section):
    log_path: Path | None = Field(None, description="the AMPS ban log to follow")
    host: str = Field(default_factory=socket.gethostname, description="this host's name in events")
    instance: str = Field("amps", description="AMPS instance name on this host")
    checkpoint_path: Path | None = Field(None, description="default: <state_dir>/shipper-<host>.checkpoint")
    from_start: bool = Field(False, description="without a checkpoint, read the file from the beginning")
    flush_interval_ms: float = Field(
        10.0, gt=0, le=10_000, description="how long a line waits for others to share its round of records"
    )
    max_flush_interval_ms: float = Field(
        50.0,
        gt=0,
        le=10_000,
        description="under load (large rounds) the flush interval stretches up to this; = flush_interval_ms:"
        " never",
    )
    max_lines_per_record: int = Field(500, ge=1, le=100_000)
    max_line_bytes: int = Field(4096, ge=128)
    max_pending_lines: int = Field(200_000, ge=100, description="stop reading while this many are unacked")
    poll_interval_s: float = Field(0.25, gt=0)
    filter_path: Path | None = Field(None, description="a fail2ban filter file to use instead of the parser")

    @model_validator(mode="after")
    def _flush_intervals(self) -> ShipperSettings:
        if self.max_flush_interval_ms < self.flush_interval_ms:
            raise ValueError("max_flush_interval_ms must be at least flush_interval_ms")
        return self


class ProcessorSettings(_Section):
    app_id: str = "fleet2ban-processor"
    lateness_s: float = Field(
        5.0, ge=0, le=3600, description="accept events this late (event time) across hosts"
    )
    max_future_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="events and manual decisions dated more than this ahead of the processor's clock are"
        " rejected (counted per sending host); at most lateness_s (unset: the smaller of 5 and lateness_s)",
    )
    store: str = Field("memory://", description="Faust table store: memory:// or rocksdb://")
    data_dir: Path | None = Field(None, description="default: <state_dir>/processor")
    expiry_interval_s: float = Field(0.5, gt=0, description="how often expired bans are lifted")
    web_port: int = Field(0, ge=0, le=65535, description="Faust web port (0 = off)")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="the worker's event loop: uvloop (faster), or the standard asyncio one"
    )
    session_timeout_s: float = Field(
        6.0, ge=1, le=300, description="a worker that stops heartbeating loses its partitions after this"
    )
    heartbeat_interval_s: float = Field(1.0, gt=0, le=60, description="group heartbeat interval")
    rebalance_timeout_s: float = Field(
        10.0, ge=1, le=600, description="how long the group waits for members to rejoin in a rebalance"
    )
    max_poll_records: int = Field(2000, ge=1, le=100_000, description="records per fetch at most")

    @model_validator(mode="after")
    def _timeouts(self) -> ProcessorSettings:
        if self.heartbeat_interval_s * 3 > self.session_timeout_s:
            raise ValueError("heartbeat_interval_s must be at most a third of session_timeout_s")
        return self

    @model_validator(mode="after")
    def _future_within_lateness(self) -> ProcessorSettings:
        """A failure dated up to ``max_future_s`` ahead is counted and moves its address's watermark; were
        that beyond ``lateness_s``, a host whose clock runs ahead in between would make every other host's
        real failures of that address "late" (issue 20). Left unset, it follows a smaller lateness_s."""
        if self.max_future_s > self.lateness_s:
            if "max_future_s" in self.model_fields_set:
                raise ValueError(
                    f"max_future_s ({self.max_future_s:g}) must be at most lateness_s ({self.lateness_s:g}):"
                    " a host whose clock runs ahead by more than lateness_s would make other hosts' failures late"
                )
            self.__dict__["max_future_s"] = self.lateness_s  # no assignment: it would validate again
        return self


class EnforcerSettings(_Section):
    backend: Literal["auto", "nftables", "ipset", "iptables", "dryrun"] = "auto"
    host: str = Field(default_factory=socket.gethostname)
    target: Literal["DROP", "REJECT"] = "DROP"
    reconcile_interval_s: float = Field(30.0, gt=0)
    max_bans: int = Field(100_000, ge=1, description="cap on active bans; above it new bans are refused")
    alarm_ratio: float = Field(0.8, gt=0, le=1, description="alarm when active bans exceed this share of max")
    set_maxelem: int = Field(262_144, ge=1024)
    min_prefix_v4: int = Field(24, ge=8, le=32, description="refuse IPv4 bans wider than this prefix")
    min_prefix_v6: int = Field(48, ge=16, le=128, description="refuse IPv6 bans wider than this prefix")
    protect: list[IPNetwork] = Field(default_factory=list, description="never ban these (besides ignoreip)")
    allow_loopback: bool = Field(
        False,
        description="dev and tests only: loopback addresses may be banned (the dev fleet without network"
        " namespaces, whose clients are 127.0.0.x); never in production",
    )
    chain_prefix: str = Field("f2b-", pattern=r"^[A-Za-z0-9_-]{1,8}$")

    @field_validator("protect", mode="before")
    @classmethod
    def _protect(cls, v: Any) -> Any:
        return _networks(v, "protect")


class DestinationSettings(_Section):
    """Where the notifier sends decisions: a webhook (generic JSON), Slack (incoming webhook), or e-mail."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    kind: Literal["webhook", "slack", "email"] = "webhook"
    url: str | None = Field(None, pattern=r"^https?://\S+$", description="webhook and slack: where to POST")
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers (webhook, slack)")
    secret: SecretStr | None = Field(
        None, description="webhook: HMAC-SHA256 of the body, sent as X-Fleet2ban-Signature: sha256=HEX"
    )
    to: list[str] = Field(default_factory=list, description="email: recipients")
    jails: list[str] = Field(default_factory=list, description="only these jails (empty: all)")
    actions: list[Literal["ban", "unban", "allow", "unallow"]] = Field(
        default_factory=list, description="empty: all"
    )
    origins: list[Literal["auto", "manual"]] = Field(default_factory=list, description="empty: all")
    digest_interval_s: float = Field(
        10.0, ge=0, le=86_400, description="at most one message per this interval; more become a digest"
    )
    max_per_message: int = Field(50, ge=1, le=10_000, description="decisions listed in one digest")
    timeout_s: float = Field(5.0, gt=0, le=300)
    max_pending: int = Field(10_000, ge=1, description="undelivered decisions kept; beyond, the oldest go")

    @model_validator(mode="after")
    def _target(self) -> DestinationSettings:
        if self.kind in ("webhook", "slack") and not self.url:
            raise ValueError(f"destination {self.name}: a {self.kind} needs a url")
        if self.kind == "email" and not self.to:
            raise ValueError(f"destination {self.name}: an email destination needs 'to'")
        return self


class SmtpSettings(_Section):
    host: str = "localhost"
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = Field(True, description="upgrade with STARTTLS (refuse to send if the server cannot)")
    username: str | None = None
    password: SecretStr | None = None
    from_addr: str = "fleet2ban@localhost"
    timeout_s: float = Field(10.0, gt=0, le=300)


class NotifierSettings(_Section):
    """``fleet2ban notifier``: decisions to webhooks, Slack and e-mail, at least once."""

    group_id: str = Field("fleet2ban-notifier", description="its consumer group (under kafka.topic_prefix)")
    destinations: list[DestinationSettings] = Field(default_factory=list)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    retry_initial_s: float = Field(0.5, gt=0, le=60)
    retry_max_s: float = Field(60.0, gt=0, le=3600)
    from_start: bool = Field(
        False, description="a new group starts at the oldest decision kept (default: the newest)"
    )

    @field_validator("destinations")
    @classmethod
    def _unique(cls, v: list[DestinationSettings]) -> list[DestinationSettings]:
        names = [d.name for d in v]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names must be unique: {names}")
        return v


class MetricsSettings(_Section):
    port: int = Field(0, ge=0, le=65535, description="/metrics and /healthz port; 0 = off")
    bind: str = "0.0.0.0"
    heartbeat_interval_s: float = Field(5.0, gt=0, le=86400)  # readers refuse longer (decode_report)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["human", "json"] = "human"


class Settings(BaseSettings):
    """Every setting of every component; one file configures a whole host."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        nested_model_default_partial_update=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    jails: list[JailSettings] = Field(default_factory=lambda: [JailSettings()])
    shipper: ShipperSettings = Field(default_factory=ShipperSettings)
    processor: ProcessorSettings = Field(default_factory=ProcessorSettings)
    enforcer: EnforcerSettings = Field(default_factory=EnforcerSettings)
    notifier: NotifierSettings = Field(default_factory=NotifierSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    state_dir: Path = Field(Path("/var/lib/fleet2ban"), description="checkpoints and table stores")

    @field_validator("jails")
    @classmethod
    def _unique_jails(cls, v: list[JailSettings]) -> list[JailSettings]:
        names = [j.name for j in v]
        if len(set(names)) != len(names):
            raise ValueError(f"jail names must be unique: {names}")
        counted_jails(v)
        return v

    @model_validator(mode="after")
    def _prefixes_fit_partitions(self) -> Settings:
        for j in self.jails:
            if j.ban_prefix_v6 < self.kafka.partition_prefix_v6:
                raise ValueError(
                    f"jail {j.name} counts IPv6 clients by /{j.ban_prefix_v6} but kafka.partition_prefix_v6 is"
                    f" /{self.kafka.partition_prefix_v6}: the addresses of one /{j.ban_prefix_v6} would be"
                    f" counted in several partitions; set kafka.partition_prefix_v6 to {j.ban_prefix_v6} or less"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        data = _CONFIG_DATA.get("data")
        if data:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=data))
        return tuple(sources)

    def jail(self, name: str) -> JailSettings:
        for j in self.jails:
            if j.name == name:
                return j
        raise ConfigError(f"no jail named {name!r} (configured: {', '.join(j.name for j in self.jails)})")

    def resolved_state_dir(self) -> Path:
        """The state dir, falling back to a per-user one when the default is not writable."""
        d = self.state_dir
        if d == Path("/var/lib/fleet2ban") and os.geteuid() != 0:
            d = Path.home() / ".local" / "state" / "fleet2ban"
        return d


_CONFIG_DATA: dict[str, dict[str, Any]] = {}
"""The parsed settings file while :func:`load_settings` builds the model (read once, by
:func:`read_config_file`)."""

CONFIG_MAX_BYTES = 1 << 20
"""A settings file larger than this is refused (a configuration is a few kilobytes)."""


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (``*name``): a settings file never needs them, and they allow the "billion
    laughs" expansion that takes gigabytes of memory from a few hundred bytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted in a settings file", mark
            )
        return super().compose_node(parent, index)


def read_config_file(path: Path) -> dict[str, Any] | None:
    """The mapping a YAML settings file holds (None when empty); :class:`ConfigError` with one line for
    a missing, oversized, binary, non-UTF-8 or invalid file, an alias, or a top level that is no mapping."""
    try:
        with path.open("rb") as f:
            data = f.read(CONFIG_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > CONFIG_MAX_BYTES:
        raise ConfigError(f"config file {path} is larger than {CONFIG_MAX_BYTES} bytes")
    if b"\x00" in data:
        raise ConfigError(f"config file {path} is binary, not YAML text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        loaded = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader without aliases
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"config file {path} is not valid YAML: {detail[:300]}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply") from None
    if loaded is None:
        return None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    bad = _non_text_key(loaded)
    if bad is not None:
        raise ConfigError(f"config file {path}: setting names must be text, not {bad}")
    return loaded


def _non_text_key(node: Any, where: str = "") -> str | None:
    """A key of the loaded YAML that is not a string (``?`` alone is a null key, ``1:`` an integer one),
    said as "KEY (under PATH)"; None when every key is text."""
    stack = [(node, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    return f"{str(k)[:40]} (under {at or 'the top level'})"
                stack.append((v, f"{at}.{k}" if at else k))
        elif isinstance(item, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
    return None


def _set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_settings(config: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from file, environment and flags (``overrides`` uses dotted names).

    Raises :class:`ConfigError` with the setting's dotted name on any invalid value.
    """
    path = Path(config) if config else (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    loaded: dict[str, Any] | None = None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = read_config_file(path)
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(nested, dotted, value)
    if loaded:
        _CONFIG_DATA["data"] = loaded
    try:
        settings = Settings(**nested)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except SettingsError as exc:  # a FLEET2BAN_* variable that is not even JSON where JSON is expected
        raise ConfigError(f"invalid settings: {' '.join(str(exc).split())[:300]}") from None
    finally:
        _CONFIG_DATA.pop("data", None)
    return settings


def format_validation_error(exc: ValidationError, head: str = "invalid settings: ") -> str:
    """One line naming each bad setting, what is wrong and (cut, quoted) the value given."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r:.60})"
        problems.append(f"{loc}: {' '.join(str(err['msg']).split())}{shown}")
    return head + "; ".join(problems)


def dump_settings(settings: Settings) -> dict[str, Any]:
    """The settings as YAML-ready builtins, secrets masked."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    return data


def env_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> set[str]:
    """Every environment variable name the model accepts (for manifest checks and docs)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        names.add(env)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names |= env_names(ann, env + "__")
    return names


def to_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
