"""The block fast paths (write_file_json for ``fleet2ban parse``, scan_block for the Event readers) give
exactly what the careful path gives.

The definition of the output is msgspec's encoding of the wire Events that :func:`parse_line` gives line by
line; the fast path (one regex scan per block, cached times and addresses, JSON built as text) must give
the same bytes and the same counts for any file, hostile or not.
"""

from __future__ import annotations

import io
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shipper.parse as parse_mod
from fleet2ban.contract import RAW_LINE_MAX
from shipper.parse import ParseResult, ParseStats, Rejected, iter_file_events, parse_line, write_file_json

DATA = Path(__file__).parents[1] / "data"


def careful(text: str) -> ParseResult:
    return parse_line(text)


def reference(
    path: Path, host: str, instance: str, max_line_bytes: int
) -> tuple[bytes, ParseStats, list[int]]:
    """The careful path: line by line through parse_line (a parser that is not ``parse_line`` itself
    makes iter_file_events read line by line), encoded by msgspec."""
    stats = ParseStats()
    rejects: list[int] = []
    events = list(
        iter_file_events(
            path,
            host,
            instance,
            stats,
            parser=careful,
            max_line_bytes=max_line_bytes,
            on_reject=lambda off, r: rejects.append(off),
        )
    )
    return msgspec.json.Encoder().encode_lines(events), stats, rejects


def fast(path: Path, host: str, instance: str, max_line_bytes: int) -> tuple[bytes, ParseStats, list[int]]:
    stats = ParseStats()
    rejects: list[int] = []
    out = io.BytesIO()
    write_file_json(
        path,
        host,
        out,
        instance,
        stats,
        max_line_bytes=max_line_bytes,
        on_reject=lambda off, r: rejects.append(off),
    )
    return out.getvalue(), stats, rejects


def assert_same(path: Path, host: str = "h1", instance: str = "", max_line_bytes: int = 4096) -> bytes:
    got, got_stats, got_rej = fast(path, host, instance, max_line_bytes)
    want, want_stats, want_rej = reference(path, host, instance, max_line_bytes)
    assert got.decode("utf-8").splitlines() == want.decode("utf-8").splitlines()
    assert got == want
    assert (got_stats.lines, got_stats.events, got_stats.liveness, got_stats.rejected) == (
        want_stats.lines,
        want_stats.events,
        want_stats.liveness,
        want_stats.rejected,
    )
    assert got_rej == want_rej
    # the Event path (scan_block: replay, the shipper) agrees too
    stats = ParseStats()
    events = list(iter_file_events(path, host, instance, stats, max_line_bytes=max_line_bytes))
    assert msgspec.json.Encoder().encode_lines(events) == want
    assert (stats.lines, stats.events, stats.liveness, stats.rejected) == (
        want_stats.lines,
        want_stats.events,
        want_stats.liveness,
        want_stats.rejected,
    )
    return got


# ------------------------------------------------------------------------------------------ examples


def test_sample_log_is_written_exactly_as_the_careful_path_writes_it() -> None:
    out = assert_same(DATA / "amps-ban.log", host="h9", instance="amps-1")
    assert out.count(b"\n") > 10


