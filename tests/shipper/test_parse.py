"""The strict parser: hostile names, address forms, timestamps, and reading files into wire Events."""

from __future__ import annotations

import io
import ipaddress
import os
import zlib
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet2ban.contract import RAW_LINE_MAX, line_id
from shipper.parse import (
    ParsedLine,
    ParseResult,
    ParseStats,
    Rejected,
    iter_file_events,
    parse_hostport,
    parse_line,
    parse_timestamp,
    read_lines,
    write_file_json,
)

TS = "2017-12-07T16:55:49.9395590-08:00"


def amps(name: str, hostport: str, reason: str, ts: str = TS) -> str:
    return f"{ts} [26] info: 07-0013 client[{name}]({hostport}) disconnected: {reason}."


# ------------------------------------------------------------------------------------ property tests

HOSTILE_PIECES = [
    "](",
    ")",
    "(",
    "[",
    "]",
    "disconnected: auth.",
    ") disconnected: auth.",
    "](203.0.113.9:1) disconnected: auth.",
    "(198.51.100.7:44) disconnected: name in use.",
    "client[",
    "info: 07-0013 ",
    "[2001:db8::66]:1",
    "::ffff:1.2.3.4:5",
    "\t",
    "\r",
    "\x00",
    "\ufffd",
    "名前",
    "🙂",
    " ",
    ".",
    ":",
]
names = st.lists(
    st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(st.characters(exclude_characters="\n"), max_size=8)),
    max_size=12,
).map("".join)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
ports = st.integers(1, 65535)
reasons = st.sampled_from(
    ["auth", "name in use", "connection closed", "entitlement reset", "heartbeat", "slow client", "x.y"]
)


