"""The strict AMPS ``07-0013`` parser: a plain function over one line, no I/O.

A line AMPS writes to the ban log::

    2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[NAME](HOST:PORT) disconnected: REASON.

NAME is chosen by the client and is hostile: it may contain ``](``, ``)``, ``disconnected: auth.``, an
address, tabs, unicode. Everything AMPS itself writes after the name contains no parenthesis, so the
parser anchors on the end of the line: HOST:PORT is what sits inside the *last* ``(...)`` of the line,
immediately after ``]`` and immediately before `` disconnected: REASON.`` with a REASON free of
parentheses. No client name, however built, can move that anchor.

:func:`parse_line` returns a :class:`ParsedLine` (a ``07-0013`` event), a :class:`Liveness` (a
``00-0015`` line) or a :class:`Rejected` with a ``kind`` that is counted and logged by the caller.
:func:`iter_file_events` reads a whole file into wire :class:`~fleet2ban.contract.Event` records (the
offline path used by ``fleet2ban replay``); :func:`write_file_json` writes the same events as JSON lines
(``fleet2ban parse``).

One recogniser of a well-formed ``07-0013`` line, :func:`_scan` (one regex scan per block of lines plus
the checks that keep it within what the general path accepts), serves every reader: :func:`scan_block`
(the shipper, replay), the JSON writer and :func:`parse_line` (the scan over one line). Every other line
is classified by :func:`_classify`, the general path that names rejections;
tests/shipper/test_parse_json.py and test_sample_log.py hold the two to the same answers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Final, Protocol

import msgspec

from fleet2ban.contract import RAW_LINE_MAX, ContractError, Event, normalize_ip
from shipper.fileid import FileId

LINE_MAX: Final = 4096
"""Default bound on one line (characters for :func:`parse_line`, bytes when reading files)."""

EVENT_CODE: Final = "07-0013"
LIVENESS_CODE: Final = "00-0015"

# Rejection kinds (the label values of the ``parse rejections`` metric).
EMPTY: Final = "empty"
BINARY: Final = "binary"
TOO_LONG: Final = "too-long"
NOT_EVENT: Final = "not-07-0013"
BAD_TIMESTAMP: Final = "bad-timestamp"
BAD_ADDRESS: Final = "bad-address"
BAD_PORT: Final = "bad-port"
MALFORMED: Final = "malformed"
SUSPECT: Final = "suspect"
REJECT_KINDS: Final = (
    EMPTY,
    BINARY,
    TOO_LONG,
    NOT_EVENT,
    BAD_TIMESTAMP,
    BAD_ADDRESS,
    BAD_PORT,
    MALFORMED,
    SUSPECT,
)


class ParsedLine(msgspec.Struct, frozen=True):
    """One ``07-0013`` line: who disconnected, from where, when and why."""

    ts: datetime
    ip: str
    port: int
    client: str
    reason: str
    raw: str


class Liveness(msgspec.Struct, frozen=True):
    """A ``00-0015`` line: AMPS is alive and writing (not an event)."""

    ts: datetime


class Rejected(msgspec.Struct, frozen=True):
    """A line that is not an event, with the kind it is counted under."""

    kind: str
    detail: str = ""


ParseResult = ParsedLine | Liveness | Rejected
Parser = Callable[[str], ParseResult]

# ------------------------------------------------------------------------------------------ patterns

# TIMESTAMP [THREAD] LEVEL: CODE[ MESSAGE]
_LINE = re.compile(r"(\S+) \[[^\]\s]*\] [A-Za-z]+: (\d\d-\d\d\d\d)(?: (.*))?", re.DOTALL)
# client[NAME](HOST:PORT) disconnected: REASON.   -- NAME is greedy; the tail holds no parenthesis,
# so the only split that can match is at the last "(" of the line.
_EVENT = re.compile(r"client\[(.*)\]\(([^()]*)\) disconnected: ([^()]*)\.", re.DOTALL)
_DISC = ") disconnected: "
_TS = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d\d):?(\d\d))", re.ASCII
)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_EVENT_HEAD = re.compile(r"\S+ \[[^\]\s]*\] [A-Za-z]+: 07-0013 ")
"""The start of a ``07-0013`` record: one without a tail may have been cut by a newline (below)."""

# --------------------------------------------------------------------------------- continuation lines
#
# AMPS writes one log message per line ("it will appear on a single line within the log", AMPS User
# Guide, Log Message Format) and does not limit the characters of a client name (Command Reference,
# logon). Its documentation does not say that it escapes a newline inside a name. If it did not, a name
# could end the physical line and carry a whole fake ``07-0013`` line (any address, any time) after it.
# So a physical line is *suspect* -- rejected with kind ``suspect``, counted and logged, never an event --
# when it follows an *unterminated* ``07-0013`` record (its head, ``TIMESTAMP [THREAD] LEVEL: 07-0013 ``,
# without a record's tail ``) disconnected: ``), up to and including the next line that holds such a
# tail, at most SUSPECT_LINES lines. The real tail of a cut record is on one of those lines, so nothing
# genuine is lost but the cut record itself (malformed anyway). What this cannot catch, were AMPS not to
# escape newlines: a name that ends its first physical line with a complete fake tail. docs/deploying.md
# (threat model) says what bounds that, and how to check a given AMPS version.

SUSPECT_LINES: Final = 16
SUSPECT_MARK: Final = "\x00suspect\x00"
"""Prefix :func:`scan_block` puts on a suspect line before handing it to ``on_other``: :func:`parse_line`
rejects such a line as ``suspect`` (a real line starting with NUL is binary, rejected anyway)."""


class Continuation:
    """Per file, in file order: which physical lines follow an unterminated ``07-0013`` record."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = 0
        """How many more lines are suspect (0: none)."""

    def suspect(self, text: str, too_long: bool = False) -> bool:
        """Whether the physical line ``text`` (the next one of the file) is suspect; notes it either way.
        A line cut by our own length bound (``too_long``) is not a record cut by a newline."""
        was = self.left > 0
        if was:
            self.left = 0 if _DISC in text else self.left - 1
        if not too_long and _DISC not in text and _EVENT_HEAD.match(text) is not None:
            self.left = SUSPECT_LINES  # a record without its tail: what follows may be the rest of its name
        return was