def test_plain_amps_log_takes_the_fast_path_and_matches(tmp_path: Path) -> None:
    rows = []
    for i in range(4000):
        off = ["-08:00", "+05:30", "+00:00", "-00:00"][i // 1000]
        ts = f"2026-12-31T23:{59 - i // 600 % 2:02d}:{i // 10 % 60:02d}.{i * 7919 % 10_000_000:07d}{off}"
        ip = [
            f"10.{i % 3}.{i % 7}.{i % 5 + 1}",
            f"[2001:db8::{i % 9:x}]",
            f"2001:db8::{i % 11:x}",
            f"::ffff:10.0.0.{i % 4 + 1}",
            f"[::FFFF:10.0.0.{i % 4 + 1}]",
            "010.1.2.3",
        ][i % 6]
        rows.append(
            f"{ts} [{i % 40}] info: 07-0013 client[c{i}]({ip}:{i % 65535 + 1}) disconnected:"
            f" {['auth', 'name in use', 'slow client', 'x.y'][i % 4]}."
        )
        if i % 50 == 0:
            rows.append(f"{ts} [1] info: 00-0015 AMPS is alive.")
        if i % 7 == 0:
            rows[-1] += "\r"
    path = tmp_path / "amps.log"
    path.write_bytes(("\n".join(rows) + "\n").encode())
    out = assert_same(path, host='h"\\1', instance="i\t1")
    assert out.count(b"\n") == 4000 - 4000 // 6  # 010.1.2.3 is no address
    with open(path, "rb") as f:
        ident = parse_mod.file_identity(f.fileno())
    jf = parse_mod._JsonFile('h"\\1', "i\t1", ident, None, 4096, None)
    data = path.read_bytes()
    buf = io.BytesIO()
    parse_mod.write_parts(buf, jf.json_block(data, 0), n=7)
    assert buf.getvalue() == out
    assert jf.stats.lines == len(rows) and jf.stats.events == out.count(b"\n")


HOSTILE_LINES = [
    # the seed's regex is fooled by this one; the event is 10.1.2.3's
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](203.0.113.9:1) disconnected: auth.]"
    "(10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: au(th.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: .",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](10.1.2.3:65536) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](10.1.2.3:65535) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](10.1.2.3:01) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.\r\r",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.x",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x]([::1]:5]:6) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x]([::1):5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](fe80::1%eth0:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x]( 10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](:5) disconnected: auth.",
    "2017-12-07T16:55:49.0000000-08:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.0000009-08:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-25:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:61 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "2017-02-30T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590+0800 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590Z [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "0001-01-01T00:00:00.1234567+01:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "9999-12-31T23:59:59.1234567-01:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [2 6] info: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] warning: 07-0013 client[x](10.1.2.3:5) disconnected: auth.",
    '2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[a"b\\c\x7f](10.1.2.3:5) disconnected: auth.',
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[名前\x00\t](10.1.2.3:5) disconnected: auth.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[x](10.1.2.3:5) disconnected: ｓlow.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client["
    + "n" * 600
    + "](10.1.2.3:5) disconnected: a.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client["
    + "n" * 5000
    + "](10.1.2.3:5) disconnected: a.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 00-0015 AMPS is alive.",
    "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0014 something else",
    "",
    "\x00\x01\x02\x03",
    "garbage",
]


@pytest.mark.parametrize("max_line_bytes", [4096, 300, 64])
@pytest.mark.parametrize("block", [1 << 20, 97])
def test_hostile_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_line_bytes: int, block: int
) -> None:
    monkeypatch.setattr(parse_mod, "BLOCK", block)
    path = tmp_path / "x.log"
    data = "\n".join(HOSTILE_LINES * 3).encode("utf-8") + b"\n\xff\xfe invalid utf-8\nno newline at the end"
    path.write_bytes(data)
    assert_same(path, max_line_bytes=max_line_bytes)


def test_a_line_longer_than_a_block_goes_on_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parse_mod, "BLOCK", 128)
    path = tmp_path / "x.log"
    lines = [*HOSTILE_LINES[:3], "z" * 1000, *HOSTILE_LINES[:3]]
    path.write_bytes("\n".join(lines).encode() + b"\n")
    out = assert_same(path, max_line_bytes=256)
    assert out.count(b"\n") == 2


# -------------------------------------------------------------------------------------- properties

