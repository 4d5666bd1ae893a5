"""``fleet2ban replay`` under hostile logs and flags (issue 20): one line and exit 2 for bad usage, future
lines not counted (and the host named), output safe for a terminal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from fleet2ban.cli.main import app

T0 = datetime(2025, 11, 24, 16, 0, 0, tzinfo=UTC)


def line(ts: datetime | str, ip: str = "198.51.100.7", client: str = "app") -> str:
    stamp = ts if isinstance(ts, str) else ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"
    return f"{stamp} [26] info: 07-0013 client[{client}]({ip}:51234) disconnected: auth.\n"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_a_year_9999_line_is_not_counted_and_bans_still_happen(tmp_path: Path) -> None:
    log = tmp_path / "liar.log"
    log.write_text(
        line("9999-12-31T23:59:59.9999999+00:00")
        + "".join(line(T0 + timedelta(seconds=0.1 * i)) for i in range(40))
    )
    code, out, err = run("replay", str(log))
    assert code == 0, err
    decisions = [msgspec.json.decode(x) for x in out.splitlines()]
    assert [d["action"] for d in decisions] == ["ban"]  # before the fix: a traceback (year 10000)
    assert "future=1" in err and "from liar" in err


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (["--maxretry", "0"], "maxretry"),
        (["--findtime", "-5"], "findtime"),
        (["--findtime", "nan"], "findtime"),
        (["--bantime", "inf"], "bantime"),
        (["--bantime", "1e12"], "bantime"),
    ],
)
def test_bad_policy_flags_are_one_line_and_exit_2(tmp_path: Path, flags: list[str], word: str) -> None:
    log = tmp_path / "h1.log"
    log.write_text(line(T0))
    code, _, err = run("replay", str(log), *flags)
    assert code == 2
    assert word in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_c1_controls_and_escapes_in_client_names_leave_as_json_escapes(tmp_path: Path) -> None:
    hostile = "x\u009b2J\x1b]52;c;AAAA\x07\u202e"
    log = tmp_path / "h1.log"
    log.write_text("".join(line(T0 + timedelta(seconds=0.1 * i), client=hostile) for i in range(20)))
    code, out, err = run("replay", str(log))
    assert code == 0, err
    assert "\u009b" not in out and "\x1b" not in out and "\u202e" not in out
    (d,) = [msgspec.json.decode(x) for x in out.splitlines()]
    assert hostile in d["evidence"][0]  # the same text once decoded
    code, out, _ = run("parse", str(log))
    assert code == 0 and "\u009b" not in out and "\x1b" not in out
    assert msgspec.json.decode(out.splitlines()[0])["client"] == hostile
