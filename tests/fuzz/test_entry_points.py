"""The standing fuzz harness (issue 20): every entry point that takes outside input, fed by hypothesis.

Invariants, for every input:
- no traceback: only the entry point's own error type (ContractError, ConfigError...), or exit 1/2 with
  one line on stderr for the CLI, or a 4xx page for the console;
- no hang: hypothesis's ``deadline`` bounds the time of each input;
- no value that fails the contract's validation reaches a topic or a backend: what the parser emits,
  what the policy decides, what the console and CLI would publish, and what the enforcer would hand a
  backend all pass the decoders and rails.

Inputs mix raw noise with near-misses of the valid form (valid records with one field mutated, AMPS lines
with hostile names), where bugs live. Example counts are modest (the suite runs on shared CPUs); run with
``--hypothesis-seed`` or ``HYPOTHESIS_PROFILE``-style overrides to search longer.
"""

from __future__ import annotations

import contextlib
import csv
import io
import ipaddress
import math
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from typer.testing import CliRunner

from enforcer.plan import JailSpec, desired_state
from fleet2ban import contract as c
from fleet2ban.allowlist import AllowList
from fleet2ban.audit import importer
from fleet2ban.audit.view import FleetView
from fleet2ban.cli.main import app as cli_app
from fleet2ban.console.app import ConsoleConfig, create_app
from fleet2ban.console.live import LiveFleet
from fleet2ban.exceptions import ConfigError
from fleet2ban.kafka import Cluster
from fleet2ban.rails import Rails
from fleet2ban.safetext import printable
from fleet2ban.settings import EnforcerSettings, JailSettings, KafkaSettings, Settings, load_settings
from processor.engine import Engine
from processor.exceptions import IncrementConfigError
from processor.import_f2b import import_jail
from processor.increment import compile_increment
from processor.policy import Policy
from shipper.f2bfilter import load_filter
from shipper.parse import ParsedLine, ParseStats, iter_file_events, parse_line, scan_block, write_file_json

FUZZ = settings(
    max_examples=60,
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CLI = settings(
    max_examples=25,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)

# ------------------------------------------------------------------------------------------- strategies

nasty_chars = st.sampled_from(
    ["\n", "\r", "\x00", "\x1b[2J", "\x1b]52;c;AA\x07", "\u009b", "\u202e", "\u2028", "%", "|", "[", "]",
     "(", ")", ":", "/", " ", "\t", "é", "\ufffd", "[/x]", "%(a)s", "*a", "&a"]
)  # fmt: skip
nasty_text = st.lists(st.one_of(nasty_chars, st.text(max_size=8)), max_size=12).map("".join)
addresses = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.tuples(st.ip_addresses(v=6), st.text(max_size=12)).map(lambda t: f"{t[0]}%{t[1]}"),
    st.tuples(st.ip_addresses(), st.integers(-5, 140)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.sampled_from(["0.0.0.0", "::", "255.255.255.255", "0.0.0.0/0", "::/0", "::ffff:0:0/96", "1.2.3"]),
    nasty_text,
)
timestamps = st.one_of(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"
    ),
    st.sampled_from(["9999-12-31T23:59:59.9999999+00:00", "0001-01-01T00:00:00.0000000-23:59", "2026-13-40T99:99:99.0+99:99"]),
    nasty_text,
)  # fmt: skip
reasons = st.one_of(st.sampled_from(["auth", "name in use", "connection closed"]), nasty_text)
amps_lines = st.builds(
    lambda ts, name, addr, port, reason: f"{ts} [26] info: 07-0013 client[{name}]({addr}:{port}) disconnected: {reason}.",
    timestamps,
    nasty_text,
    addresses,
    st.one_of(st.integers(-1, 70000).map(str), nasty_text),
    reasons,
)  # fmt: skip
log_lines = st.one_of(amps_lines, nasty_text, st.binary(max_size=80).map(lambda b: b.decode("latin-1")))


def _canonical_event(ip: str, port: int) -> None:
    assert c.normalize_ip(ip) == ip
    assert 0 <= port < 65536  # 0: a fail2ban filter without <F-PORT>


# ------------------------------------------------------------------------------------------- the parser


