"""fail2ban's INI files (jails and filters), read defensively: what ``import-fail2ban`` and ``--filter``
share (issue 20).

A jail or filter file may come from anywhere (an old host, a download): it is bounded in size, must be
UTF-8 text without NUL bytes, and every problem is one :class:`IniError` line naming the file. fail2ban's
``%(name)s`` interpolation is bounded too: a name that refers to itself (directly or through others) is
an error, not a hang, and so is a value that expands beyond :data:`MAX_VALUE` characters (``a = %(b)s
%(b)s``, ``b = %(c)s %(c)s``... doubles at every step).
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from fleet2ban.exceptions import ConfigError
from fleet2ban.safetext import printable

MAX_BYTES: Final = 1 << 20
"""A jail or filter file larger than this is refused (they are a few kilobytes)."""
MAX_VALUE: Final = 65_536
"""The longest a value may become through interpolation (characters)."""
MAX_DEPTH: Final = 20
_REF: Final = re.compile(r"%\((\w[\w.-]*)\)s")


class IniError(ConfigError):
    """A fail2ban jail or filter file that cannot be used (exit code 2, one line)."""


def one_line(text: object, limit: int = 300) -> str:
    """An error text as one printable line, cut at ``limit`` characters."""
    flat = " ".join(printable(str(text)).replace("\\n", " ").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def read_text(path: Path) -> str:
    """The UTF-8 text of a fail2ban file, or IniError (missing, too large, binary, not UTF-8)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise IniError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise IniError(f"{path} is larger than {MAX_BYTES} bytes: not a fail2ban file")
    if b"\x00" in data:
        raise IniError(f"{path} is binary, not a fail2ban file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IniError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def read_ini(
    path: Path, *more: Path, parser: configparser.RawConfigParser | None = None
) -> configparser.RawConfigParser:
    """``path`` (then each of ``more`` that exists, e.g. its ``.local``) into one parser, raw: values keep
    their ``%(name)s`` references for :func:`interpolate`."""
    cp = parser if parser is not None else configparser.RawConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    for p in (path, *(m for m in more if m.is_file())):
        text = read_text(p)
        try:
            cp.read_string(text, source=str(p))
        except configparser.Error as exc:
            raise IniError(f"{p}: {one_line(exc)}") from None
    return cp


def interpolate(value: str, scope: Mapping[str, str], *, what: str = "value") -> str:
    """fail2ban's ``%(name)s`` references in ``value`` replaced from ``scope`` (unknown names are left as
    they are, as fail2ban does for tags it fills later). IniError for a self-reference or a blow-up."""
    return _expand(value, scope, (), what, {})


def _expand(
    value: str, scope: Mapping[str, str], active: tuple[str, ...], what: str, memo: dict[str, str]
) -> str:
    """``value`` expanded; ``memo`` holds each name's expansion once computed, so a value with many
    references to names with many references costs their number, not their product."""
    if len(active) > MAX_DEPTH:
        raise IniError(f"{what}: %(name)s references nest deeper than {MAX_DEPTH}")
    out: list[str] = []
    size = 0
    pos = 0
    for m in _REF.finditer(value):
        key = m.group(1)
        if key not in scope:
            continue
        if key in active:
            chain = " -> ".join((*active, key))
            raise IniError(f"{what}: %({key})s refers to itself ({chain})")
        expanded = memo.get(key)
        if expanded is None:
            expanded = memo[key] = _expand(scope[key], scope, (*active, key), what, memo)
        piece = value[pos : m.start()] + expanded
        out.append(piece)
        size += len(piece)
        pos = m.end()
        if size > MAX_VALUE:
            raise IniError(f"{what}: %(name)s references expand beyond {MAX_VALUE} characters")
    out.append(value[pos:])
    result = "".join(out)
    if len(result) > MAX_VALUE:
        raise IniError(f"{what}: %(name)s references expand beyond {MAX_VALUE} characters")
    return result


# ---------------------------------------------------------------- the one reader of jails and filters

INLINE_COMMENT: Final = (";",)
"""fail2ban's parser (SafeConfigParserWithIncludes) takes ``;`` after whitespace as the start of an inline
comment; ``#`` starts a comment only at the start of a line."""


def read_config(path: Path) -> configparser.RawConfigParser:
    """A fail2ban jail or filter file as fail2ban reads it: ``NAME.conf``, then ``NAME.local`` over it when
    that exists (or a ``.local`` alone); inline ``;`` comments; names keep their case; values raw, their
    ``%(name)s`` references left for :func:`interpolate`. ``import-fail2ban`` (jails and their filters) and
    the shipper's ``--filter`` both read through here, so both see the same values."""
    cp = configparser.RawConfigParser(
        strict=False, inline_comment_prefixes=INLINE_COMMENT, interpolation=None
    )
    local = path.with_suffix(".local")
    return read_ini(path, *([local] if local != path else []), parser=cp)


def find_config(directory: Path, name: str) -> Path | None:
    """The file fail2ban reads for ``name`` in ``directory`` (``NAME.conf``, else ``NAME.local``), or None."""
    for p in (directory / f"{name}.conf", directory / f"{name}.local"):
        if p.is_file():
            return p
    return None


def filter_scope(cp: configparser.RawConfigParser) -> dict[str, str]:
    """The raw values a filter's ``[Definition]`` options are read and interpolated from: ``[DEFAULT]``, then
    ``[Init]``, then ``[Definition]`` (a later section's name wins)."""
    scope = dict(cp.defaults())
    for section in ("Init", "Definition"):
        if cp.has_section(section):
            scope.update(dict(cp.items(section)))
    return scope


def filter_option(scope: Mapping[str, str], option: str, *, what: str) -> str | None:
    """A filter option interpolated from its scope (:func:`filter_scope`), or None when it is not set."""
    return interpolate(scope[option], scope, what=f"{what} {option}") if option in scope else None


def regex_lines(value: str | None) -> list[str]:
    """The regexes of a multi-line ``failregex``/``ignoreregex`` value: one a line, blank and ``#`` lines
    left out."""
    if not value:
        return []
    return [ln.strip() for ln in value.splitlines() if ln.strip() and not ln.strip().startswith("#")]