_CACHE_MAX: Final = 65_536
_ip_cache: dict[str, str | None] = {}
_ts_cache: dict[str, datetime | None] = {}


class _BadTimestampError(ValueError):
    pass


def parse_timestamp(text: str) -> datetime:
    """AMPS's ISO 8601 time (``2017-12-07T16:55:49.9395590-08:00``) as UTC, truncated to microseconds.

    Raises ``ValueError`` when the text is not such a time (the UTC offset is required).
    """
    m = _TS.fullmatch(text)
    if m is None:
        raise _BadTimestampError(f"not an ISO 8601 time with offset: {text[:48]!r}")
    frac = m.group(7) or ""
    # Everything but the fraction is cached: consecutive lines share their second.
    key = text[: m.start(7) - 1] + text[m.end(7) :] if frac else text
    base = _ts_cache.get(key)
    if base is None:
        y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
        if m.group(8):
            offset = timedelta(0)
        else:
            oh, om = int(m.group(10)), int(m.group(11))
            if oh > 23 or om > 59:
                raise _BadTimestampError(f"bad UTC offset in {text[:48]!r}")
            offset = timedelta(hours=oh, minutes=om) * (-1 if m.group(9) == "-" else 1)
        try:
            base = (datetime(y, mo, d, h, mi, s, tzinfo=UTC) - offset).replace(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise _BadTimestampError(f"bad time {text[:48]!r}: {exc}") from None
        if len(_ts_cache) >= 1024:
            _ts_cache.clear()
        _ts_cache[key] = base
    if frac:
        return base.replace(microsecond=int(frac[:6].ljust(6, "0")))
    return base


def _canonical_ip(text: str) -> str | None:
    ip = _ip_cache.get(text, "")
    if ip != "":
        return ip
    out: str | None
    if not text or "%" in text or "[" in text or "]" in text or text != text.strip():
        out = None  # scoped addresses and stray brackets are not client addresses
    else:
        try:
            out = normalize_ip(text)
        except ContractError:
            out = None
    if len(_ip_cache) >= _CACHE_MAX:
        _ip_cache.clear()
    _ip_cache[text] = out
    return out


def split_hostport(text: str) -> tuple[str, str] | Rejected:
    """``10.1.2.3:51234``, ``[2001:db8::7]:50000`` or bare ``2001:db8::8:50001`` -> (ip, port text)."""
    if text.startswith("["):
        addr, sep, port = text[1:].partition("]:")
        if not sep:
            return Rejected(BAD_ADDRESS, f"bracketed address without ]:PORT: {text[:64]!r}")
    else:
        addr, sep, port = text.rpartition(":")
        if not sep:
            return Rejected(BAD_PORT, f"no port in {text[:64]!r}")
    return addr, port


def parse_hostport(text: str) -> tuple[str, int] | Rejected:
    """Canonical address and port of AMPS's ``HOST:PORT``, or the reason it is rejected."""
    split = split_hostport(text)
    if isinstance(split, Rejected):
        return split
    addr, port_text = split
    if _PORT.fullmatch(port_text) is None:
        return Rejected(BAD_PORT, f"bad port {port_text[:16]!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        return Rejected(BAD_PORT, f"port {port} out of range")
    ip = _canonical_ip(addr)
    if ip is None:
        return Rejected(BAD_ADDRESS, f"not an IP address: {addr[:64]!r}")
    return ip, port


def parse_line(line: str, max_len: int = LINE_MAX) -> ParseResult:
    """Parse one line of the AMPS ban log (a trailing ``\\n``/``\\r\\n`` is ignored).

    A well-formed ``07-0013`` line is recognised by the block scanner over this one line
    (:func:`_scan_one`), as every reader recognises it; any other line is classified by
    :func:`_classify`, which names its rejection."""
    if line.startswith(SUSPECT_MARK):
        return Rejected(SUSPECT, "follows an unterminated 07-0013 record (a client name with a newline?)")
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    if len(line) > max_len:
        return Rejected(TOO_LONG, f"{len(line)} characters (bound {max_len})")
    return _scan_one(line) or _classify(line)


def _scan_one(line: str) -> ParsedLine | None:
    """:func:`_scan` over the one line ``line`` (no newline): its event, or None (the general path)."""
    if "\n" in line or line[-1:] == "\r" or "07-0013" not in line:
        return None
    try:
        data = line.encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: not text a log holds
        return None
    got: list[ParsedLine] = []

    def take(_s: int, _end: int, g: tuple[str, ...], u: tuple[str, datetime], ip: str, _escape: bool) -> None:
        us = g[2]
        ts = u[1] + timedelta(0, 0, int(us)) if us != "000000" else u[1]
        got.append(ParsedLine(ts, ip, int(g[6]), g[4], g[7], g[0]))

    _scan(data, LINE_MAX, _NO_CARRY, _ASCII, take, _skip)
    return got[0] if got else None


def _skip(_start: int, _end: int) -> None:
    pass


def _classify(line: str) -> ParseResult:
    """The general path: any line (no newline, within the length bound) as an event, liveness or the
    rejection it is counted under."""
    m = _LINE.fullmatch(line)
    if m is None:
        return _unrecognised(line)
    ts_text, code, msg = m.groups()
    if code != EVENT_CODE:
        if code == LIVENESS_CODE:
            try:
                return Liveness(parse_timestamp(ts_text))
            except ValueError as exc:
                return Rejected(BAD_TIMESTAMP, str(exc))
        return Rejected(NOT_EVENT, f"message {code}")
    try:
        ts = parse_timestamp(ts_text)
    except ValueError as exc:
        return Rejected(BAD_TIMESTAMP, str(exc))
    em = _EVENT.fullmatch(msg) if msg is not None else None
    if em is None:
        return Rejected(MALFORMED, "07-0013 without client[NAME](HOST:PORT) disconnected: REASON.")
    client, hostport, reason = em.groups()
    hp = parse_hostport(hostport)
    if isinstance(hp, Rejected):
        return hp
    if not reason:
        return Rejected(MALFORMED, "empty disconnect reason")
    return ParsedLine(ts, hp[0], hp[1], client, reason, line[:RAW_LINE_MAX])


def _unrecognised(line: str) -> Rejected:
    if not line.strip():
        return Rejected(EMPTY, "empty line")
    if "\x00" in line or _mostly_unprintable(line):
        return Rejected(BINARY, "binary data")
    return Rejected(MALFORMED, "not an AMPS log line (TIMESTAMP [THREAD] LEVEL: CODE ...)")


def _mostly_unprintable(line: str) -> bool:
    bad = sum(1 for ch in line[:256] if ch == "\ufffd" or (ch < " " and ch != "\t"))
    return bad * 4 > min(len(line), 256)


def decode_line(data: bytes) -> str:
    """Bytes of one line as text: invalid UTF-8 becomes U+FFFD, so a hostile name cannot hide an event."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


# -------------------------------------------------------------------------------------- file reading


@dataclass
class ParseStats:
    """What a parse run saw: lines, events, liveness lines and rejections by kind."""

    lines: int = 0
    events: int = 0
    liveness: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def count(self, result: ParseResult) -> None:
        self.lines += 1
        if isinstance(result, ParsedLine):
            self.events += 1
        elif isinstance(result, Liveness):
            self.liveness += 1
        else:
            self.rejected[result.kind] += 1

    def summary(self) -> str:
        rej = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "none"
        return (
            f"lines={self.lines} events={self.events} liveness={self.liveness} "
            f"rejected={sum(self.rejected.values())} ({rej})"
        )


def file_identity(fd: int) -> FileId:
    """Identity of one open file (not of its name): :meth:`FileId.of`."""
    return FileId.of(fd)


def read_lines(f: BinaryIO, max_bytes: int = LINE_MAX, offset: int = 0) -> Iterator[tuple[int, bytes, bool]]:
    """(byte offset, line without its newline, too long) for each line of a file object, memory-bounded.

    A line longer than ``max_bytes`` is cut: its first ``max_bytes`` are returned with ``too long`` set and
    the rest is skipped up to its newline. A last line without a newline is returned as it is.
    """
    readline = f.readline
    while True:
        data = readline(max_bytes + 1)
        if not data:
            return
        if data.endswith(b"\n"):
            yield offset, data[:-1], False
            offset += len(data)
            continue
        if len(data) <= max_bytes:  # last line, no newline
            yield offset, data, False
            return
        start = offset
        offset += len(data)
        while True:
            more = readline(65536)
            offset += len(more)
            if not more or more.endswith(b"\n"):
                break
        yield start, data[:max_bytes], True


# ------------------------------------------------------------------------ the block fast path

_FAST_EVENT = re.compile(
    r"^((.{19})\.([0-9]{6})[0-9]([-+]..:..) \[[0-9]*\] info: 07-0013 "
    r"client\[(.*)\]\(([^()\n]*?):([1-9][0-9]{0,4})\) disconnected: ([^()\n]+)\.)\r?$",
    re.MULTILINE,
)
"""The well-formed ``07-0013`` line as AMPS writes it (7-digit fraction, ``+HH:MM`` offset, numeric thread,
``info``), for :func:`scan_block` and :func:`write_file_json`. On its own it accepts more than :func:`parse_line` does; a line
is taken only once the caller has also checked, by the caches below, that the time and address are valid
(:func:`parse_timestamp`, :func:`_canonical_ip`), that the reason holds no parenthesis, the port is at most
65535 and the line needs no cutting (nor, for JSON, escaping). HOST and REASON hold no parenthesis, so the
split after the greedy NAME is the one at the last "(" of the line, which :func:`parse_line` takes. Any other
line goes through :func:`parse_line`.

Linear time on any line: the only backtracking is NAME's, over the "](" of the line, and from each the rest
fails at the next parenthesis; every stretch between two parentheses is scanned a bounded number of times
(tests/shipper/test_parse_hostile.py feeds it the worst lines known)."""

_JSON_SAFE: Final = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\') + b"\n"
"""Bytes that JSON carries verbatim (plus the newline that ends a line)."""

_utc: dict[str, tuple[str, datetime] | None] = {}
"""``SECOND + OFFSET`` text -> (the UTC second as msgspec writes it, without fraction and ``Z``; the UTC
second as a datetime), or None: not a valid time."""
_fast_ip: dict[str, str | None] = {}
"""HOST as written (``10.1.2.3``, ``[2001:db8::7]``, ``2001:db8::8``) -> canonical address, or None."""


def _utc_of(sec: str, off: str) -> tuple[str, datetime] | None:
    out: tuple[str, datetime] | None
    try:
        base = parse_timestamp(sec + off)
    except ValueError:
        out = None
    else:
        out = _json_encode(base)[1:-2].decode("ascii"), base
    if len(_utc) >= _CACHE_MAX:
        _utc.clear()
    _utc[sec + off] = out
    return out


def _fast_ip_of(addr: str) -> str | None:
    if addr[:1] == "[":
        # "[X]:PORT": parse_line splits at the first "]:"; X itself holds no bracket, or it is no address
        out = _canonical_ip(addr[1:-1]) if addr[-1:] == "]" else None
    else:
        out = _canonical_ip(addr)  # parse_line splits at the last ":"; PORT holds none
    if len(_fast_ip) >= _CACHE_MAX:
        _fast_ip.clear()
    _fast_ip[addr] = out
    return out


_json_encode = msgspec.json.Encoder().encode


def _lines_with_others(block: bytes, allowed: bytes) -> set[int] | None:
    """Start offsets of the lines of ``block`` holding a byte not in ``allowed`` (a CR right before the
    newline counts as allowed); None when there are none."""
    odd = block.translate(None, allowed)
    if not odd:
        return None
    starts: set[int] = set()
    if len(odd) <= 64:  # a few: find each
        for b in set(odd):
            ch = bytes((b,))
            i = block.find(ch)
            while i >= 0:
                if b != 13 or block[i + 1 : i + 2] != b"\n":
                    starts.add(block.rfind(b"\n", 0, i) + 1)
                i = block.find(ch, i + 1)
    else:  # many (CRLF endings, much UTF-8): line by line
        pos = 0
        for line in block.split(b"\n"):
            bad = line.translate(None, allowed)
            if bad and (bad != b"\r" or line[-1:] != b"\r"):
                starts.add(pos)
            pos += len(line) + 1
    return starts or None


_ASCII: Final = bytes(range(0x80))


BLOCK = 1 << 20

_NO_CARRY: Final = Continuation()
"""For :func:`_scan_one`: a line read on its own follows nothing (its ``left`` stays 0)."""


OnFast = Callable[[int, datetime, str, int, str, str, str], None]
"""(byte offset, ts, ip, port, client, reason, raw) of one well-formed 07-0013 line."""
OnOther = Callable[[int, str, bool], None]
"""(byte offset, line text, too long) of any other line: for the general path (:func:`parse_line`)."""


Take = Callable[[int, int, "tuple[str, ...]", "tuple[str, datetime]", str, bool], None]
"""(start, end, groups, utc, ip, escape) of one well-formed 07-0013 line ``block[start:end]`` (its
newline included): :data:`_FAST_EVENT`'s groups (raw, second, microseconds, offset, client, address,
port, reason), the cached UTC second (:func:`_utc_of`), the canonical address, and whether the line holds
bytes outside the scan's ``allowed`` set (its groups are then the line's UTF-8 text)."""
Other = Callable[[int, int], None]
"""(start, end) of complete lines ``block[start:end]`` that the general path (:func:`parse_line`) takes."""


def _scan(block: bytes, limit: int, carry: Continuation, allowed: bytes, take: Take, other: Other) -> int:
    """The one recogniser of well-formed 07-0013 lines: every line of ``block`` (complete lines, each
    ending in a newline) goes, in file order, to ``take`` (well-formed) or ``other`` (the general path).
    Returns how many went to ``take``. :func:`scan_block`, :func:`parse_line` and the JSON writer are this
    scan with their own ``take``.

    One regex scan (:data:`_FAST_EVENT`) over the block (as Latin-1: offsets are byte offsets) finds the
    candidates; a line with a byte not in ``allowed`` is matched again as UTF-8 text (not UTF-8: general
    path). A candidate is taken when its time and address are valid (cached :func:`parse_timestamp`,
    :func:`_canonical_ip`), its reason holds no parenthesis, its port is at most 65535, it needs no
    cutting (``limit``, :data:`RAW_LINE_MAX`) and it does not follow an unterminated record (``carry``).
    """
    odd = None if allowed is _ASCII and block.isascii() else _lines_with_others(block, allowed)
    text = block.decode("latin-1")  # one character per byte: match offsets are byte offsets
    bound = min(limit, RAW_LINE_MAX, LINE_MAX) + 1  # a line's bytes and its newline
    utc, ips = _utc, _fast_ip
    pos = fast = 0
    last_sec = last_off = ""
    last_u: tuple[str, datetime] | None = None
    for m in _FAST_EVENT.finditer(text):
        s = m.start()
        if s != pos:
            other(pos, s)
        pos = m.end() + 1
        if carry.left:  # follows an unterminated 07-0013 record: not to be trusted
            other(s, pos)
            continue
        if odd is not None and s in odd:  # the same checks on the line's UTF-8 text
            mu = _utf8_match(block, s, pos - 1)
            if mu is None:
                other(s, pos)
                continue
            groups = mu.groups()
            escape = True
        else:
            groups = m.groups()
            escape = False
        sec, off, addr, port, reason = groups[1], groups[3], groups[5], groups[6], groups[7]
        if sec != last_sec or off != last_off:  # consecutive lines mostly share their second
            u = utc.get(sec + off)
            if u is None and sec + off not in utc:
                u = _utc_of(sec, off)
            last_sec, last_off, last_u = sec, off, u
        else:
            u = last_u
        ip = ips.get(addr)
        if ip is None and addr not in ips:
            ip = _fast_ip_of(addr)
        if (
            u is None
            or ip is None
            or pos - s > bound
            or "(" in reason
            or ")" in reason
            or (len(port) == 5 and port > "65535")
        ):
            other(s, pos)
            continue
        fast += 1
        take(s, pos, groups, u, ip, escape)
    if pos < len(block):
        other(pos, len(block))
    return fast


def scan_block(
    block: bytes,
    base: int,
    limit: int,
    on_fast: OnFast,
    on_other: OnOther,
    carry: Continuation | None = None,
) -> int:
    """Hand every line of ``block`` (complete lines, each ending in a newline; the first at byte ``base``)
    to ``on_fast`` or ``on_other``, in file order. Returns how many went to ``on_fast``.

    :func:`_scan` decides which: ``on_fast`` gets the well-formed 07-0013 lines, ``on_other`` (normally
    :func:`parse_line`) every other line, and every line a check does not pass.

    ``carry``: the file's :class:`Continuation` (kept across blocks); without it, suspect lines are found
    within the block only. A suspect line goes to ``on_other`` marked with :data:`SUSPECT_MARK`.
    """
    if carry is None:
        carry = Continuation()
    c = carry

    def take(s: int, _end: int, g: tuple[str, ...], u: tuple[str, datetime], ip: str, _escape: bool) -> None:
        us = g[2]
        on_fast(
            base + s,
            u[1] + timedelta(0, 0, int(us)) if us != "000000" else u[1],
            ip,
            int(g[6]),
            g[4],
            g[7],
            g[0],
        )

    def other(start: int, end: int) -> None:
        _other_lines(block, start, end, base, limit, on_other, c)

    return _scan(block, limit, carry, _ASCII, take, other)


def _utf8_match(block: bytes, start: int, end: int) -> re.Match[str] | None:
    try:
        return _FAST_EVENT.match(block[start:end].decode("utf-8"))
    except UnicodeDecodeError:
        return None  # decode_line replaces what is not UTF-8: parse_line decides


def _other_lines(
    block: bytes, start: int, end: int, base: int, limit: int, on_other: OnOther, carry: Continuation
) -> None:
    """Lines ``block[start:end]`` (complete, each with its newline) to ``on_other``; a suspect one marked."""
    pos = start
    for raw in block[start : end - 1].split(b"\n"):
        text = decode_line(raw[:limit])
        if carry.suspect(text, len(raw) > limit):
            on_other(base + pos, SUSPECT_MARK + text, False)
        else:
            on_other(base + pos, text, len(raw) > limit)
        pos += len(raw) + 1


class _FileParse:
    """The per-file state of :func:`iter_file_events`: ids, counters and the general (per-line) path."""

    def __init__(
        self,
        host: str,
        instance: str,
        file_id: FileId,
        stats: ParseStats | None,
        parser: Parser,
        max_line_bytes: int,
        on_reject: Callable[[int, Rejected], None] | None,
    ) -> None:
        self.host, self.instance, self.file_id = host, instance, file_id
        self.prefix = f"{host}:{file_id}:"
        self.stats = stats if stats is not None else ParseStats()
        self.parser = parser
        self.max_line_bytes = max_line_bytes
        self.on_reject = on_reject
        self.carry = Continuation()

    def checked_line(self, offset: int, text: str, too_long: bool) -> Event | None:
        """:meth:`line` for a line read on its own (not through :func:`scan_block`, which checks itself):
        whether it follows an unterminated 07-0013 record first."""
        if self.carry.suspect(text, too_long):
            return self.line(offset, SUSPECT_MARK + text, False)
        return self.line(offset, text, too_long)

    def line(self, offset: int, text: str, too_long: bool) -> Event | None:
        result: ParseResult
        if text.startswith(SUSPECT_MARK):  # whatever the parser (a fail2ban filter would take it)
            result = parse_line(text)
        elif too_long:
            result = Rejected(TOO_LONG, f"line longer than {self.max_line_bytes} bytes")
        else:
            result = self.parser(text)
        self.stats.count(result)
        if type(result) is ParsedLine:
            return to_event(result, self.host, self.instance, f"{self.prefix}{offset}")
        if type(result) is Rejected and self.on_reject is not None:
            self.on_reject(offset, result)
        return None

    def chunks(self, f: BinaryIO) -> Iterator[tuple[bytes, int] | int]:
        """(data, its first byte's offset) per block of complete lines (``data`` ends with a newline), then
        possibly a last line without newline (``data`` does not); or, to end with, the offset to go on from
        line by line (a line longer than one block: the line reader skips it with bounded memory)."""
        offset = 0
        carry = b""
        limit = self.max_line_bytes
        while True:
            data = f.read(BLOCK)
            if not data:
                if carry:  # a last line without newline
                    yield carry, offset
                return
            buf = carry + data if carry else data
            nl = buf.rfind(b"\n")
            if nl < 0:
                if len(buf) > limit:
                    yield offset
                    return
                carry = buf
                continue
            carry = buf[nl + 1 :]
            yield buf[: nl + 1], offset
            offset += nl + 1
            if len(carry) > limit:
                yield offset
                return

    def last_line(self, data: bytes, offset: int) -> Event | None:
        limit = self.max_line_bytes
        return self.checked_line(offset, decode_line(data[:limit]), len(data) > limit)

    def blocks(self, f: BinaryIO) -> Iterator[list[Event] | int]:
        """Events of the file, a list per block; ends with the offset to go on from line by line, if any."""
        for item in self.chunks(f):
            if isinstance(item, int):
                yield item
                return
            data, offset = item
            if not data.endswith(b"\n"):
                ev = self.last_line(data, offset)
                if ev is not None:
                    yield [ev]
                return
            out: list[Event] = []
            self.block(data, offset, out)
            yield out

    def block(self, block: bytes, base: int, out: list[Event]) -> None:
        """Events of complete lines (``block`` ends with a newline) starting at byte ``base``."""
        host, instance, prefix = self.host, self.instance, self.prefix
        append = out.append

        def on_fast(off: int, ts: datetime, ip: str, port: int, client: str, reason: str, raw: str) -> None:
            append(Event(host, ip, f"{prefix}{off}", ts, port, client, reason, raw, instance))

        def on_other(off: int, text: str, too_long: bool) -> None:
            ev = self.line(off, text, too_long)
            if ev is not None:
                append(ev)

        fast = scan_block(block, base, self.max_line_bytes, on_fast, on_other, self.carry)
        self.stats.lines += fast
        self.stats.events += fast


def iter_file_event_lists(
    path: Path,
    host: str,
    instance: str = "",
    stats: ParseStats | None = None,
    *,
    parser: Parser = parse_line,
    max_line_bytes: int = LINE_MAX,
    on_reject: Callable[[int, Rejected], None] | None = None,
) -> Iterator[list[Event]]:
    """:func:`iter_file_events` in lists (one per block of about 1 MiB), for callers that batch."""
    with open(path, "rb") as f:
        fp = _FileParse(host, instance, file_identity(f.fileno()), stats, parser, max_line_bytes, on_reject)
        offset = 0
        if parser is parse_line:
            resume: int | None = None
            for item in fp.blocks(f):
                if isinstance(item, int):
                    resume = item
                    break
                yield item
            if resume is None:
                return
            offset = resume
            f.seek(offset)
        out: list[Event] = []
        for off, data, too_long in read_lines(f, max_line_bytes, offset):
            ev = fp.checked_line(off, decode_line(data), too_long)
            if ev is not None:
                out.append(ev)
                if len(out) >= 4096:
                    yield out
                    out = []
        if out:
            yield out


def iter_file_events(
    path: Path,
    host: str,
    instance: str = "",
    stats: ParseStats | None = None,
    *,
    parser: Parser = parse_line,
    max_line_bytes: int = LINE_MAX,
    on_reject: Callable[[int, Rejected], None] | None = None,
) -> Iterator[Event]:
    """Every ``07-0013`` line of a file as a wire Event, with ``id`` = (host, file identity, byte offset).

    Counts lines, events, liveness lines and rejections by kind into ``stats``. Memory is bounded by the
    block size whatever the file holds (a line longer than ``max_line_bytes`` is counted too-long).
    """
    for events in iter_file_event_lists(
        path, host, instance, stats, parser=parser, max_line_bytes=max_line_bytes, on_reject=on_reject
    ):
        yield from events


# ------------------------------------------------------------------------------ JSON output


class _JsonFile(_FileParse):
    """:func:`write_file_json`'s state: the general path of :class:`_FileParse` plus the JSON fast path."""

    def __init__(
        self,
        host: str,
        instance: str,
        file_id: FileId,
        stats: ParseStats | None,
        max_line_bytes: int,
        on_reject: Callable[[int, Rejected], None] | None,
    ) -> None:
        super().__init__(host, instance, file_id, stats, parse_line, max_line_bytes, on_reject)
        self.head = _json_encode(self.host).decode()
        self.id_head = _json_encode(self.prefix)[:-1].decode()
        self.tail = _json_encode(self.instance).decode()
        self.encode = msgspec.json.Encoder().encode

    def general(self, block: bytes, start: int, end: int, base: int, parts: list[str]) -> None:
        """Lines ``block[start:end]`` (complete, each with its newline) by the general path."""
        limit = self.max_line_bytes
        pos = start
        encode = self.encode
        for raw in block[start : end - 1].split(b"\n"):
            ev = self.checked_line(base + pos, decode_line(raw[:limit]), len(raw) > limit)
            if ev is not None:
                parts.append(encode(ev).decode())
                parts.append("\n")
            pos += len(raw) + 1

    def json_block(self, block: bytes, base: int) -> list[str]:
        """The JSON lines of the events among the complete lines ``block``, whose first is at ``base``
        (pieces of text; :func:`write_parts` writes them): :func:`_scan` with the JSON text built directly
        for the well-formed lines that need no escaping, and msgspec encoding the others."""
        parts: list[str] = []
        append = parts.append
        encode = self.encode
        head = '{"host":' + self.head + ',"ip":"'
        id_head = '","id":' + self.id_head
        tail = '","instance":' + self.tail + "}\n"
        host, instance, prefix = self.host, self.instance, self.prefix

        def take(
            s: int, _end: int, g: tuple[str, ...], u: tuple[str, datetime], ip: str, escape: bool
        ) -> None:
            raw, _sec, us, _off, client, _addr, port, reason = g
            if escape:  # JSON must escape it: msgspec does
                ts = u[1] + timedelta(0, 0, int(us)) if us != "000000" else u[1]
                ev = Event(host, ip, f"{prefix}{base + s}", ts, int(port), client, reason, raw, instance)
                append(encode(ev).decode())
                append("\n")
            elif us != "000000":
                append(
                    f'{head}{ip}{id_head}{base + s}","ts":"{u[0]}.{us}Z","port":{port},"client":"{client}",'
                    f'"reason":"{reason}","raw":"{raw}{tail}'
                )
            else:
                append(
                    f'{head}{ip}{id_head}{base + s}","ts":"{u[0]}Z","port":{port},"client":"{client}",'
                    f'"reason":"{reason}","raw":"{raw}{tail}'
                )

        def other(start: int, end: int) -> None:
            self.general(block, start, end, base, parts)

        fast = _scan(block, self.max_line_bytes, self.carry, _JSON_SAFE, take, other)
        self.stats.lines += fast
        self.stats.events += fast
        return parts


class ByteSink(Protocol):
    """Where JSON lines go: a binary file, or a wrapper around one."""

    def write(self, data: bytes, /) -> int: ...


def write_parts(out: ByteSink, parts: list[str], n: int = 64) -> None:
    """Write text pieces as UTF-8, joined a few at a time: joining a whole block's output into one string
    (megabytes of fresh memory) costs several times more than joining in small, cache-sized runs."""
    write = out.write
    for i in range(0, len(parts), n):
        write("".join(parts[i : i + n]).encode())


def write_file_json(
    path: Path,
    host: str,
    out: ByteSink,
    instance: str = "",
    stats: ParseStats | None = None,
    *,
    max_line_bytes: int = LINE_MAX,
    on_reject: Callable[[int, Rejected], None] | None = None,
) -> None:
    """Write every ``07-0013`` event of a file to ``out`` as one JSON line each: byte for byte what
    ``msgspec.json.Encoder().encode_lines`` gives for :func:`iter_file_events` (the built-in parser), which
    stays the definition; this only gets there faster (one regex scan per block of lines, cached times and
    addresses, the JSON text built directly for the lines that need no escaping)."""
    with open(path, "rb") as f:
        fp = _JsonFile(host, instance, file_identity(f.fileno()), stats, max_line_bytes, on_reject)
        resume: int | None = None
        for item in fp.chunks(f):
            if isinstance(item, int):
                resume = item
                break
            data, offset = item
            if data.endswith(b"\n"):
                write_parts(out, fp.json_block(data, offset))
            else:
                ev = fp.last_line(data, offset)
                if ev is not None:
                    out.write(fp.encode(ev) + b"\n")
        if resume is None:
            return
        f.seek(resume)
        for off, data, too_long in read_lines(f, max_line_bytes, resume):
            ev = fp.checked_line(off, decode_line(data), too_long)
            if ev is not None:
                out.write(fp.encode(ev) + b"\n")


def to_event(p: ParsedLine, host: str, instance: str, id_: str) -> Event:
    return Event(
        host=host,
        ip=p.ip,
        id=id_,
        ts=p.ts,
        port=p.port,
        client=p.client,
        reason=p.reason,
        raw=p.raw,
        instance=instance,
    )
