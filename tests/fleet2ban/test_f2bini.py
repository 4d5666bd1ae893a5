"""One reader of fail2ban's jails and filters (fleet2ban/f2bini.py): ``import-fail2ban`` and the
shipper's ``--filter`` see the same values, read as fail2ban reads them."""

from __future__ import annotations

from pathlib import Path

from fleet2ban.f2bini import filter_option, filter_scope, find_config, read_config, regex_lines
from processor.import_f2b import import_jail
from shipper.f2bfilter import load_filter
from shipper.parse import ParsedLine

LINE = "2026-12-07T10:00:00.0000000+00:00 [1] info: 07-0013 client[x](203.0.113.9:4000) disconnected: {}."


def _filter_dir(tmp_path: Path) -> Path:
    fdir = tmp_path / "filter.d"
    fdir.mkdir()
    (fdir / "mine.conf").write_text(
        "[INCLUDES]\nbefore = common.conf\n"
        "[Init]\nwhy = auth\n"
        "[Definition]\n"
        "failregex = \\(<HOST>:\\d+\\) disconnected: (%(why)s)\\.$  ; fail2ban: an inline comment\n"
    )
    # fail2ban reads NAME.local over NAME.conf: the operator's override wins, the rest stays
    (fdir / "mine.local").write_text("[Init]\nwhy = auth|name in use\n")
    return fdir


def test_read_config_is_fail2ban_s_reading(tmp_path: Path) -> None:
    fdir = _filter_dir(tmp_path)
    path = find_config(fdir, "mine")
    assert path == fdir / "mine.conf"
    scope = filter_scope(read_config(path))
    assert scope["why"] == "auth|name in use"
    regexes = regex_lines(filter_option(scope, "failregex", what=str(path)))
    assert regexes == ["\\(<HOST>:\\d+\\) disconnected: (auth|name in use)\\.$"]
    assert filter_option(scope, "ignoreregex", what=str(path)) is None
    assert find_config(fdir, "absent") is None
    (fdir / "only.local").write_text("[Definition]\nfailregex = x <HOST>\n")
    assert find_config(fdir, "only") == fdir / "only.local"


def test_import_and_the_shipper_read_a_filter_alike(tmp_path: Path) -> None:
    fdir = _filter_dir(tmp_path)
    jail = tmp_path / "jail.local"
    jail.write_text("[mine]\nenabled = true\nfilter = mine\nport = 9007 ; amps\n")
    res = import_jail(jail, filter_dir=fdir)
    (j,) = res.settings["jails"]
    assert j["reasons"] == ["auth", "name in use"] and j["ports"] == [9007]
    flt = load_filter(Path(res.settings["shipper"]["filter_path"]), warn=False)
    for reason in ("auth", "name in use"):
        got = flt(LINE.format(reason))
        assert isinstance(got, ParsedLine) and got.ip == "203.0.113.9", reason
    assert not isinstance(flt(LINE.format("connection closed")), ParsedLine)