def canonical(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@st.composite
def hostports(draw: st.DrawFn) -> tuple[str, str, int]:
    """(AMPS HOST:PORT text in one of its forms, canonical ip, port)."""
    port = draw(ports)
    if draw(st.booleans()):
        a4 = draw(ipv4)
        form = draw(st.sampled_from(["v4", "mapped", "mapped-bracket"]))
        text = {"v4": f"{a4}", "mapped": f"::ffff:{a4}", "mapped-bracket": f"[::ffff:{a4}]"}[form]
        return f"{text}:{port}", str(a4), port
    a6 = draw(ipv6)
    form = draw(st.sampled_from(["bare", "bracket", "exploded", "upper"]))
    text = {
        "bare": str(a6),
        "bracket": f"[{a6}]",
        "exploded": a6.exploded,
        "upper": f"[{str(a6).upper()}]",
    }[form]
    return f"{text}:{port}", canonical(a6), port


@settings(max_examples=400, deadline=None)
@given(name=names, hp=hostports(), reason=reasons)
def test_no_client_name_changes_host_port_or_reason(name: str, hp: tuple[str, str, int], reason: str) -> None:
    text, ip, port = hp
    got = parse_line(amps(name, text, reason))
    assert isinstance(got, ParsedLine), got
    assert (got.ip, got.port, got.reason, got.client) == (ip, port, reason, name)


@settings(max_examples=200, deadline=None)
@given(name=names, reason=reasons)
def test_a_hostile_name_never_makes_a_bad_address_an_event(name: str, reason: str) -> None:
    """With AMPS's own address unusable, no name can smuggle in one of its own."""
    for bad in ("999.1.2.3:5", "10.1.2.3:0", "host.example:5", "10.1.2.3", ""):
        got = parse_line(amps(name, bad, reason))
        assert isinstance(got, Rejected), (bad, got)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_is_rejected_never_raises(text: str) -> None:
    got = parse_line(text)
    assert isinstance(got, ParsedLine | Rejected) or type(got).__name__ == "Liveness"


# ----------------------------------------------------------------------------------------- examples


def test_timestamp_is_utc_microseconds() -> None:
    assert parse_timestamp(TS) == datetime(2017, 12, 8, 0, 55, 49, 939559, tzinfo=UTC)
    assert parse_timestamp("2017-12-31T23:30:00.0000001-01:00") == datetime(2018, 1, 1, 0, 30, tzinfo=UTC)
    assert parse_timestamp("2017-12-07T16:55:49+0100").hour == 15


def test_hostport_forms() -> None:
    assert parse_hostport("10.1.2.3:51234") == ("10.1.2.3", 51234)
    assert parse_hostport("[2001:DB8::7]:50000") == ("2001:db8::7", 50000)
    assert parse_hostport("2001:db8::8:50001") == ("2001:db8::8", 50001)
    assert parse_hostport("::ffff:10.1.2.3:9") == ("10.1.2.3", 9)
    assert isinstance(parse_hostport("[::1]50000"), Rejected)


def test_long_and_crlf_lines() -> None:
    line = amps("n" * 5000, "10.1.2.3:5", "auth")
    got = parse_line(line)
    assert isinstance(got, Rejected) and got.kind == "too-long"
    got = parse_line(line, max_len=10_000)
    assert isinstance(got, ParsedLine) and len(got.raw) == RAW_LINE_MAX
    got = parse_line(amps("n", "10.1.2.3:5", "auth") + "\r\n")
    assert isinstance(got, ParsedLine) and got.reason == "auth" and not got.raw.endswith("\r")


def test_iter_file_events_ids_stats_and_bounds(tmp_path: Path) -> None:
    path = tmp_path / "ban.log"
    lines = [
        amps("a", "10.0.0.1:1", "auth").encode() + b"\r\n",
        b"2017-12-07T16:55:49.9395590-08:00 [1] info: 00-0015 alive\n",
        b"garbage\n",
        amps("b" * 9000, "10.0.0.2:1", "auth").encode() + b"\n",
        b"\xff\xfe\x00\x00\x00\n",
        amps("c@", "10.0.0.3:2", "name in use").encode().replace(b"@", b"\xff") + b"\n",
        amps("d", "10.0.0.4:3", "auth").encode(),  # last line, no newline
    ]
    path.write_bytes(b"".join(lines))
    st_ = os.stat(path)
    stats = ParseStats()
    events = list(iter_file_events(path, "h1", "amps", stats))
    assert [e.ip for e in events] == ["10.0.0.1", "10.0.0.3", "10.0.0.4"]
    offsets = [0, sum(map(len, lines[:5])), sum(map(len, lines[:6]))]
    file_id = f"{st_.st_dev}-{st_.st_ino}-{zlib.crc32(lines[0][:-1]):08x}"
    assert [e.id for e in events] == [line_id("h1", file_id, o) for o in offsets]
    assert all(e.host == "h1" and e.instance == "amps" for e in events)
    assert events[1].client == "c\ufffd"
    assert (stats.lines, stats.events, stats.liveness) == (7, 3, 1)
    assert stats.rejected == {"malformed": 1, "too-long": 1, "binary": 1}


# ------------------------------------------------------- the file reader's fast path equals parse_line

file_lines = st.one_of(
    st.builds(
        lambda name, hp, reason, frac, crlf: (
            amps(name, hp[0], reason, f"2017-12-07T16:55:49{frac}-08:00") + ("\r" if crlf else "")
        ),
        names.filter(lambda s: "\n" not in s and "\r" not in s),
        hostports(),
        reasons,
        st.sampled_from(["", ".1", ".9395590", ".123456789"]),
        st.booleans(),
    ),
    st.sampled_from(
        [
            amps("x", "10.1.2.3:70000", "auth"),
            amps("x", "10.1.2.3:0", "auth"),
            amps("x", "999.1.2.3:5", "auth"),
            amps("x", "[::1:5", "auth"),
            amps("a" * 300, "10.1.2.3:5", "auth"),
            amps("x", "10.1.2.3:5", "auth") + " junk",
            "2017-12-07T16:55:49.1-08:00 [1] info: 00-0015 alive",
            "2017-12-07T16:55:49.1+25:00 [1] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
            "2017-12-07T16:55:49.1-08:00 [1] info: 07-0013 client[a name cut by a newline",
            "",
            "garbage",
        ]
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(file_lines, max_size=40), st.booleans())
def test_file_reader_agrees_with_parse_line_line_by_line(lines: list[str], last_newline: bool) -> None:
    import tempfile

    from shipper.parse import SUSPECT_MARK, Continuation, decode_line, read_lines

    data = "\n".join(lines).encode("utf-8", "surrogatepass") + (b"\n" if last_newline and lines else b"")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.log"
        path.write_bytes(data)
        stats = ParseStats()
        got = [
            (e.id.rsplit(":", 1)[1], e.ip, e.port, e.client, e.reason, e.ts, e.raw)
            for e in iter_file_events(path, "h", "", stats, max_line_bytes=256)
        ]
        want = []
        ref = ParseStats()
        carry = Continuation()  # lines after an unterminated 07-0013 record are suspect (issue 20)
        with open(path, "rb") as f:
            for off, raw, too_long in read_lines(f, 256):
                text = decode_line(raw)
                if carry.suspect(text, too_long):
                    r = parse_line(SUSPECT_MARK + text)
                else:
                    r = Rejected("too-long") if too_long else parse_line(text, 256)
                ref.count(r)
                if isinstance(r, ParsedLine):
                    want.append((str(off), r.ip, r.port, r.client, r.reason, r.ts, r.raw))
    assert got == want
    assert (stats.lines, stats.events, stats.liveness, stats.rejected) == (
        ref.lines,
        ref.events,
        ref.liveness,
        ref.rejected,
    )


def test_file_reader_fast_path_on_a_plain_ascii_log(tmp_path: Path) -> None:
    from shipper.parse import decode_line, read_lines

    rows = []
    for i in range(3000):
        ts = f"2026-11-25T06:{i // 600:02d}:{i // 10 % 60:02d}.{i:07d}+01:00"
        ip = f"10.0.{i % 7}.{i % 5 + 1}" if i % 3 else f"[2001:db8::{i % 9:x}]"
        rows.append(
            f"{ts} [2] info: 07-0013 client[c{i}]({ip}:{i + 1}) disconnected: {'auth' if i % 2 else 'x y'}."
        )
        if i % 97 == 0:
            rows.append(f"{ts} [2] info: 00-0015 alive")
        if i % 101 == 0:
            rows.append(f"{ts} [2] info: 07-0013 client[c{i}](10.0.0.1:99999) disconnected: auth.")
    path = tmp_path / "plain.log"
    path.write_bytes(("\n".join(rows) + "\n").encode())
    got = [
        (e.id.rsplit(":", 1)[1], e.ip, e.port, e.client, e.reason, e.ts, e.raw)
        for e in iter_file_events(path, "h")
    ]
    with open(path, "rb") as f:
        want = [
            (str(off), r.ip, r.port, r.client, r.reason, r.ts, r.raw)
            for off, raw, _ in read_lines(f)
            if isinstance(r := parse_line(decode_line(raw)), ParsedLine)
        ]
    assert got == want and len(got) == 3000


# ------------------------------------------------------------------- line bounds, at and past the bound


@pytest.mark.parametrize("json", [False, True])
def test_a_last_line_without_newline_at_the_bound_is_read_one_byte_over_is_too_long(
    tmp_path: Path, json: bool
) -> None:
    line = amps("n", "10.1.2.3:5", "auth").encode()
    for extra, events, too_long in ((b"", 1, 0), (b" ", 0, 1)):
        path = tmp_path / "ban.log"
        path.write_bytes(amps("a", "10.0.0.1:1", "auth").encode() + b"\n" + line + extra)  # no newline
        stats = ParseStats()
        if json:
            out = io.BytesIO()
            write_file_json(path, "h1", out, "", stats, max_line_bytes=len(line))
            got = [msgspec.json.decode(x)["ip"] for x in out.getvalue().splitlines()]
        else:
            got = [e.ip for e in iter_file_events(path, "h1", "", stats, max_line_bytes=len(line))]
        assert got == ["10.0.0.1"] + ["10.1.2.3"] * events
        assert stats.rejected == ({"too-long": 1} if too_long else {})


class _Reads(io.BytesIO):
    """A file that remembers how much each ``readline`` asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int | None] = []

    def readline(self, size: int | None = -1, /) -> bytes:
        self.asked.append(size)
        data = super().readline(size)
        # a reader that asks again after the end would ask forever
        assert data or self.asked.count(size) < 10_000, "read past the end of the file again and again"
        return data


def test_read_lines_bounds_what_it_reads_of_a_long_line() -> None:
    f = _Reads(b"x" * 10 + b"\n" + b"y" * 200_000 + b"\n" + b"z" * 10)
    assert list(read_lines(f, max_bytes=10)) == [
        (0, b"x" * 10, False),
        (11, b"y" * 10, True),
        (200_012, b"z" * 10, False),
    ]
    assert all(size is not None and 0 < size <= 65_536 for size in f.asked)


def test_hostport_rejections_say_why_in_a_bounded_detail() -> None:
    long = "x" * 100
    assert parse_hostport("[2001:db8::1" + long) == Rejected(
        "bad-address", f"bracketed address without ]:PORT: {('[2001:db8::1' + long)[:64]!r}"
    )
    assert parse_hostport("host" + long) == Rejected("bad-port", f"no port in {('host' + long)[:64]!r}")
    # a bracketed address ends at the first "]:": what follows is the port, whatever it holds
    assert parse_hostport("[2001:db8::1]:5]:6") == Rejected("bad-port", "bad port '5]:6'")


def test_address_and_port_rejections_say_why() -> None:
    assert parse_hostport("10.1.2.3:" + "9" * 20) == Rejected("bad-port", f"bad port {'9' * 16!r}")
    assert parse_hostport("10.1.2.3:70000") == Rejected("bad-port", "port 70000 out of range")
    assert parse_hostport("10.1.2.3:0") == Rejected("bad-port", "port 0 out of range")
    assert parse_hostport("10.1.2.3:65536") == Rejected("bad-port", "port 65536 out of range")
    assert parse_hostport("10.1.2.3:65535") == ("10.1.2.3", 65535)
    assert parse_hostport("10.1.2.3:1") == ("10.1.2.3", 1)
    # an address with blanks around it is not what AMPS writes (the contract's parser would strip them)
    assert parse_hostport(" 10.1.2.3:5") == Rejected("bad-address", "not an IP address: ' 10.1.2.3'")
    assert parse_hostport("[2001:db8::1 ]:5") == Rejected("bad-address", "not an IP address: '2001:db8::1 '")
    bad = "999.1.2.3" + "9" * 100
    assert parse_hostport(bad + ":5") == Rejected("bad-address", f"not an IP address: {bad[:64]!r}")


AT = "2017-12-07T16:55:49.9395590"
EVENT = " [1] info: 07-0013 client[x](1.2.3.4:5) disconnected: auth."


@pytest.mark.parametrize(
    ("line", "kind", "detail"),
    [
        ("", "empty", "empty line"),
        (" \t ", "empty", "empty line"),
        ("a\x00bc", "binary", "binary data"),
        ("a\x01\x02c", "binary", "binary data"),  # half the characters are control characters
        ("\ufffd\ufffdab", "binary", "binary data"),
        ("a\x01bc", "malformed", "not an AMPS log line (TIMESTAMP [THREAD] LEVEL: CODE ...)"),  # a quarter
        (
            "\t\t\ta",
            "malformed",
            "not an AMPS log line (TIMESTAMP [THREAD] LEVEL: CODE ...)",
        ),  # tabs are text
        (
            "a    b",
            "malformed",
            "not an AMPS log line (TIMESTAMP [THREAD] LEVEL: CODE ...)",
        ),  # spaces are text
        # only the first 256 characters are looked at: 64 bad ones there are not more than a quarter
        (
            "\x01" * 64 + "a" * 192 + "\x01" * 10,
            "malformed",
            "not an AMPS log line (TIMESTAMP [THREAD] LEVEL: CODE ...)",
        ),
        ("a" * 256 + "\x01" * 300, "malformed", "not an AMPS log line (TIMESTAMP [THREAD] LEVEL: CODE ...)"),
        (f"{AT}-08:00 [1] info: 00-0016 x", "not-07-0013", "message 00-0016"),
        ("bad [1] info: 00-0015 alive", "bad-timestamp", "not an ISO 8601 time with offset: 'bad'"),
        ("bad" + EVENT, "bad-timestamp", "not an ISO 8601 time with offset: 'bad'"),
        ("t" * 60 + EVENT, "bad-timestamp", f"not an ISO 8601 time with offset: {'t' * 48!r}"),
        (f"{AT}+24:00" + EVENT, "bad-timestamp", f"bad UTC offset in '{AT}+24:00'"),
        (f"{AT}+23:60" + EVENT, "bad-timestamp", f"bad UTC offset in '{AT}+23:60'"),
        (
            "2017-13-07T16:55:49.9395590+00:00" + EVENT,
            "bad-timestamp",
            "bad time '2017-13-07T16:55:49.9395590+00:00': month must be in 1..12",
        ),
        (
            f"{AT}-08:00 [1] info: 07-0013",
            "malformed",
            "07-0013 without client[NAME](HOST:PORT) disconnected: REASON.",
        ),
        (
            f"{AT}-08:00 [1] info: 07-0013 hi",
            "malformed",
            "07-0013 without client[NAME](HOST:PORT) disconnected: REASON.",
        ),
        (f"{AT}-08:00" + EVENT.replace("auth", ""), "malformed", "empty disconnect reason"),
        (
            "\x00suspect\x00" + f"{AT}-08:00" + EVENT,
            "suspect",
            "follows an unterminated 07-0013 record (a client name with a newline?)",
        ),
    ],
)
def test_each_rejection_has_its_kind_and_words(line: str, kind: str, detail: str) -> None:
    assert parse_line(line) == Rejected(kind, detail)


def test_offsets_up_to_23_59_and_the_bound_in_characters() -> None:
    got = parse_line(f"{AT}+23:59" + EVENT)
    assert isinstance(got, ParsedLine) and got.ts == datetime(2017, 12, 6, 16, 56, 49, 939559, tzinfo=UTC)
    assert parse_line("x" * 20, max_len=10) == Rejected("too-long", "20 characters (bound 10)")
    assert parse_line("x" * 10, max_len=10) == Rejected(
        "malformed", "not an AMPS log line (TIMESTAMP [THREAD] LEVEL: CODE ...)"
    )


@pytest.mark.parametrize("reader", ["events", "json"])
def test_the_reader_reports_each_rejected_line_with_its_offset_and_words(tmp_path: Path, reader: str) -> None:
    long = amps("n" * 200, "10.1.2.3:5", "auth")
    path = tmp_path / "ban.log"
    path.write_text(f"garbage\n{long}\n{amps('a', '10.1.2.3:5', 'auth')}\n")
    got: list[tuple[int, Rejected]] = []

    def on_reject(off: int, r: Rejected) -> None:
        got.append((off, r))

    if reader == "events":
        list(iter_file_events(path, "h1", max_line_bytes=150, on_reject=on_reject))
    else:
        write_file_json(path, "h1", io.BytesIO(), max_line_bytes=150, on_reject=on_reject)
    assert got == [
        (0, Rejected("malformed", "not an AMPS log line (TIMESTAMP [THREAD] LEVEL: CODE ...)")),
        (8, Rejected("too-long", "line longer than 150 bytes")),
    ]


@pytest.mark.parametrize("reader", ["events", "json"])
def test_the_file_readers_read_in_bounded_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    import shipper.parse as parse_mod

    path = tmp_path / "ban.log"
    path.write_text(amps("a", "10.1.2.3:5", "auth") + "\n" + "x" * 300 + "\n")
    asked: list[int | None] = []

    class Recording(io.FileIO):
        def read(self, size: int | None = -1, /) -> bytes:
            asked.append(size)
            return super().read(size)

    monkeypatch.setattr(parse_mod, "open", lambda p, mode: Recording(p, "r"), raising=False)
    monkeypatch.setattr(parse_mod, "BLOCK", 64)
    if reader == "events":
        assert [e.ip for e in iter_file_events(path, "h1")] == ["10.1.2.3"]
    else:
        out = io.BytesIO()
        write_file_json(path, "h1", out)
        assert len(out.getvalue().splitlines()) == 1
    assert asked and all(size == 64 for size in asked)


def test_a_custom_parser_decides_every_line_in_lists_of_at_most_4096(tmp_path: Path) -> None:
    from shipper.parse import iter_file_event_lists

    path = tmp_path / "ban.log"
    path.write_text("".join(amps("a", f"10.1.{i // 256}.{i % 256}:5", "auth") + "\n" for i in range(5000)))
    # the built-in parser: every line an event, no instance unless given
    lists = list(iter_file_event_lists(path, "h1"))
    assert sum(map(len, lists)) == 5000 and lists[0][0].instance == ""
    # a parser of one's own sees every line (the block scanner is parse_line's alone)
    seen: list[str] = []

    def refuse(text: str) -> Rejected:
        seen.append(text)
        return Rejected("malformed", "not mine")

    assert list(iter_file_event_lists(path, "h1", parser=refuse)) == []
    assert list(iter_file_events(path, "h1", parser=refuse)) == []
    assert len(seen) == 10_000

    def mine(text: str) -> ParseResult:
        return parse_line(text)

    lists = list(iter_file_event_lists(path, "h1", parser=mine))
    assert sum(map(len, lists)) == 5000 and max(map(len, lists)) <= 4096


def test_a_continuation_notes_an_unterminated_record_by_default() -> None:
    from shipper.parse import Continuation

    head = "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[cut"
    c = Continuation()
    assert not c.suspect(head)  # the record itself is not suspect; what follows it is
    assert c.suspect(amps("z", "203.0.113.66:1", "auth"))
    assert not c.suspect(amps("ok", "198.51.100.2:5", "auth"))  # the tail ended the suspicion


def test_times_that_share_all_but_the_last_digit_of_their_second_stay_apart() -> None:
    # consecutive lines share their second, so the second (without its fraction) is cached: by all of it
    for sec in ("49", "41", "40", "04"):
        for frac in ("", ".5"):
            got = parse_timestamp(f"2017-12-07T16:55:{sec}{frac}-08:00")
            assert got == datetime(2017, 12, 8, 0, 55, int(sec), 500000 if frac else 0, tzinfo=UTC)


def test_z_and_signed_offsets() -> None:
    utc = datetime(2017, 12, 7, 16, 55, 49, 939559, tzinfo=UTC)
    assert parse_timestamp("2017-12-07T16:55:49.9395590Z") == utc
    assert parse_timestamp("2017-12-07T16:55:49.9395590+00:00") == utc
    assert parse_timestamp("2017-12-07T17:25:49.9395590+00:30") == utc
    assert parse_timestamp("2017-12-07T16:25:49.9395590-0030") == utc


def test_parse_line_takes_one_line_and_one_line_ending_only() -> None:
    line = amps("n", "10.1.2.3:5", "auth")
    got = parse_line(line + "\n")
    assert isinstance(got, ParsedLine) and got.raw == line and got.reason == "auth"
    # a second line inside the text is no event of it; nor is a line with a CR left after its ending
    assert parse_line("garbage\n" + line) == Rejected(
        "malformed", "not an AMPS log line (TIMESTAMP [THREAD] LEVEL: CODE ...)"
    )
    for text in (line + "\r\r\n", line + "\r\r"):
        assert parse_line(text) == Rejected(
            "malformed", "07-0013 without client[NAME](HOST:PORT) disconnected: REASON."
        ), repr(text)
