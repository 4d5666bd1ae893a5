"""tests/data/amps-ban.log: every line states its expected parse; the seed's regex side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleet2ban.contract import rfc3339
from shipper.f2bfilter import load_filter
from shipper.parse import Liveness, ParsedLine, Rejected, decode_line, parse_line

DATA = Path(__file__).parent.parent / "data"
SAMPLE = DATA / "amps-ban.log"
SEED_FILTER = DATA / "seed-amps.conf"
EXPECT = b"# expect: "


def sample_cases() -> list[tuple[int, str, dict[str, Any]]]:
    """(line number, line, expectation) for each log line of the sample; every line has one."""
    cases = []
    expect: dict[str, Any] | None = None
    for no, raw in enumerate(SAMPLE.read_bytes().split(b"\n")[:-1], start=1):
        if raw.startswith(EXPECT):
            assert expect is None, f"line {no}: two expectations in a row"
            expect = json.loads(raw[len(EXPECT) :])
            continue
        if raw.startswith(b"#"):
            assert expect is None, f"line {no}: comment between an expectation and its line"
            continue
        assert expect is not None, f"line {no}: log line without an expectation"
        cases.append((no, decode_line(raw), expect))
        expect = None
    return cases


CASES = sample_cases()


def test_sample_is_substantial() -> None:
    kinds = {next(k for k in ("event", "reject", "liveness") if k in e) for _, _, e in CASES}
    assert kinds == {"event", "reject", "liveness"}
    assert len(CASES) >= 50


@pytest.mark.parametrize(("no", "line", "expect"), CASES, ids=[f"line{c[0]}" for c in CASES])
def test_sample_line(no: int, line: str, expect: dict[str, Any]) -> None:
    got = parse_line(line)
    if "event" in expect:
        assert isinstance(got, ParsedLine), got
        e = expect["event"]
        assert (got.ip, got.port, got.client, got.reason, rfc3339(got.ts)) == (
            e["ip"],
            e["port"],
            e["client"],
            e["reason"],
            e["ts"],
        )
        assert got.raw == line.rstrip("\r\n")[:512]
    elif "liveness" in expect:
        assert isinstance(got, Liveness), got
        assert rfc3339(got.ts) == expect["liveness"]
    else:
        assert isinstance(got, Rejected), got
        assert got.kind == expect["reject"], got


@pytest.mark.parametrize(("no", "line", "expect"), CASES, ids=[f"line{c[0]}" for c in CASES])
def test_seed_regex_side_by_side(no: int, line: str, expect: dict[str, Any]) -> None:
    """What the seed's failregex takes as <HOST> on the same line (as fail2ban 1.0, usedns = no)."""
    seed = load_filter(SEED_FILTER, warn=False)
    host = None
    for regex in seed.failregex:
        m = regex.search(line.rstrip("\r\n"))
        if m:
            host = m.group("ip4") or m.group("ip6")
            break
    assert host == expect["seed"]


def test_seed_is_fooled_where_we_are_not() -> None:
    fooled = [
        (no, e["seed"], e["event"]["ip"])
        for no, _, e in CASES
        if "event" in e
        and e["seed"] is not None
        and e["seed"] != e["event"]["ip"]
        and e["seed"].lower() != e["event"]["ip"]
    ]
    # The hostile names make the seed report an address that never connected.
    assert ("203.0.113.9" in {s for _, s, _ in fooled}) and len(fooled) >= 3
    # ... and lines whose real reason is not a failure get counted as 'auth' failures by the seed.
    seed = load_filter(SEED_FILTER, warn=False)
    line = next(ln for _, ln, e in CASES if "event" in e and e["event"]["client"].startswith("x]("))
    assert isinstance(seed(line), ParsedLine)
    ours = parse_line(line)
    assert isinstance(ours, ParsedLine) and ours.ip == "10.0.0.5"


def _fail2ban_python() -> str | None:
    import shutil
    import subprocess

    py = shutil.which("python3", path="/usr/bin")
    if py is None:
        return None
    ok = (
        subprocess.run(
            [py, "-c", "import fail2ban.server.failregex"], check=False, capture_output=True
        ).returncode
        == 0
    )
    return py if ok else None


@pytest.mark.fail2ban
def test_seed_column_is_what_fail2ban_itself_reports() -> None:
    """The ``seed`` expectations come from fail2ban 1.0's own FailRegex, run on every sample line."""
    import subprocess

    py = _fail2ban_python()
    if py is None:
        pytest.skip("fail2ban (Debian package) is not installed")
    script = (
        "import sys, json\n"
        "from fail2ban.server.failregex import FailRegex\n"
        "r = FailRegex(sys.argv[1], useDns='no')\n"
        "for raw in sys.stdin.buffer.read().split(b'\\n')[:-1]:\n"
        "    r.search([('', '', raw.decode('utf-8', 'replace').rstrip('\\r'))])\n"
        "    g = r.getGroups() if r.hasMatched() else {}\n"
        "    print(json.dumps(g.get('ip4') or g.get('ip6') or g.get('dns')))\n"
    )
    regex = r"info: 07-0013.*\(<HOST>:[\d]+\) disconnected: (auth|name in use)"
    lines = "".join(line.rstrip("\r\n") + "\n" for _, line, _ in CASES).encode()
    out = subprocess.run([py, "-c", script, regex], input=lines, capture_output=True, check=True)
    got = [json.loads(x) for x in out.stdout.decode().splitlines()]
    assert got == [e["seed"] for _, _, e in CASES]
