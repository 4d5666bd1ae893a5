"""Follow the AMPS ban log as it is written: complete lines only, through rollovers, from a checkpoint.

- A partially written last line is held back until its newline arrives.
- Rename-and-recreate (AMPS rolling the file over onto the same name): the old file is read to its end
  (a last line without newline is taken once the rollover is ``rotate_grace_s`` old), then the new file
  from its start. Truncate-in-place: the file is read again from its start.
- A line longer than ``max_line_bytes`` is cut (its head is returned, flagged) and the rest skipped, so
  memory never follows the input.
- A :class:`Checkpoint` names a file by identity (device, inode, first-line fingerprint) and a byte
  offset. On restart the tailer resumes there; when the file was rolled over meanwhile it finds the old
  file in the same directory by identity, finishes it, then reads the new one from its start.
- :class:`Waker` sleeps until the directory changes (inotify) or a timeout passes (polling fallback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from shipper.exceptions import CheckpointError
from shipper.fileid import FileId, fingerprint
from shipper.parse import LINE_MAX

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TAIL_SCAN = 1 << 16


@dataclass(frozen=True)
class Checkpoint:
    """Where a restarted shipper resumes: every event before ``offset`` of that file was acknowledged."""

    path: str
    dev: int
    ino: int
    fp: str
    offset: int

    @property
    def file_id(self) -> FileId:
        return FileId(self.dev, self.ino, self.fp)


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint in ``path``, or None when there is none (or it is unreadable, which is logged)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Checkpoint(
            path=str(data["path"]),
            dev=int(data["dev"]),
            ino=int(data["ino"]),
            fp=str(data["fp"]),
            offset=int(data["offset"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("checkpoint %s is unreadable (%s): starting as if there were none", path, exc)
        return None


def save_checkpoint(path: Path, cp: Checkpoint, *, sync: bool = False) -> None:
    """Write atomically (temporary file + rename); ``sync`` also fsyncs it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(cp), f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from None


class TailLine(NamedTuple):
    """One complete line: which file (``seq`` counts files this tailer opened), where, and its bytes."""

    seq: int
    file_id: FileId
    offset: int
    end: int
    data: bytes
    too_long: bool


class TailChunk(NamedTuple):
    """Complete lines (``data`` ends with a newline) of one file, the first at byte ``offset``.

    Lines in a chunk may be longer than the bound (the consumer counts them too long); what is never
    buffered beyond the bound is a line still waiting for its newline.
    """

    seq: int
    file_id: FileId
    offset: int
    data: bytes


TailItem = TailChunk | TailLine


def chunk_lines(chunk: TailChunk, limit: int) -> list[TailLine]:
    """The lines of a chunk, one by one (lines longer than ``limit`` cut and flagged)."""
    out: list[TailLine] = []
    pos = chunk.offset
    for raw in chunk.data.split(b"\n")[:-1]:
        end = pos + len(raw) + 1
        out.append(TailLine(chunk.seq, chunk.file_id, pos, end, raw[:limit], len(raw) > limit))
        pos = end
    return out