PIECES = [
    "](",
    ")",
    "(",
    "[",
    "]",
    ":",
    ".",
    '"',
    "\\",
    "\t",
    "\r",
    "\x00",
    "\x7f",
    "é",
    "🙂",
    ") disconnected: auth.",
    "](203.0.113.9:1) disconnected: auth.",
    " ",
]
pieces = st.lists(
    st.one_of(st.sampled_from(PIECES), st.text(st.characters(exclude_characters="\n"), max_size=6)),
    max_size=8,
).map("".join)
plain = st.text("abcxyz -_.", max_size=12)
hosts = st.sampled_from(
    [
        "10.1.2.3",
        "10.1.2.3",
        "255.255.255.255",
        "0.0.0.0",
        "[2001:db8::7]",
        "2001:db8::8",
        "2001:DB8:0:0:0:0:0:9",
        "::ffff:10.9.8.7",
        "[::ffff:10.9.8.7]",
        "::1",
        "[::]",
        "010.1.2.3",
        "999.1.2.3",
        "[2001:db8::7",
        "host.example",
        "",
        "(",
        "10.1.2.3 ",
    ]
)
port_texts = st.one_of(
    st.integers(1, 65535).map(str),
    st.sampled_from(["0", "00080", "65536", "99999", "123456", "", "８０", "1_0"]),
)
times = st.builds(
    lambda d, frac, off: f"{d}{frac}{off}",
    st.sampled_from(
        ["2017-12-07T16:55:49", "2026-01-01T00:00:00", "2016-02-29T23:59:59", "2017-13-01T00:00:00"]
    ),
    st.sampled_from([".9395590", ".0000000", ".0000010", ".1234567", ".1", ".123456789", ""]),
    st.sampled_from(["-08:00", "+05:30", "+00:00", "Z", "-0800", "+24:00", "-08:60"]),
)
event_lines = st.builds(
    lambda ts, thread, level, name, host, port, reason, end: (
        f"{ts} [{thread}] {level}: 07-0013 client[{name}]({host}:{port}) disconnected: {reason}.{end}"
    ),
    times,
    st.sampled_from(["26", "1", "", "a b"]),
    st.sampled_from(["info", "info", "warning"]),
    st.one_of(plain, pieces),
    hosts,
    port_texts,
    st.one_of(st.sampled_from(["auth", "name in use", "x.y", ""]), pieces),
    st.sampled_from(["", "", "\r", "\r\r", " ", "x"]),
)
other_lines = st.sampled_from([*HOSTILE_LINES[-6:], "\r", " " * 10])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(event_lines, event_lines, other_lines, pieces), max_size=30),
    st.booleans(),
    st.sampled_from([4096, 200, 80]),
    st.sampled_from([1 << 20, 64]),
)
def test_fast_json_equals_the_careful_path(
    lines: list[str], last_newline: bool, limit: int, block: int
) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass") + (b"\n" if last_newline and lines else b"")
    old = parse_mod.BLOCK
    parse_mod.BLOCK = block
    try:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "x.log"
            path.write_bytes(data)
            assert_same(path, host="h", instance="amps", max_line_bytes=limit)
    finally:
        parse_mod.BLOCK = old


def test_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parse_mod, "_CACHE_MAX", 8)
    for i in range(50):
        parse_mod._fast_ip_of(f"10.0.0.{i}")
        parse_mod._utc_of(f"2017-12-07T16:55:{i % 60:02d}", "-08:00")
    assert len(parse_mod._fast_ip) <= 8 and len(parse_mod._utc) <= 8
    assert parse_mod._fast_ip_of("10.0.0.1") == "10.0.0.1"
    assert parse_mod._fast_ip_of("[::ffff:10.0.0.1]") == "10.0.0.1"
    assert parse_mod._fast_ip_of("[::1]:5]") is None
    got = parse_mod._utc_of("2017-12-07T16:55:49", "-08:00")
    assert got is not None and got[0] == "2017-12-08T00:55:49"
    assert got[1] == datetime(2017, 12, 8, 0, 55, 49, tzinfo=UTC)
    assert parse_mod._utc_of("2017-12-07T16:55:49", "-08:61") is None
    assert isinstance(parse_line("x"), Rejected)


