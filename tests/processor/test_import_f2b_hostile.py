"""``import-fail2ban`` and ``--filter`` on hostile or careless files (issue 20): one line, exit 2, never a
traceback or a hang; nothing that would disable banning is carried over silently."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet2ban.cli.main import app

SEED_FILTER = Path(__file__).parents[1] / "data" / "seed-amps.conf"
BOMB = "".join(f"k{i} = " + f"%(k{i + 1})s" * 10 + "\n" for i in range(30)) + "k30 = x\n"


def jail_file(tmp: Path, body: str, filter_text: str | None = None) -> Path:
    (tmp / "filter.d").mkdir(exist_ok=True)
    (tmp / "filter.d" / "amps.conf").write_text(
        filter_text if filter_text is not None else SEED_FILTER.read_text()
    )
    path = tmp / "jail.local"
    path.write_text("[amps]\nenabled = true\nfilter = amps\n" + body)
    return path


def run(*args: str) -> tuple[int, str]:
    started = time.perf_counter()
    result = CliRunner().invoke(app, list(args))
    assert time.perf_counter() - started < 10, "took too long"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ("maxretry = twenty\n", "maxretry"),
        ("maxretry = 0\n", "maxretry"),
        ("port = 5-\n", "port"),
        ("port = 1:2:3\n", "port"),
        ("port = 65535:0\n", "port"),
        ("port = 70000\n", "port"),
        ("bantime = 1" + "0" * 400 + "y\n", "bantime"),
        ("bantime = 1000000y\n", "bantime"),
        ("bantime.increment = true\nbantime.multipliers = 1 2 x\n", "multipliers"),
        ("bantime.increment = true\nbantime.multipliers = 1 nan\n", "multipliers"),
        ("bantime.increment = true\nbantime.factor = inf\n", "factor"),
        ("ignoreip = 0.0.0.0/0 ::/0\n", "ignoreip"),
        ("ignoreip = ::/0\n", "ignoreip"),
        ("ignoreip = 0.0.0.0/1 128.0.0.0/1 ::/1 8000::/1\n", "ignoreip"),  # every address, split in halves
        ("ignoreip = 10.0.0.0/8 2000::/3\n", "ignoreip"),  # all of IPv6's global unicast
        ("maxretry = %(maxretry)s\n", "refers to itself"),
        ("a = %(b)s\nb = %(a)s\nmaxretry = %(a)s\n", "refers to itself"),
        (BOMB + "maxretry = %(k0)s\n", "nest deeper"),
        ("bantime.increment = true\nbantime.formula = ().__class__.__base__.__subclasses__()\n", "formula"),
    ],
)
def test_bad_jails_are_one_line_and_exit_2(tmp_path: Path, body: str, word: str) -> None:
    code, err = run("import-fail2ban", str(jail_file(tmp_path, body)))
    assert code == 2, err
    assert word in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "data", [b"\x7fELF\x02\x01\x01\x00" * 10, b"[amps]\nmaxretry = \xff\xfe\n", b"no section\n"]
)
def test_binary_and_broken_jail_files(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "jail.conf"
    path.write_bytes(data)
    code, err = run("import-fail2ban", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1


FILTERS = [
    "[Definition]\nfailregex = %(a)s\na = %(a)s <HOST>\n",
    "[Definition]\n" + BOMB.replace("x", "<HOST>") + "failregex = %(k0)s\n",
    "[Definition]\nfailregex = (<HOST>\n",
    "[Definition]\nfailregex = no host tag here\n",
    "no sections at all\n",
]


@pytest.mark.parametrize("text", FILTERS)
def test_bad_filters_are_one_line_and_exit_2(tmp_path: Path, text: str) -> None:
    flt = tmp_path / "f.conf"
    flt.write_text(text)
    log = tmp_path / "h1.log"
    log.write_text("")
    for cmd in (["parse", str(log), "--filter", str(flt)], ["replay", str(log), "--filter", str(flt)]):
        code, err = run(*cmd)
        assert code == 2, (cmd, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_binary_filter_is_one_line(tmp_path: Path) -> None:
    flt = tmp_path / "f.conf"
    flt.write_bytes(b"\x00\x01\x02binary\xff")
    log = tmp_path / "h1.log"
    log.write_text("")
    code, err = run("parse", str(log), "--filter", str(flt))
    assert code == 2 and "binary" in err and len(err.strip().splitlines()) == 1


def test_a_good_jail_still_imports(tmp_path: Path) -> None:
    code, err = run(
        "import-fail2ban", str(jail_file(tmp_path, "maxretry = %(mr)s\nmr = 5\nport = 9007,9008:9009\n"))
    )
    assert code == 0, err