@FUZZ
@given(st.lists(log_lines, max_size=20), st.binary(max_size=200))
def test_the_log_parser_takes_any_bytes(lines: list[str], noise: bytes) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n" + noise
    for ln in lines:
        r = parse_line(ln)
        if isinstance(r, ParsedLine):
            _canonical_event(r.ip, r.port)
            assert r.ts.year < 10000
    events: list[str] = []
    scan_block(data if data.endswith(b"\n") else data + b"\n", 0, 4096,
               lambda off, ts, ip, port, *rest: (_canonical_event(ip, port), events.append(ip)),
               lambda off, text, too_long: parse_line(text))  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ban.log"
        path.write_bytes(data)
        stats = ParseStats()
        for ev in iter_file_events(path, "h", stats=stats):
            _canonical_event(ev.ip, ev.port)
            assert c.decode_event(c.encode(ev)) == ev  # what the shipper sends passes the decoder
        out = io.BytesIO()
        write_file_json(path, "h", out)


# ------------------------------------------------------------------------------------------ the topics


def _valid_records() -> list[msgspec.Struct]:
    line = c.Line(id="h:1:0", ts=NOW, port=1, client="c", reason="auth", raw="r")
    d = c.Decision(id="b-1", action="ban", ip="203.0.113.9", jail="amps", at=NOW, ports=[9007])
    return [
        c.EventBatch(host="h", ip="203.0.113.9", lines=[line]),
        c.EventsRecord(
            host="h", lines=[c.address_line("203.0.113.9", line), c.address_line("2001:db8::1", line)]
        ),
        d,
        c.BanState.from_decision(d),
        c.Report(host="h", kind="applied", jail="amps", ip="203.0.113.9", at=NOW),
        c.Heartbeat(host="h", role="enforcer", at=NOW),
    ]


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), nasty_text, addresses),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(nasty_text, inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def topic_values(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=120))
    rec = msgspec.json.decode(c.encode(draw(st.sampled_from(_valid_records()))))
    key = draw(st.sampled_from(sorted(rec)))
    rec[key] = draw(json_values)
    if "interval_s" in rec and draw(st.booleans()):  # numbers the readers compute with
        rec[draw(st.sampled_from(["interval_s", "lag", "applied_total"]))] = draw(
            st.one_of(
                st.floats(allow_nan=False, allow_infinity=False),
                st.integers(),
                st.sampled_from([0, -5, 1e308]),
            )
        )
    lines = rec.get("lines")
    if isinstance(lines, list) and lines and isinstance(lines[0], dict) and draw(st.booleans()):
        field = draw(st.sampled_from(["ts", "ip", "port"]))
        rec["lines"][-1][field] = draw(
            st.one_of(
                st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "x", 0, -5, 70000]),
                addresses,
            )
        )
    return msgspec.json.encode(rec)


@FUZZ
@given(topic_values())
def test_every_topic_decoder_refuses_with_contract_error_only(value: bytes) -> None:
    decoders = (
        c.decode_batch,
        c.decode_decision,
        c.decode_ban,
        c.decode_report,
        c.decode_event,
        c.decode_allow,
    )
    for decode in decoders:
        try:
            rec = decode(value)
        except c.ContractError:
            continue
        if isinstance(rec, c.Heartbeat):  # readers do arithmetic on these (read_tail, silence bounds)
            assert 0 < FleetView().silence_bound(rec) <= 3 * c.HEARTBEAT_INTERVAL_MAX_S
            assert rec.lag is None or math.isfinite(rec.lag)
        ip = getattr(rec, "ip", None) or getattr(rec, "network", None)
        if ip is not None and decode is not c.decode_report:
            assert c.normalize_target(ip) == ip
        jail = getattr(rec, "jail", None)
        if jail is not None and decode in (c.decode_decision, c.decode_ban, c.decode_allow):
            every_jail = jail == c.ALL_JAILS and getattr(rec, "action", "allow") in c.ALLOW_ACTIONS
            assert every_jail or c.JAIL_NAME.fullmatch(jail)
    for decode_lines in (c.decode_events, lambda v: c.decode_events_record(v).events()):
        try:
            events = decode_lines(value)
        except c.ContractError:
            continue
        assert events
        for ev in events:  # either shape (v1 EventBatch, v2 EventsRecord): every line checked
            _canonical_event(ev.ip, ev.port)