@pytest.mark.timeout(30)  # a search that stops advancing never ends: fail, not hang (it takes milliseconds)
@pytest.mark.parametrize("allowed", [parse_mod._ASCII, parse_mod._JSON_SAFE])
@pytest.mark.parametrize("many", [False, True])
def test_lines_with_other_bytes_are_found_by_either_way(allowed: bytes, many: bool) -> None:
    rows = [
        b"plain",
        b"cr at the end\r",
        b"cr\rinside",
        "caf\u00e9".encode(),
        b'a "quote"',
        b"tab\there",
        b"",
    ]
    rows = rows * (30 if many else 1)
    block = b"\n".join(rows) + b"\n"
    starts, pos = [], 0
    for row in rows:
        body = row[:-1] if row.endswith(b"\r") else row
        if body.translate(None, allowed):
            starts.append(pos)
        pos += len(row) + 1
    got = parse_mod._lines_with_others(block, allowed)
    assert sorted(got or ()) == starts
    assert parse_mod._lines_with_others(b"plain\nlines\r\n", allowed) is None
    assert parse_mod._lines_with_others(b"\n\xff\n", allowed) == {1}  # after an empty first line
    # the very first byte of the block, and a line whose odd byte is its first
    assert parse_mod._lines_with_others(b"\xffa\nplain\n\xffb\n" * (30 if many else 1), allowed) == {
        i * 12 + d for i in range(30 if many else 1) for d in (0, 9)
    }


@pytest.mark.parametrize("limit", [100, 101, 102])
def test_a_line_at_the_bound_counts_its_cr_and_its_bytes(tmp_path: Path, limit: int) -> None:
    head = "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client["
    tail = "](10.1.2.3:5) disconnected: auth."
    ascii_line = head + "n" * (100 - len(head) - len(tail)) + tail
    utf8_line = head + "é" * (50 - len(head) // 2 - len(tail) // 2) + tail
    assert len(ascii_line) == 100
    path = tmp_path / "x.log"
    path.write_bytes(f"{ascii_line}\r\n{ascii_line}\n{utf8_line}\n{utf8_line}\r\n".encode())
    assert_same(path, max_line_bytes=limit)


@pytest.mark.parametrize("extra", [0, 1])
def test_a_general_path_line_at_the_bound_is_an_event_one_byte_over_is_too_long(
    tmp_path: Path, extra: int
) -> None:
    # a "Z" time is not the fast path's form: the general path takes these lines
    head = "2017-12-07T16:55:49.939559Z [26] info: 07-0013 client["
    tail = "](10.1.2.3:5) disconnected: auth."
    line = head + "n" * (100 + extra - len(head) - len(tail)) + tail
    path = tmp_path / "x.log"
    path.write_bytes(f"{line}\n{line}\n".encode())
    got = assert_same(path, max_line_bytes=100)
    assert len(got.splitlines()) == (2 if extra == 0 else 0)


def test_without_an_instance_the_events_name_none(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(
        b"2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[n](10.1.2.3:5) disconnected: auth.\n"
    )
    out = io.BytesIO()
    write_file_json(path, "h1", out)
    (event,) = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    assert event["instance"] == "" and event["host"] == "h1" and event["ip"] == "10.1.2.3"
    (ev,) = iter_file_events(path, "h1")
    assert ev.instance == ""


def test_a_well_formed_line_longer_than_a_raw_line_is_cut_on_every_path(tmp_path: Path) -> None:
    line = f"2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[{'n' * 600}](10.1.2.3:5) disconnected: auth."
    path = tmp_path / "x.log"
    path.write_bytes(f"{line}\n".encode())
    assert_same(path)
    (ev,) = iter_file_events(path, "h1")
    assert ev.raw == line[:RAW_LINE_MAX] and ev.client == "n" * 600
