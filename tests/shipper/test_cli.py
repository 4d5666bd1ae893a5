"""``fleet2ban parse``: one JSON event per 07-0013 line on stdout, a summary on stderr, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fleet2ban.cli.main import app
from shipper.parse import iter_file_events

DATA = Path(__file__).parent.parent / "data"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_parse_prints_wire_events_and_a_summary() -> None:
    code, out, err = run("parse", str(DATA / "amps-ban.log"), "--host", "h9")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    want = list(iter_file_events(DATA / "amps-ban.log", "h9"))
    assert len(events) == len(want) == 26
    first = events[0]
    assert {k: first[k] for k in ("ip", "port", "client", "reason", "ts", "host")} == {
        "ip": "10.1.2.3",
        "port": 51234,
        "client": "daily-report",
        "reason": "auth",
        "ts": "2017-12-08T00:55:49.939559Z",
        "host": "h9",
    }
    assert [e["id"] for e in events] == [w.id for w in want]
    assert "events=26" in err and "bad-address=6" in err and "too-long=1" in err
    hostile = next(e for e in events if e["client"].startswith("x]("))
    assert hostile["ip"] == "10.0.0.5"


def test_parse_with_the_seed_filter_is_fooled_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text(
        "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](203.0.113.9:1) disconnected:"
        " auth.](10.0.0.5:4000) disconnected: connection closed.\n"
    )
    code, out, err = run("parse", str(log), "--filter", str(DATA / "seed-amps.conf"))
    assert code == 0
    assert json.loads(out)["ip"] == "203.0.113.9"
    assert "can make it report an address" in err
    code, out, _ = run("parse", str(log))
    assert json.loads(out)["ip"] == "10.0.0.5"


def test_parse_exit_codes(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 10)
    code, out, err = run("parse", str(garbage))
    assert (code, out) == (0, "") and "events=0" in err
    code, _, err = run("parse", str(tmp_path / "missing.log"))
    assert code == 2 and "no such file" in err
    bad_filter = tmp_path / "f.conf"
    bad_filter.write_text("[Definition]\nfailregex = no host here\n")
    code, _, err = run("parse", str(garbage), "--filter", str(bad_filter))
    assert code == 2 and "<HOST>" in err