@FUZZ
@given(
    st.sampled_from(["interval_s", "lag", "applied_total", "at"]),
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(),
        st.sampled_from(["9999-12-31T23:59:59Z"]),
    ),
)
def test_heartbeat_numbers_and_times_stay_in_range_for_readers(field: str, value: object) -> None:
    """A heartbeat the readers accept keeps their arithmetic finite (``interval_s: 1e308`` crashed ``bans
    list`` for everyone) and, dated ahead of the reader's clock, never keeps a dead enforcer live."""
    rec = msgspec.json.decode(c.encode(c.Heartbeat(host="h1", role="enforcer", at=NOW)))
    rec[field] = value
    try:
        hb = c.decode_report(msgspec.json.encode(rec))
    except c.ContractError:
        return
    assert isinstance(hb, c.Heartbeat)
    view = FleetView(clock=lambda: NOW)
    assert 0 < view.silence_bound(hb) <= 3 * c.HEARTBEAT_INTERVAL_MAX_S
    view.add_report(hb)
    assert not view.live_enforcers(NOW + timedelta(days=4))  # silent once its interval has passed


@FUZZ
@given(st.text(max_size=60))
def test_bans_keys_split_or_refuse(key: str) -> None:
    try:
        _, target = c.split_ban_key(key)
    except c.ContractError:
        return
    assert c.normalize_target(target) == target


@FUZZ
@given(st.text(max_size=60), st.one_of(st.none(), st.binary(max_size=200)))
def test_allow_records_fold_or_refuse(key: str, value: bytes | None) -> None:
    from fleet2ban.allowlist import AllowList

    allow = AllowList()
    try:
        k, entry = allow.ingest(key, value)
    except c.ContractError:
        assert not allow.entries
        return
    jail, network = c.split_allow_key(k)
    assert c.normalize_target(network) == network and (jail == c.ALL_JAILS or c.JAIL_NAME.fullmatch(jail))
    assert entry is None or entry.key() == k


# ---------------------------------------------------------------------------------------- settings


yaml_docs = st.one_of(
    nasty_text,
    st.sampled_from(["?\n", "? [a]\n", "1: x\n", "kafka:\n  ? \n", "jails:\n  - {1: 2}\n"]),  # keys not text
    st.builds(lambda k, v: f"jails:\n  - name: amps\n    {k}: {v}\n",
              st.sampled_from(["bantime", "findtime", "maxretry", "ignoreip", "ports", "name", "reasons"]),
              st.one_of(nasty_text, st.sampled_from([".nan", ".inf", "-.inf", "1e12", "0", "-1", "*a", "[0.0.0.0/0]"]))),
    st.builds(lambda f: f"jails:\n  - name: amps\n    bantime_increment: {{enabled: true, formula: {f!r}}}\n",
              st.one_of(nasty_text, st.sampled_from(["9**9**9", "ban.__class__", "().__class__.__base__", "1<<(1<<99)",
                                                      "'a'*10**9", "ban.Time*2", "round(5, -10**9)"]))),
    st.builds(lambda s, k, v: f"{s}:\n  {k}: {v}\n",
              st.sampled_from(["enforcer", "processor", "shipper", "metrics", "kafka", "log"]),
              nasty_text, st.one_of(nasty_text, st.integers().map(str), st.sampled_from([".nan", ".inf", "&a x", "*a"]))),
)  # fmt: skip


@FUZZ
@given(st.one_of(yaml_docs.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=200)))
def test_settings_files_load_or_give_a_config_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_bytes(data)
        try:
            s = load_settings(path)
        except ConfigError:
            return
    for j in s.jails:
        assert math.isfinite(j.bantime) and abs(j.bantime) <= c.MAX_BAN_SECONDS and j.bantime != 0
        assert all(n.prefixlen > 0 for n in j.ignoreip)
        with contextlib.suppress(IncrementConfigError):  # an accepted formula evaluates, bounded, at once
            fn = compile_increment(j.bantime_increment)
            if fn is not None:
                assert 0 < fn(60.0, 7, "s") <= c.MAX_BAN_SECONDS


