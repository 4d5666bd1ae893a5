"""The processor under hostile input (issue 20): event time bounded by its clock, the enforcers' rails on
every decision it would mirror, bans whose expiry always fits a datetime."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet2ban.contract import MAX_BAN_SECONDS, Decision, Event, from_epoch
from fleet2ban.exceptions import ConfigError
from fleet2ban.settings import EnforcerSettings, IncrementSettings, JailSettings, load_settings
from processor.engine import Engine
from processor.exceptions import IncrementConfigError
from processor.increment import compile_increment
from processor.policy import Output, Policy

NOW = 1_764_000_000.0  # the processor's clock in these tests


def ev(t: float, ip: str = "203.0.113.9", host: str = "h1", n: int = 0, ts: datetime | None = None) -> Event:
    return Event(
        host=host,
        ip=ip,
        id=f"{host}:f:{n}",
        ts=ts if ts is not None else from_epoch(NOW + t),
        port=40000,
        client="c",
        reason="auth",
        raw="raw",
    )


def policy(**jail: object) -> Policy:
    return Policy.from_settings(
        [JailSettings(**jail)],  # type: ignore[arg-type]
        lateness=5.0,
        enforcer=EnforcerSettings(host="test", protect=["192.0.2.0/24"]),
        max_future_s=5.0,
        clock=lambda: NOW,
    )


def fast_failures(n: int, start: float = -30.0, ip: str = "203.0.113.9") -> list[Event]:
    return [ev(start + 0.1 * i, ip=ip, host=f"h{i % 3}", n=i + 1) for i in range(n)]


def bans(outs: list[Output]) -> list[Decision]:
    return [o.decision for o in outs if o.decision.action == "ban"]


@pytest.mark.parametrize("future", [datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), from_epoch(NOW + 3600)])
def test_a_failure_from_the_future_neither_counts_nor_blocks_later_bans(future: datetime) -> None:
    p = policy()
    engine = Engine(p)
    outs = engine.feed([ev(0, host="liar", ts=future), *fast_failures(40)])
    assert len(bans(outs)) == 1  # before the fix: 0 bans (every real failure was "late")
    assert p.counters.future == 1 and p.counters.future_hosts == {"liar": 1}
    assert engine.clock < NOW + 5  # the bogus time did not move the replay's clock


def test_the_worker_path_drops_future_events_by_host_too() -> None:
    p = policy()
    states: dict[str, object] = {}
    out: list[Output] = []
    events = [ev(100, host="ahead"), *fast_failures(20, start=-3.0)]
    p.process(states.get, states.__setitem__, "203.0.113.9", events, out)  # type: ignore[arg-type]
    assert len(bans(out)) == 1
    assert p.counters.future_hosts == {"ahead": 1}


def test_small_skew_inside_the_bound_still_counts() -> None:
    p = policy(maxretry=3)
    outs = Engine(p).feed([ev(4.0, n=1), ev(4.1, n=2), ev(4.2, n=3)])
    assert len(bans(outs)) == 1 and p.counters.future == 0


@pytest.mark.parametrize("ip", ["0.0.0.0", "127.0.0.1", "::", "255.255.255.255", "192.0.2.7", "169.254.0.1"])
def test_no_automatic_ban_of_what_the_rails_refuse(ip: str) -> None:
    p = policy()
    outs = Engine(p).feed(fast_failures(40, ip=ip))
    assert bans(outs) == []
    assert p.counters.refused == 40


def manual(action: str, ip: str, jail: str = "amps", at: float = 0.0, mid: str = "m-1") -> Decision:
    return Decision(
        id=mid,
        action=action,  # type: ignore[arg-type]
        ip=ip,
        jail=jail,
        at=from_epoch(NOW + at),
        ports=[9007],
        expires_at=from_epoch(NOW + at + 600) if action == "ban" else None,
        origin="manual",
        by="op",
        reason="test",
    )


@pytest.mark.parametrize(
    ("ip", "jail"),
    [
        ("0.0.0.0/0", "amps"),
        ("::/0", "amps"),
        ("192.0.2.7", "amps"),  # enforcer.protect
        ("10.0.0.1", "amps"),  # the jail's ignoreip
        ("10.0.0.0/8", "amps"),  # too wide, and ignored
        ("203.0.113.9", "nosuchjail"),
        ("127.0.0.1", "amps"),
    ],
)
def test_manual_bans_the_rails_refuse_are_not_mirrored(ip: str, jail: str) -> None:
    p = policy(ignoreip=["10.0.0.0/8"])
    out = Engine(p).manual(manual("ban", ip, jail))
    assert out == []
    assert p.counters.refused == 1


def test_a_manual_unban_from_the_future_cannot_block_bans() -> None:
    p = policy()
    engine = Engine(p)
    assert engine.manual(manual("unban", "203.0.113.9", at=10 * 365 * 86400)) == []
    assert p.counters.future == 1
    assert len(bans(engine.feed(fast_failures(20)))) == 1


def test_a_good_manual_ban_is_still_mirrored() -> None:
    p = policy()
    out = Engine(p).manual(manual("ban", "203.0.113.0/24"))
    assert [o.decision.ip for o in out] == ["203.0.113.0/24"] and not out[0].publish


def test_the_longest_bantime_expires_within_a_datetime() -> None:
    p = policy(bantime=MAX_BAN_SECONDS, maxretry=2)
    outs = Engine(p).feed([ev(4.9, n=1), ev(5.0, n=2)])
    (d,) = bans(outs)
    assert d.expires_at is not None and d.expires_at.year < 9999


@pytest.mark.parametrize(
    "formula", ["ban.Time * 10 ** (ban.Count * 400)", "1 / (ban.Count - 3)", "float('nan')"]
)
def test_an_increment_formula_that_blows_up_later_is_bounded(formula: str) -> None:
    fn = compile_increment(IncrementSettings(enabled=True, formula=formula, factor=1.0))
    assert fn is not None
    for count in (1, 3, 50, 10_000):
        value = fn(120.0, count, "seed")
        assert math.isfinite(value) and 0 < value <= MAX_BAN_SECONDS


ESCAPE = (
    "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0](['touch', '{}']) and 60"
)


@pytest.mark.parametrize(
    "formula",
    [ESCAPE, "ban.__class__", "math.__loader__", "__import__('os')", "'a' * 10**9", "math.comb(9, 3)"],
)
def test_a_formula_is_arithmetic_only(tmp_path: Path, formula: str) -> None:
    """Issue 20: restricted builtins were no sandbox: a bantime.formula (which import-fail2ban copies from a
    jail file) reached subprocess.Popen through ().__class__. Only arithmetic on ban.Time, ban.Count,
    banFactor and a few functions is accepted, by the settings and by the processor."""
    marker = tmp_path / "pwned"
    text = formula.format(marker)
    with pytest.raises(IncrementConfigError, match=r"not allowed|not a number"):
        compile_increment(IncrementSettings.model_construct(enabled=True, formula=text, factor=1.0))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"jails: [{{name: amps, bantime_increment: {{enabled: true, formula: {text!r}}}}}]\n")
    with pytest.raises(ConfigError, match="formula"):
        load_settings(cfg)
    assert not marker.exists()


@pytest.mark.parametrize(
    "formula", ["ban.Time * 9**9**9", "pow(9, 9**9)", "1 << (1 << (1 << 40))", "round(5, -10**9)"]
)
def test_a_formula_cannot_build_huge_integers(formula: str) -> None:
    """``9**9**9`` hung the processor's start-up check: powers are floats, shifts bounded."""
    fn = compile_increment(IncrementSettings(enabled=True, formula=formula, factor=1.0))
    assert fn is not None and fn(60.0, 3, "s") == MAX_BAN_SECONDS  # overflow: as long as allowed


