"""The tailer: partial lines, rollovers both ways, long lines, checkpoints (no Kafka)."""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

from fleet2ban.waiting import wait_for
from shipper.fileid import FileId
from shipper.tail import Checkpoint, Tailer, TailLine, Waker, load_checkpoint, save_checkpoint


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def read_all(t: Tailer, want: int, deadline_s: float = 5.0) -> list[TailLine]:
    """The lines the tailer gives until there are ``want`` of them (bounded)."""
    out: list[TailLine] = []

    def enough() -> bool:
        out.extend(t.read_lines())
        return len(out) >= want

    wait_for(enough, deadline_s, f"{want} lines from the tailer", every=0.01)
    return out


def test_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"one\ntw")
    t = Tailer(p, from_start=True)
    assert [ln.data for ln in t.read_lines()] == [b"one"]
    assert t.read_lines() == [] and t.position[1] == 4
    append(p, b"o\nthr")
    got = t.read_lines()
    assert [(ln.data, ln.offset, ln.end) for ln in got] == [(b"two", 4, 8)]
    append(p, b"ee\n")
    assert [ln.data for ln in t.read_lines()] == [b"three"]


def test_starts_at_the_end_without_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"old\nold2\npart")
    t = Tailer(p)
    assert t.read_lines() == []
    append(p, b"ial\nnew\n")
    assert [ln.data for ln in t.read_lines()] == [b"partial", b"new"]


def test_rename_and_recreate(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"a1\n")
    t = Tailer(p, from_start=True)
    assert [ln.data for ln in t.read_lines()] == [b"a1"]
    append(p, b"a2\n")
    os.rename(p, tmp_path / "ban.log.1")
    append(tmp_path / "ban.log.1", b"a3\n")  # the writer finishes the old file
    p.write_bytes(b"b1\n")
    got = read_all(t, want=3)
    assert [ln.data for ln in got] == [b"a2", b"a3", b"b1"]
    assert got[0].seq == got[1].seq != got[2].seq and got[2].offset == 0
    assert t.rotations == 1


def test_lag_counts_a_file_rotated_in_before_any_read_noticed_it(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"a1\n")
    t = Tailer(p, from_start=True)
    assert [ln.data for ln in t.read_lines()] == [b"a1"] and t.lag_bytes() == 0
    os.rename(p, tmp_path / "ban.log.1")
    p.write_bytes(b"b1\nb2\n")
    # no read since the rename: the lines on the path are still to read (copytruncate waits on this)
    assert t.lag_bytes() == 6
    assert [ln.data for ln in read_all(t, want=2)] == [b"b1", b"b2"]
    assert t.lag_bytes() == 0


def test_rotation_with_a_partial_last_line_takes_it_after_the_grace(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"a1\na2-no-newline")
    t = Tailer(p, from_start=True, rotate_grace_s=0.2)
    assert [ln.data for ln in t.read_lines()] == [b"a1"]
    os.rename(p, tmp_path / "ban.log.1")
    p.write_bytes(b"b1\n")
    got = read_all(t, want=2)
    assert [ln.data for ln in got] == [b"a2-no-newline", b"b1"]


def test_truncate_in_place(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"first line of the old generation\n")
    t = Tailer(p, from_start=True)
    first = t.read_lines()
    with open(p, "r+b") as f:
        f.truncate(0)
    append(p, b"n1\n")
    got = read_all(t, want=1)
    assert [ln.data for ln in got] == [b"n1"] and got[0].offset == 0
    assert got[0].file_id != first[0].file_id  # same inode, new generation: ids cannot collide
    assert t.truncations == 1


def test_too_long_line_is_cut_and_memory_bounded(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"ok\n" + b"x" * 300)
    t = Tailer(p, from_start=True, max_line_bytes=128)
    assert [ln.data for ln in t.read_lines()] == [b"ok"]
    append(p, b"y" * 5000)
    assert t.read_lines() == []
    assert t.position == (t.position[0], 3)
    append(p, b"z\nafter\n")
    got = t.read_lines()
    assert [(len(ln.data), ln.too_long, ln.offset, ln.end) for ln in got] == [
        (128, True, 3, 5305),
        (5, False, 5305, 5311),
    ]