@FUZZ
@given(
    st.sampled_from(["FLEET2BAN_JAILS", "FLEET2BAN_ENFORCER__MIN_PREFIX_V4", "FLEET2BAN_PROCESSOR__MAX_FUTURE_S",
                     "FLEET2BAN_ENFORCER__PROTECT", "FLEET2BAN_PROCESSOR__LATENESS_S"]),
    st.one_of(nasty_text, st.sampled_from(['[{"bantime": 1e400}]', '[{"ignoreip": ["::/0"]}]', "nan", "inf", "0"])),
)  # fmt: skip
def test_settings_variables_load_or_give_a_config_error(name: str, value: str) -> None:
    if "\x00" in value:
        return  # the environment cannot hold NUL
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(name, value)
        with contextlib.suppress(ConfigError):
            load_settings()


# --------------------------------------------------------------------------------- fail2ban files


ini_text = st.lists(
    st.one_of(
        st.builds(lambda k, v: f"{k} = {v}",
                  st.sampled_from(["maxretry", "findtime", "bantime", "port", "ignoreip", "bantime.multipliers",
                                   "bantime.factor", "bantime.increment", "failregex", "a", "b", "filter"]),
                  st.one_of(nasty_text, st.sampled_from(["%(a)s", "%(b)s%(b)s", "1:2:3", "65535:0", "true", "<HOST>"]))),
        st.sampled_from(["[amps]", "[Definition]", "[DEFAULT]", "[Init]", "enabled = true"]),
        nasty_text,
    ),
    max_size=12,
).map("\n".join)  # fmt: skip


@FUZZ
@given(ini_text, ini_text)
def test_fail2ban_jails_and_filters_import_or_give_one_error(jail: str, flt: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "filter.d").mkdir()
        (root / "filter.d" / "amps.conf").write_text(flt, encoding="utf-8", errors="surrogateescape")
        path = root / "jail.conf"
        path.write_text("[amps]\nenabled = true\n" + jail, encoding="utf-8", errors="surrogateescape")
        try:
            result = import_jail(path, "amps")
        except ConfigError as exc:
            assert "\n" not in str(exc)
        else:
            JailSettings.model_validate(result.settings["jails"][0])
        try:
            load_filter(root / "filter.d" / "amps.conf", warn=False)
        except ConfigError as exc:
            assert "\n" not in str(exc)


# ------------------------------------------------------------------------------------------- the CLI


def _one_line_or_ok(result: Any) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1, 2)
    if result.exit_code:
        assert len(result.stderr.strip().splitlines()) <= 1, result.stderr
        for ch in ("\x1b", "\u009b"):
            assert ch not in result.stderr


@pytest.fixture
def no_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("FLEET2BAN_CONFIG", raising=False)


@CLI
@given(
    addresses,
    st.one_of(nasty_text, st.sampled_from(["nan", "inf", "1e400", "99999999999d", "10m"])),
    nasty_text,
)
def test_cli_arguments_with_addresses_durations_and_names(
    no_kafka: None, target: str, duration: str, name: str
) -> None:
    if any(ch in target + duration + name for ch in "\x00"):
        return
    runner = CliRunner()
    for args in (
        ["bans", "add", target, "--for", duration, "--reason", "fuzz", "--jail", name or "amps"],
        ["bans", "remove", target, "--reason", "fuzz", "--by", name or "x"],
        ["bans", "show", target],
        ["bans", "history", "--since", duration, "--ip", target],
    ):
        _one_line_or_ok(runner.invoke(cli_app, args))


@CLI
@given(
    addresses,
    st.one_of(nasty_text, st.sampled_from(["nan", "inf", "99999999999d", "0s", "10m"])),
    nasty_text,
)
def test_allow_list_arguments(no_kafka: None, network: str, ttl: str, name: str) -> None:
    if "\x00" in network + ttl + name:
        return
    runner = CliRunner()
    for args in (
        [
            "allow",
            "add",
            network,
            "--ttl",
            ttl,
            "--jail",
            name or "amps",
            "--by",
            name or "x",
            "--reason",
            name,
        ],
        ["allow", "remove", network, "--jail", name or "*"],
    ):
        _one_line_or_ok(runner.invoke(cli_app, args))


