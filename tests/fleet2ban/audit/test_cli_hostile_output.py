"""The operator CLI's output under hostile values (issue 20): rich markup in an operator name never
crashes or renders, terminal escapes never reach the terminal, bad durations are one line and exit 2.
No Kafka: the printing functions take the query layer's answers; bad flags fail before connecting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from typer.testing import CliRunner

from fleet2ban.audit import queries
from fleet2ban.audit.model import BanView, Coverage, to_json
from fleet2ban.audit.view import FleetView
from fleet2ban.cli import audit_cmds
from fleet2ban.cli.main import app
from fleet2ban.contract import BanState, ContractError, Decision, Heartbeat, Report, decode_report

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
EVIL_BY = "[/oops][link=https://evil.example]click[/link]\x1b]52;c;ZXZpbA==\x07\u009b2J"
EVIL_LINE = (
    "2026 [1] info: 07-0013 client[\x1b[2J\x1b]0;pwned\x07\u009b31m](203.0.113.9:1) disconnected: auth."
)
RAW_CONTROLS = ("\x1b", "\u009b", "\x07")


def _decision() -> Decision:
    return Decision(
        id="mb-1",
        action="ban",
        ip="203.0.113.9",
        jail="amps",
        at=NOW - timedelta(minutes=1),
        ports=[9007],
        expires_at=NOW + timedelta(hours=1),
        origin="manual",
        by=EVIL_BY,
        reason="line one\nFORGED line two",
        hosts=["h1\nh2"],
        evidence=[EVIL_LINE],
    )


def _clean(out: str) -> None:
    for ch in RAW_CONTROLS:
        assert ch not in out, repr(ch)
    assert "\x1b]8;" not in out  # no OSC 8 hyperlink from [link=...]


def test_bans_show_prints_hostile_evidence_inert(capsys: pytest.CaptureFixture[str]) -> None:
    d = _decision()
    report = Report(host="h1\x1b[2J", kind="skipped", jail="amps", ip=d.ip, at=NOW, detail="[red]x[/]\u009b")
    hist = queries.ip_history(d.ip, [d], [report], [BanState.from_decision(d)], NOW)
    audit_cmds._print_history_of(hist, NOW)  # before the fix: rich.errors.MarkupError on "[/oops]"
    out = capsys.readouterr().out
    _clean(out)
    assert "[/oops]" in out  # shown as text
    assert "\\x1b" in out and "\\x9b" in out  # visibly escaped, nothing hidden


def test_bans_list_and_history_print_hostile_operators_inert(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    d = _decision()
    ban = BanState.from_decision(d)
    view = BanView(key="amps|203.0.113.9", ban=ban, recorded_at=NOW, coverage=Coverage(1, [], ["h\x1b[2J"]))
    audit_cmds._print_bans([view], NOW, 0, 1)
    out = capsys.readouterr().out
    _clean(out)
    assert "[/oops]" in out


def test_json_output_escapes_c1_and_terminal_controls() -> None:
    data = to_json([_decision()])
    text = data.decode()
    for ch in RAW_CONTROLS:
        assert ch not in text
    assert msgspec.json.decode(data)[0]["by"] == EVIL_BY


@pytest.mark.parametrize("duration", ["nan", "inf", "99999999999d", "1e400", "-5s"])
def test_bans_add_with_an_impossible_duration_is_one_line_exit_2(duration: str) -> None:
    result = CliRunner().invoke(
        app, ["bans", "add", "203.0.113.9", "--for", duration, "--reason", "test"], catch_exceptions=False
    )
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "duration" in result.stderr


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("2001:db8::1%1 timeout 5\nadd f2b-amps-4 10.0.0.1", 2),  # not an address: usage error
        ("::ffff:0:0/96", 1),  # the rails refuse (exit 1, as documented for refusals)
        ("0.0.0.0/0", 1),
        ("0.0.0.1", 1),
        ("::ffff:127.0.0.1/128", 1),
    ],
)
def test_bans_add_refuses_hostile_targets_before_writing(target: str, code: int) -> None:
    result = CliRunner().invoke(app, ["bans", "add", target, "--reason", "test"], catch_exceptions=False)
    assert result.exit_code == code
    assert len(result.stderr.strip().splitlines()) == 1
    _clean(result.stderr)


@pytest.mark.parametrize(
    "fields",
    [
        {"interval_s": 1e308},  # before: bans list crashed for everyone (OverflowError in read_tail)
        {"interval_s": 0},
        {"interval_s": -5},
        {"lag": "OVERFLOW"},
        {"counters": {"x": "OVERFLOW"}},
        {"applied_total": -5},
    ],
)
def test_a_heartbeat_with_numbers_out_of_range_is_refused(fields: dict[str, object]) -> None:
    hb = msgspec.json.decode(msgspec.json.encode(Heartbeat(host="h1", role="enforcer", at=NOW)))
    raw = msgspec.json.encode({**hb, **fields}).replace(b'"OVERFLOW"', b"-1e309")  # JSON for -inf
    with pytest.raises(ContractError, match=r"heartbeat|out of range"):
        decode_report(raw)
    nan = msgspec.json.encode({**hb, "interval_s": 1.0}).replace(b'"interval_s":1.0', b'"interval_s":NaN')
    with pytest.raises(ContractError):
        decode_report(nan)


def test_a_heartbeat_from_the_future_cannot_keep_a_dead_enforcer_live() -> None:
    """Issue 20: one heartbeat dated 9999 (a host clock far ahead, or a forged record) stayed the host's
    latest, so status and audit verify showed it live forever; it is skipped and counted."""
    now = [NOW]
    view = FleetView(clock=lambda: now[0])
    view.add_report(Heartbeat(host="h1", role="enforcer", at=NOW))
    view.add_report(Heartbeat(host="h1", role="enforcer", at=datetime(9999, 12, 31, tzinfo=UTC)))
    view.add_report(Heartbeat(host="h1", role="enforcer", at=NOW + timedelta(hours=1, minutes=6)))
    # a clock ahead within Kafka's own bound (a heartbeat saying its clock runs ahead, issue 16): kept
    view.add_report(Heartbeat(host="h2", role="enforcer", at=NOW + timedelta(minutes=50)))
    assert view.future == 2 and view.enforcers["h2"].heartbeat is not None
    now[0] = NOW + timedelta(hours=3)
    assert [e.host for e in view.live_enforcers(now[0])] == []  # both silent by now
    assert view.enforcers["h1"].heartbeat is not None and view.enforcers["h1"].heartbeat.at == NOW


def test_the_digest_path_skips_a_heartbeat_from_the_future_too() -> None:
    """load_coverage_view picks each enforcer's latest heartbeat itself (the fast path, by applied digest):
    one dated 9999, with a digest, counted its host live there though FleetView skipped it."""
    from fleet2ban.audit.reader import _latest_heartbeats, _ReportDecoder
    from fleet2ban.contract import encode
    from fleet2ban.kafka.reader import Record

    real = datetime.now(UTC)
    good = Heartbeat(host="h1", role="enforcer", at=real, applied_digest="0:0", bans_offsets={})
    forged = msgspec.structs.replace(good, at=datetime(9999, 12, 31, tzinfo=UTC))
    tail = [Record(0, i, None, b"h1", encode(hb)) for i, hb in enumerate([good, forged])]
    view = FleetView()
    _latest, enforcers = _latest_heartbeats(tail, 0, _ReportDecoder(view, None))
    assert enforcers["h1"][0].at == real and view.future == 1
    assert not view.is_silent(enforcers["h1"][0], real + timedelta(seconds=1))
