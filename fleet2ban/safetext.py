"""Text that came from outside, made safe to show: the one helper for terminals, logs and JSON output.

Client names, reasons, evidence lines, operator names and host names are chosen by whoever wrote them
(an attacker, for client names). Shown raw they can drive a terminal (ESC/CSI/OSC sequences: clear the
screen, set the title, write the clipboard with OSC 52; C1 controls such as U+009B, a one-character CSI),
forge log lines (a newline followed by a fake record), or reorder what a reader sees (bidirectional
overrides). Nothing is removed, so nothing can be hidden: each such character becomes a visible escape.

- :func:`printable`: for terminals and human log lines. C0 controls (newline and tab included), DEL, C1
  controls, Unicode line/paragraph separators, bidirectional and other format characters, unassigned code
  points become ``\\n``, ``\\t``, ``\\x1b``, ``\\x9b``, ``\\u202e`` ...
- :func:`json_safe`: for JSON text (``parse``, ``replay``, ``--json``): JSON already escapes C0 controls;
  this also escapes DEL, C1, the separators and bidirectional controls as ``\\u00XX`` (still valid JSON that
  decodes to the same strings).
"""

from __future__ import annotations

import re
from typing import Final

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_JSON_UNSAFE: Final = re.compile(
    rb"\x7f|\xc2[\x80-\x9f]|\xd8\x9c|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]|\xef\xbb\xbf"
)
"""The UTF-8 encodings of DEL, C1 (U+0080-U+009F), U+061C, U+200E/F, U+2028-U+202E, U+2066-U+2069, U+FEFF."""


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every character Python does not call printable (controls, separators, format and
    bidirectional characters, unassigned code points) as a visible escape: one line, inert in a terminal."""
    if text.isprintable():  # the common case: nothing to do
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _json_escape(m: re.Match[bytes]) -> bytes:
    return f"\\u{ord(m.group().decode()):04x}".encode()


def json_safe(data: bytes) -> bytes:
    """UTF-8 JSON text with DEL, C1 controls, separators and bidirectional controls escaped as ``\\uXXXX``
    (they can only occur inside strings, where the escape decodes to the same character)."""
    if data.isascii() and b"\x7f" not in data:
        return data
    return _JSON_UNSAFE.sub(_json_escape, data)
