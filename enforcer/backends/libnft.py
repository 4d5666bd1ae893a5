"""A tiny in-process adapter for libnftables (``libnftables.so.1``, Debian package ``libnftables1``).

Debian's ``python3-nftables`` is a thin ctypes wrapper over the same library, installed for Debian's own
Python only; the PyPI copies of it are one person's repackaging. The half-dozen calls fleet2ban needs are
wrapped here instead: a context with JSON output, commands in as JSON (one ``{"nftables": [...]}``
document is one atomic kernel transaction), output and errors read from libnftables' buffers.

A context talks netlink through a socket bound to the network namespace it was created in; the adapter
notices when the calling thread is in another namespace (tests enter several) and opens a new context
there.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
from typing import Any

from enforcer.exceptions import BackendError, FirewallCapabilityError

LIBRARY = "libnftables.so.1"
NFT_CTX_DEFAULT = 0
OUTPUT_JSON = 1 << 4
OUTPUT_TERSE = 1 << 11
"""Listings without set elements."""

_LOCATION = re.compile(r"^(?:internal|<cmdline>):\d+:\d+-\d+:\s*")


class NftError(BackendError):
    """libnftables refused a command (the whole transaction was rolled back)."""


@functools.cache
def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as exc:
        raise FirewallCapabilityError(
            f"the nftables backend needs {LIBRARY} ({exc}): apt-get install libnftables1 nftables"
        ) from None
    vp, cp, u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32
    for name, restype, argtypes in (
        ("nft_ctx_new", vp, [u32]),
        ("nft_ctx_free", None, [vp]),
        ("nft_ctx_output_get_flags", ctypes.c_uint, [vp]),
        ("nft_ctx_output_set_flags", None, [vp, ctypes.c_uint]),
        ("nft_ctx_buffer_output", ctypes.c_int, [vp]),
        ("nft_ctx_buffer_error", ctypes.c_int, [vp]),
        ("nft_ctx_get_output_buffer", cp, [vp]),
        ("nft_ctx_get_error_buffer", cp, [vp]),
        ("nft_run_cmd_from_buffer", ctypes.c_int, [vp, cp]),
    ):
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def netns_id() -> int:
    """The calling thread's network namespace (inode of /proc/thread-self/ns/net)."""
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


def clean_error(text: str) -> str:
    """libnftables' error buffer as one line: its ``Error:`` lines without their location prefixes, not
    the echo of the command (which for a JSON transaction is the whole document)."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = _LOCATION.sub("", raw.strip())
        if line.startswith("Error: "):
            line = line.removeprefix("Error: ")[:300]
            if line not in lines:
                lines.append(line)
    if not lines:
        first = text.strip().splitlines()[:1]
        return first[0][:300] if first else "libnftables failed without an error text"
    return "; ".join(lines[:3])


class Nft:
    """One libnftables context (JSON in, JSON or text out). Not thread-safe."""

    def __init__(self) -> None:
        self._lib = _load()
        self._ctx: int | None = None
        self._ns = 0

    def _context(self) -> int:
        ns = netns_id()
        if self._ctx is None or ns != self._ns:
            self.close()
            ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
            if not ctx:
                raise FirewallCapabilityError("libnftables: nft_ctx_new failed")
            self._lib.nft_ctx_buffer_output(ctx)
            self._lib.nft_ctx_buffer_error(ctx)
            self._ctx, self._ns = ctx, ns
        return self._ctx

    def _run(self, text: str, flags: int) -> str:
        ctx = self._context()
        self._lib.nft_ctx_output_set_flags(ctx, flags)
        rc = self._lib.nft_run_cmd_from_buffer(ctx, text.encode())
        out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(clean_error(err))
        return out

    def run(self, commands: list[dict[str, Any]]) -> None:
        """Apply ``commands`` (JSON command objects) as one atomic transaction; NftError when refused."""
        if commands:
            # check_circular off: the commands are trees built afresh by the backend (a list may appear
            # twice, never inside itself); the check's bookkeeping per dict and list was about a third of
            # encoding a transaction of 10,000 elements (CPU 15 -> 10-12 ms)
            text = json.dumps({"nftables": commands}, separators=(",", ":"), check_circular=False)
            self._run(text, OUTPUT_JSON)

    def query(self, command: str, terse: bool = False) -> list[dict[str, Any]]:
        """A ``list ...`` command's JSON objects (without the metainfo object)."""
        out = self._run(command, OUTPUT_JSON | (OUTPUT_TERSE if terse else 0))
        if not out.strip():
            return []
        doc = json.loads(out)
        return [o for o in doc.get("nftables", []) if "metainfo" not in o]

    def text(self, command: str) -> str:
        """A command's output as ``nft`` prints it."""
        return self._run(command, 0)

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