ban_files = st.tuples(
    st.sampled_from(["lines", "csv", "json"]),
    st.lists(  # mostly near-misses of a good row: one bad value spoils (or is refused from) a whole file
        st.tuples(
            st.one_of(st.sampled_from(["203.0.113.9", "2001:db8::9", "198.51.100.0/24"]), addresses),
            st.one_of(st.none(), st.sampled_from(["amps", "amps|x", "nope", ""]), nasty_text),
            st.one_of(
                st.none(),
                st.sampled_from(["9999-12-31T23:59:59Z", "permanent", "nan", "2030-01-01T00:00:00Z", "x"]),
                st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)).map(
                    lambda d: d.isoformat() + "Z"
                ),
                nasty_text,
            ),
            st.one_of(st.none(), nasty_text),
        ),
        max_size=4,
    ),
)


def _ban_file(fmt: str, rows: list[tuple[str, str | None, str | None, str | None]]) -> str:
    if fmt == "lines":
        return "\n".join(r[0] for r in rows) + "\n"
    if fmt == "json":
        objs = [{"ip": ip, "jail": jail, "expires_at": exp, "reason": why} for ip, jail, exp, why in rows]
        return "\n".join(
            msgspec.json.encode({k: v for k, v in o.items() if v is not None}).decode() for o in objs
        )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["ip", "jail", "expires_at", "reason"])
    w.writerows([[ip, jail or "", exp or "", why or ""] for ip, jail, exp, why in rows])
    return buf.getvalue()


@FUZZ
@given(ban_files)
def test_bans_import_files_give_only_valid_decisions(spec: tuple[str, list[Any]]) -> None:
    """What ``bans import`` would write passes every reader's decoder and the rails (a 9999 expiry was
    'written' and then dropped by every reader, issue 20)."""
    fmt, rows = spec
    settings = Settings()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"bans.{fmt}"
        path.write_text(_ban_file(fmt, rows), encoding="utf-8", errors="surrogatepass")
        try:
            plan = importer.plan(importer.read_items(path, fmt), settings, now=NOW, jail=None, ttl=None,  # type: ignore[arg-type]
                                 reason="fuzz", by="fuzz")  # fmt: skip
        except ConfigError as exc:
            assert "\n" not in str(exc)
            return
    rails = Rails.build(settings.enforcer, settings.jails)
    for dec in plan.decisions:
        assert c.decode_decision(c.encode(dec)) == dec
        assert rails.refusal(dec.jail, dec.ip) is None


