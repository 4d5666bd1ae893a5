"""The identity of one log file (not of its name): device, inode and first-line fingerprint.

Line ids are ``HOST:FILE-ID:OFFSET`` (:func:`fleet2ban.contract.line_id`); ``str(FileId)`` is the
``DEV-INO-FP`` text that has always stood for FILE-ID there, so ids are unchanged. The tailer, the
shipper's checkpoints and the offline readers all build it here.
"""

from __future__ import annotations

import os
import zlib
from typing import Final, NamedTuple

FINGERPRINT_BYTES: Final = 256


def fingerprint(fd: int) -> str:
    """CRC-32 of a file's first line (at most 256 bytes), or "" while that line is not complete.

    Part of the file identity, because inode numbers are reused: a log rolled over by delete-and-recreate,
    or truncated in place, often gets the inode (and offsets) of the file before it. Its first line, which
    starts with a 100 ns timestamp, tells the two apart, so their line ids never collide.
    """
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[:nl]
    elif len(head) < FINGERPRINT_BYTES:
        return ""
    return f"{zlib.crc32(head):08x}"


class FileId(NamedTuple):
    """Device, inode and first-line fingerprint ("" while the first line is incomplete)."""

    dev: int
    ino: int
    fp: str

    def __str__(self) -> str:
        return f"{self.dev}-{self.ino}-{self.fp}"

    @classmethod
    def of(cls, fd: int) -> FileId:
        """The identity of an open file."""
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino, fingerprint(fd))