class _File:
    """One open file being read."""

    def __init__(self, fd: int, seq: int, path: Path, offset: int) -> None:
        self.fd = fd
        self.seq = seq
        self.path = path
        st = os.fstat(fd)
        self.dev, self.ino = st.st_dev, st.st_ino
        self.fp = ""
        self.pos = offset  # bytes read from the file
        self.buf = b""  # bytes read but not yet returned (a partial line), starting at buf_start
        self.buf_start = offset
        self.skipping: tuple[int, bytes] | None = None  # (start, head) of a too-long line being skipped
        self.at_eof = False  # the last read found no more data
        os.lseek(fd, offset, os.SEEK_SET)

    @property
    def file_id(self) -> FileId:
        if not self.fp:
            self.fp = fingerprint(self.fd)
        return FileId(self.dev, self.ino, self.fp)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Tailer:
    """Complete lines of a followed log file, in order, across rollovers. Not thread-safe."""

    def __init__(
        self,
        path: Path,
        checkpoint: Checkpoint | None = None,
        *,
        from_start: bool = False,
        max_line_bytes: int = LINE_MAX,
        rotate_grace_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.rotate_grace_s = rotate_grace_s
        self.rotations = 0
        self.truncations = 0
        self._seq = 0
        self._file: _File | None = None
        self._idents: dict[int, tuple[str, int, int]] = {}  # seq -> (path, dev, ino)
        self._rotation_seen: float | None = None
        self._pending_checkpoint = checkpoint
        self._from_start = from_start
        self._missing_logged = False

    # ------------------------------------------------------------------------------------ opening

    def _open(self, path: Path, offset: int) -> _File | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        self._seq += 1
        f = _File(fd, self._seq, path, offset)
        self._idents[f.seq] = (str(path), f.dev, f.ino)
        return f

    def _start(self) -> bool:
        """Open the file the first time (from the checkpoint, the end, or the start). False: not there."""
        cp = self._pending_checkpoint
        if cp is not None:
            f = self._open(self.path, 0)
            if f is None:
                old = self._find_by_identity(cp)
                if old is None:
                    return self._log_missing()
                self._file = self._open(old, cp.offset)
                self._rotation_seen = time.monotonic()
                self._pending_checkpoint = None
                return self._file is not None
            if (f.dev, f.ino) == (cp.dev, cp.ino) and (not cp.fp or f.file_id == cp.file_id):
                size = os.fstat(f.fd).st_size
                offset = cp.offset if cp.offset <= size else 0
                if offset != cp.offset:
                    log.warning(
                        "%s is shorter than its checkpoint: truncated, reading from its start", self.path
                    )
                os.lseek(f.fd, offset, os.SEEK_SET)
                f.pos = f.buf_start = offset
                log.info("resuming %s at byte %d (checkpoint)", self.path, offset)
                self._file = f
            else:
                old = self._find_by_identity(cp)
                if old is not None:
                    f.close()
                    self._idents.pop(f.seq, None)
                    log.info(
                        "%s was rolled over while stopped: finishing %s from byte %d",
                        self.path,
                        old,
                        cp.offset,
                    )
                    self._file = self._open(old, cp.offset)
                    self._rotation_seen = time.monotonic()
                else:
                    log.warning(
                        "the checkpointed file of %s (%s) is gone: reading the current file from its start;"
                        " lines written to the old file after the checkpoint are lost",
                        self.path,
                        cp.file_id,
                    )
                    os.lseek(f.fd, 0, os.SEEK_SET)
                    self._file = f
            self._pending_checkpoint = None
            return self._file is not None
        f = self._open(self.path, 0)
        if f is None:
            return self._log_missing()
        if not self._from_start:
            offset = _end_of_last_line(f.fd)
            os.lseek(f.fd, offset, os.SEEK_SET)
            f.pos = f.buf_start = offset
            log.info("following %s from its end (byte %d); --from-start reads it all", self.path, offset)
        self._file = f
        return True

    def _log_missing(self) -> bool:
        if not self._missing_logged:
            log.warning("%s does not exist (yet): waiting for it", self.path)
            self._missing_logged = True
        return False

    def _find_by_identity(self, cp: Checkpoint) -> Path | None:
        """The checkpointed file, if it still exists under another name in the log's directory."""
        directory = self.path.parent
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return None
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != (cp.dev, cp.ino):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not cp.fp or fingerprint(fd) == cp.fp:
                    return Path(entry.path)
            finally:
                os.close(fd)
        return None

    # ------------------------------------------------------------------------------------ reading

    def identity(self, seq: int) -> tuple[str, int, int] | None:
        """(path, dev, ino) of a file this tailer opened (for checkpoints)."""
        return self._idents.get(seq)

    def forget_before(self, seq: int) -> None:
        for s in [s for s in self._idents if s < seq]:
            del self._idents[s]

    @property
    def position(self) -> tuple[int, int]:
        """(seq, offset) just after the last line returned: nothing before it is still to be read."""
        f = self._file
        if f is None:
            return (self._seq, 0)
        return (f.seq, f.skipping[0] if f.skipping is not None else f.buf_start)

    @property
    def caught_up(self) -> bool:
        """The last read reached the end of the file (more data needs a write, not another read)."""
        return self._file is None or self._file.at_eof

    def current_file_id(self) -> FileId | None:
        return self._file.file_id if self._file is not None else None

    def lag_bytes(self) -> int:
        """Bytes of the followed path not yet returned as lines (including the current file's rest)."""
        f = self._file
        if f is None:
            return 0
        try:
            size = os.fstat(f.fd).st_size
        except OSError:
            return 0
        lag = max(0, size - f.buf_start)
        # a file now on the path that is not ours (rotated, not yet noticed by a read) is lag too
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) != (f.dev, f.ino):
                lag += st.st_size
        return lag

    def read_lines(self, max_bytes: int = CHUNK) -> list[TailLine]:
        """:meth:`read`, line by line."""
        out: list[TailLine] = []
        for item in self.read(max_bytes):
            out.extend(chunk_lines(item, self.max_line_bytes) if isinstance(item, TailChunk) else [item])
        return out

    def read(self, max_bytes: int = CHUNK) -> list[TailItem]:
        """Complete lines available now (about ``max_bytes`` at most); an empty list when there are none."""
        if self._file is None and not self._start():
            return []
        f = self._file
        assert f is not None
        out: list[TailItem] = []
        if f.at_eof and f.fp and fingerprint(f.fd) not in ("", f.fp):
            # New data after a pause, but another first line: truncated and refilled past our offset.
            self._truncated(f, os.fstat(f.fd).st_size)
        budget = max_bytes
        while budget > 0:
            data = os.read(f.fd, min(CHUNK, budget))
            if not data:
                f.at_eof = True
                break
            f.at_eof = False
            budget -= len(data)
            f.pos += len(data)
            self._split(f, data, out)
        if out:
            return out
        self._check_path(f, out)
        return out

    def _truncated(self, f: _File, size: int) -> None:
        self.truncations += 1
        log.warning(
            "%s was truncated (now %d bytes, %d read): reading it from its start", self.path, size, f.pos
        )
        self._idents.pop(f.seq, None)
        os.lseek(f.fd, 0, os.SEEK_SET)
        self._seq += 1
        f.seq = self._seq
        f.fp = ""
        f.pos = f.buf_start = 0
        f.buf = b""
        f.skipping = None
        f.at_eof = False
        self._idents[f.seq] = (str(self.path), f.dev, f.ino)

    def _split(self, f: _File, data: bytes, out: list[TailItem]) -> None:
        limit = self.max_line_bytes
        if f.skipping is not None:  # the rest of a too-long line: dropped up to its newline
            nl = data.find(b"\n")
            if nl < 0:
                f.buf_start += len(data)
                return
            s, head = f.skipping
            f.skipping = None
            end = f.buf_start + nl + 1
            out.append(TailLine(f.seq, f.file_id, s, end, head, True))
            f.buf_start = end
            data = data[nl + 1 :]
            if not data:
                return
        buf = f.buf + data if f.buf else data
        start = f.buf_start
        nl = buf.rfind(b"\n")
        if nl >= 0:
            out.append(TailChunk(f.seq, f.file_id, start, buf[: nl + 1]))
            rest = buf[nl + 1 :]
            start += nl + 1
        else:
            rest = buf
        if len(rest) > limit:
            f.skipping = (start, rest[:limit])
            f.buf, f.buf_start = b"", start + len(rest)
        else:
            f.buf, f.buf_start = rest, start

    def _check_path(self, f: _File, out: list[TailItem]) -> None:
        """At the end of the current file: has it been truncated, or rolled over onto its name?"""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            log.debug("stat %s: %s", self.path, exc)
            return
        if st is not None and (st.st_dev, st.st_ino) == (f.dev, f.ino):
            size = os.fstat(f.fd).st_size
            # Truncated: shorter than what we read, or a different first line (refilled past our offset).
            if size < f.pos or (f.fp and fingerprint(f.fd) not in ("", f.fp)):
                self._truncated(f, size)
            self._rotation_seen = None
            return
        if st is None and self._rotation_seen is None:
            return  # deleted, not yet recreated: keep reading what we have
        now = time.monotonic()
        if self._rotation_seen is None:
            self._rotation_seen = now
        if (f.buf or f.skipping is not None) and now - self._rotation_seen < self.rotate_grace_s:
            return  # the writer may still finish its last line in the old file
        if st is None:
            return
        new = self._open(self.path, 0)
        if new is None:
            return
        if f.buf or f.skipping is not None:
            start = f.skipping[0] if f.skipping is not None else f.buf_start
            head = f.skipping[1] if f.skipping is not None else f.buf[: self.max_line_bytes]
            too_long = f.skipping is not None or len(f.buf) > self.max_line_bytes
            out.append(TailLine(f.seq, f.file_id, start, f.pos, head, too_long))
        self.rotations += 1
        log.info(
            "%s was rolled over: read the old file to its end (byte %d), now reading the new one",
            self.path,
            f.pos,
        )
        f.close()
        self._file = new
        self._rotation_seen = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _end_of_last_line(fd: int) -> int:
    """Offset just after the last newline of a file (0 when there is none in its last 64 KiB)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    start = max(0, size - TAIL_SCAN)
    data = os.pread(fd, size - start, start)
    nl = data.rfind(b"\n")
    return start + nl + 1 if nl >= 0 else (size if start > 0 else 0)


# ----------------------------------------------------------------------------------------- waiting


class Waker:
    """Sleep until the log's directory changes or ``timeout`` passes: inotify, else plain polling."""

    def __init__(self, path: Path, use_inotify: bool = True) -> None:
        self._inotify: Any = None
        self.mode = "poll"
        if use_inotify:
            try:
                from asyncinotify import Inotify, Mask

                ino = Inotify(sync_timeout=0.0)
                ino.add_watch(
                    path.parent,
                    Mask.MODIFY | Mask.CREATE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.DELETE | Mask.ATTRIB,
                )
                self._inotify = ino
                self.mode = "inotify"
            except Exception as exc:  # no inotify (other OS, limits reached, directory missing)
                log.info("inotify unavailable for %s (%s): polling", path.parent, exc)

    def wait(self, timeout: float) -> None:
        if timeout <= 0:
            return
        if self._inotify is None:
            time.sleep(timeout)
            return
        self._inotify.sync_timeout = timeout
        try:
            if self._inotify.sync_get() is None:
                return
            self._inotify.sync_timeout = 0.0
            while self._inotify.sync_get() is not None:  # drain: one wake-up per burst
                pass
        except OSError as exc:  # pragma: no cover - inotify failing at run time
            log.warning("inotify failed (%s): polling from now on", exc)
            self.close()

    def close(self) -> None:
        if self._inotify is not None:
            with contextlib.suppress(Exception):
                self._inotify.close()
            self._inotify = None
            self.mode = "poll"