@CLI
@given(
    st.one_of(st.integers(-5, 30).map(str), nasty_text),
    st.sampled_from(["nan", "-5", "inf", "1e12", "0", "7"]),
)
def test_replay_flags(no_kafka: None, maxretry: str, seconds: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "h1.log"
        log.write_text("")
        result = CliRunner().invoke(
            cli_app, ["replay", str(log), "--maxretry", maxretry, "--findtime", seconds, "--bantime", seconds]
        )
        _one_line_or_ok(result)


# --------------------------------------------------------------------------------------- the console


class _Published:
    def __init__(self) -> None:
        self.decisions: list[c.Decision] = []
        self.entries: list[c.AllowEntry] = []

    def allow_list(self, cluster: Cluster) -> AllowList:
        return AllowList()

    def publish(self, cluster: Cluster, decision: c.Decision) -> None:
        self.decisions.append(decision)

    def publish_allow(
        self, cluster: Cluster, key: str, entry: c.AllowEntry | None, audit: c.Decision
    ) -> None:
        self.decisions.append(audit)
        if entry is not None:
            self.entries.append(entry)


@CLI
@given(st.fixed_dictionaries({"target": addresses, "duration": st.one_of(nasty_text, st.sampled_from(["nan", "1h"])),
                              "jail": nasty_text, "by": nasty_text, "reason": nasty_text,
                              "permanent": st.sampled_from(["", "on"]), "network": addresses,
                              "ttl": st.one_of(nasty_text, st.sampled_from(["nan", "1h", "99999999999d"]))}))  # fmt: skip
def test_console_forms(form: dict[str, str]) -> None:
    live = LiveFleet.fixed(FleetView(), KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    live._cluster = Cluster(KafkaSettings(), "127.0.0.1:9")
    published = _Published()
    app = create_app(ConsoleConfig(settings=Settings(), allow_write=True), live, published)  # type: ignore[arg-type]
    client = TestClient(app, base_url="http://testserver")
    html = client.get("/manual").text
    csrf = html.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    for path in ("/bans/add", "/bans/remove", "/allow/add", "/allow/remove"):
        r = client.post(path, data={**form, "csrf": csrf}, follow_redirects=False)
        assert r.status_code in (303, 400), (path, r.status_code)
    rails = Rails.build(EnforcerSettings(host="x"), [JailSettings()])
    for d in published.decisions:
        assert c.decode_decision(c.encode(d)) == d
        if d.action == "ban":
            assert rails.refusal(d.jail, d.ip) is None
    for e in published.entries:
        assert c.decode_allow(c.encode(e)) == e


# -------------------------------------------------------------------- the core: decisions and backends


@FUZZ
@given(
    st.lists(
        st.tuples(st.ip_addresses().map(str), st.floats(-1e6, 2.5e11, allow_nan=False), reasons, nasty_text),
        max_size=30,
    ),
    st.lists(st.tuples(addresses, st.sampled_from(["ban", "unban"]), st.sampled_from(["amps", "nope"]),
                       st.floats(-1e6, 1e9, allow_nan=False)), max_size=5),
)  # fmt: skip
def test_the_policy_publishes_only_valid_decisions_the_rails_allow(
    failures: list[tuple[str, float, str, str]], manual: list[tuple[str, str, str, float]]
) -> None:
    base = NOW.timestamp()
    policy = Policy.from_settings(
        [JailSettings(maxretry=2, findtime=1e6, bantime=c.MAX_BAN_SECONDS)],
        enforcer=EnforcerSettings(host="x"),
        clock=lambda: base,
    )
    engine = Engine(policy)
    outs = []
    for i, (ip, dt, reason, host) in enumerate(failures):
        ev = c.Event(host=host, ip=c.normalize_ip(ip), id=f"{host}:f:{i}", ts=c.from_epoch(base + dt),
                     port=1, client="c", reason=reason)  # fmt: skip
        outs += engine.feed([ev])
    for i, (target, action, jail, dt) in enumerate(manual):
        try:
            t = c.normalize_target(target)
        except c.ContractError:
            continue
        d = c.Decision(id=f"m-{i}", action=action, ip=t, jail=jail, at=c.from_epoch(base + dt),  # type: ignore[arg-type]
                       expires_at=c.from_epoch(base + dt + 60) if action == "ban" else None, origin="manual")  # fmt: skip
        outs += engine.manual(d)
    outs += engine.advance(base + 2 * c.MAX_BAN_SECONDS)
    rails = Rails.build(EnforcerSettings(host="x"), [JailSettings()])
    for o in outs:
        d = o.decision
        assert c.decode_decision(c.encode(d)) == d
        assert c.decode_ban(c.encode(c.BanState.from_decision(d))).ip == d.ip
        if d.action == "ban":
            assert rails.refusal(d.jail, d.ip) is None, printable(d.ip)
            assert d.at.timestamp() <= base + policy.max_future_s


@FUZZ
@given(st.dictionaries(st.tuples(st.sampled_from(["amps", "other"]), addresses), st.booleans(), max_size=20))
def test_only_canonical_allowed_targets_reach_a_backend(keys: dict[tuple[str, str], bool]) -> None:
    bans = {
        key: c.BanState(decision_id="d", ip=key[1], jail=key[0], at=NOW, expires_at=None if perm else NOW + timedelta(hours=1))
        for key, perm in keys.items()
    }  # fmt: skip
    rails = Rails.build(EnforcerSettings(host="x"), [JailSettings()])
    desired = desired_state(bans, NOW, rails, [JailSpec("amps", (9007,))])
    for (jail, target), want in desired.wants.items():
        assert jail == "amps" and c.normalize_target(target) == target == want.target
        net = ipaddress.ip_network(target, strict=False)
        assert net.prefixlen >= (24 if net.version == 4 else 48)
        assert "%" not in target and not any(ch.isspace() for ch in target)
