"""The one helper that makes outside text safe to show (issue 20): terminals, human logs, JSON output."""

from __future__ import annotations

import json
import logging

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet2ban.logs import SafeFormatter
from fleet2ban.safetext import json_safe, printable

HOSTILE = "a\x1b[2J\x1b]0;title\x07\x1b]52;c;ZXZpbA==\x07b\nc\r\td\u009b31me\u202ef\u2028g\x7fh\ufeff"


def test_printable_leaves_no_control_and_hides_nothing() -> None:
    out = printable(HOSTILE)
    assert out.isprintable()
    for visible in ("\\x1b", "\\n", "\\r", "\\t", "\\x9b", "\\u202e", "\\u2028", "\\x7f", "\\ufeff", "title"):
        assert visible in out
    assert printable("plain text, é and 中文") == "plain text, é and 中文"


@settings(max_examples=200, deadline=1000)
@given(st.text())
def test_printable_is_always_one_printable_line(text: str) -> None:
    out = printable(text)
    assert out.isprintable()
    assert printable(out) == out


@settings(max_examples=200, deadline=1000)
@given(st.text())
def test_json_safe_is_the_same_json_without_raw_controls(text: str) -> None:
    data = json_safe(msgspec.json.encode({"k": text}))
    assert json.loads(data) == {"k": text}
    decoded = data.decode()
    assert all(not ("\x7f" <= ch <= "\x9f") for ch in decoded)
    assert "\u2028" not in decoded and "\u202e" not in decoded and "\x1b" not in decoded


def test_human_log_lines_cannot_be_forged() -> None:
    fmt = SafeFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "manual ban by %s", ("op\nERROR forged line\x1b[2J",), None
    )
    line = fmt.format(record)
    assert "\n" not in line and "\x1b" not in line
    assert "forged line" in line