def test_checkpoint_resume_and_rotation_while_stopped(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"l1\nl2\n")
    t = Tailer(p, from_start=True)
    lines = t.read_lines()
    path, dev, ino = t.identity(lines[0].seq)  # type: ignore[misc]
    cp = Checkpoint(path, dev, ino, lines[0].file_id.fp, lines[0].end)
    t.close()
    save_checkpoint(tmp_path / "cp", cp)
    assert load_checkpoint(tmp_path / "cp") == cp
    # resume in the same file
    append(p, b"l3\n")
    t2 = Tailer(p, load_checkpoint(tmp_path / "cp"))
    assert [ln.data for ln in t2.read_lines()] == [b"l2", b"l3"]
    t2.close()
    # rolled over while stopped: finish the old file (found by identity), then the new one
    append(p, b"l4\n")
    os.rename(p, tmp_path / "ban.log.1")
    p.write_bytes(b"m1\n")
    t3 = Tailer(p, cp)
    got = read_all(t3, want=4)
    assert [ln.data for ln in got] == [b"l2", b"l3", b"l4", b"m1"]


def test_checkpointed_file_gone_reads_new_file_from_start(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"m1\nm2\n")
    st = os.stat(p)
    t = Tailer(p, Checkpoint(str(p), st.st_dev, st.st_ino + 12345, "deadbeef", 3))
    assert [ln.data for ln in t.read_lines()] == [b"m1", b"m2"]


def test_waker_wakes_on_write(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"")
    w = Waker(p)
    assert w.mode == "inotify"
    t0 = time.monotonic()
    w.wait(0.05)  # nothing happens: times out
    assert time.monotonic() - t0 >= 0.04
    append(p, b"x\n")
    t0 = time.monotonic()
    w.wait(5.0)
    assert time.monotonic() - t0 < 1.0
    w.close()


def test_truncated_and_refilled_past_the_offset_is_seen_by_its_first_line(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"gen1 line\n")
    t = Tailer(p, from_start=True)
    assert [ln.data for ln in t.read_lines()] == [b"gen1 line"]
    with open(p, "r+b") as f:
        f.truncate(0)
    append(p, b"gen2 first line, longer\ngen2 b\n")
    got = read_all(t, want=2)
    assert [ln.data for ln in got] == [b"gen2 first line, longer", b"gen2 b"]


def test_file_identity_is_typed_and_its_text_is_the_line_id_prefix(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"first line\nsecond\n")
    st = p.stat()
    t = Tailer(p, from_start=True)
    got = read_all(t, 2)
    fid = got[0].file_id
    assert isinstance(fid, FileId) and fid == t.current_file_id()
    assert (fid.dev, fid.ino, fid.fp) == (st.st_dev, st.st_ino, f"{zlib.crc32(b'first line'):08x}")
    assert str(fid) == f"{st.st_dev}-{st.st_ino}-{fid.fp}"  # the FILE-ID of line ids, unchanged
    with open(p, "rb") as f:
        assert FileId.of(f.fileno()) == fid


def test_a_checkpoint_written_before_file_ids_were_typed_still_loads(tmp_path: Path) -> None:
    p = tmp_path / "ban.log"
    p.write_bytes(b"first line\nsecond\nthird\n")
    st = p.stat()
    fp = f"{zlib.crc32(b'first line'):08x}"
    cpath = tmp_path / "cp.json"
    cpath.write_text(
        f'{{"path": "{p}", "dev": {st.st_dev}, "ino": {st.st_ino}, "fp": "{fp}", "offset": 11}}',
        encoding="utf-8",
    )
    cp = load_checkpoint(cpath)
    assert cp is not None and cp.file_id == FileId(st.st_dev, st.st_ino, fp)
    save_checkpoint(cpath, cp)
    assert json.loads(cpath.read_text(encoding="utf-8")) == {
        "path": str(p),
        "dev": st.st_dev,
        "ino": st.st_ino,
        "fp": fp,
        "offset": 11,
    }
    assert [ln.data for ln in read_all(Tailer(p, cp), 2)] == [b"second", b"third"]