def test_fail2ban_formulas_still_work() -> None:
    for formula, want in (
        ("ban.Time * (1<<(ban.Count if ban.Count<20 else 20)) * banFactor", 480.0),
        ("ban.Time * math.exp(float(ban.Count+1)*banFactor)/math.exp(1*banFactor)", 60 * math.exp(3)),
    ):
        fn = compile_increment(IncrementSettings(enabled=True, formula=formula, factor=1.0))
        assert fn is not None and fn(60.0, 3, "s") == pytest.approx(want)


def test_counters_stay_plain_ints_for_metrics() -> None:
    p = policy()
    Engine(p).feed([ev(1000, host="x")])
    assert all(isinstance(v, int) for v in p.counters.as_dict().values())
    assert "future_hosts" not in p.counters.as_dict()


def test_future_hosts_are_bounded() -> None:
    p = policy()
    Engine(p).feed([ev(1000, host=f"h{i}", n=i) for i in range(1200)])
    assert len(p.counters.future_hosts) <= 1001 and p.counters.future == 1200


def test_replay_clock_bound_uses_timedelta_not_wall_time_in_tests() -> None:
    # the policy's clock is injectable: nothing here depends on today's date
    p = policy()
    assert p.future_limit() == NOW + 5.0
    assert timedelta(seconds=p.max_future_s) == timedelta(seconds=5)


def test_the_sending_host_of_future_events_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from processor import metrics as m

    # what was exported last, per host, is module state: start afresh whatever ran before in this process
    monkeypatch.setattr(m, "_last_future", {})
    p = policy()
    Engine(p).feed([ev(1000, host="amps-clock-ahead\x1b[2J", n=i) for i in range(3)])
    with caplog.at_level(logging.WARNING, logger="processor.metrics"):
        m.export_counters(p.counters)
    (rec,) = [r for r in caplog.records if "max_future_s" in r.getMessage()]
    assert "amps-clock-ahead\\x1b[2J" in rec.getMessage() and "3 record(s)" in rec.getMessage()
    assert m.FUTURE.labels("amps-clock-ahead\x1b[2J")._value.get() >= 3


def test_a_host_ahead_by_more_than_lateness_cannot_make_other_hosts_late(tmp_path: Path) -> None:
    """max_future_s above lateness_s let a host whose clock runs ahead in between raise an address's
    watermark: every real failure from the other hosts was then "late" (0 bans). Such settings are refused,
    and an unset max_future_s follows a smaller lateness_s."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("processor: {lateness_s: 5, max_future_s: 60}\n")
    with pytest.raises(ConfigError, match=r"max_future_s .* at most lateness_s"):
        load_settings(cfg)
    cfg.write_text("processor: {lateness_s: 2}\n")
    s = load_settings(cfg).processor
    assert s.max_future_s == 2
    p = Policy.from_settings([JailSettings()], s.lateness_s, max_future_s=s.max_future_s, clock=lambda: NOW)
    ahead = [ev(3.0, host="ahead", n=100 + i) for i in range(3)]  # 3 s ahead: beyond lateness_s
    outs = Engine(p).feed([*ahead, *fast_failures(40, start=-5.0)])
    assert len(bans(outs)) == 1 and p.counters.late == 0
    assert p.counters.future_hosts == {"ahead": 3}
