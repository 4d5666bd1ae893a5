"""An operator's own fail2ban filter file (``[Definition] failregex = ... <HOST> ...``) as a line parser.

For operators who bring an existing filter. fail2ban's regexes search anywhere in the line, so a client
that chooses its own name (``x](203.0.113.9:1) disconnected: auth.``) can make them report another
address: the built-in parser (:mod:`shipper.parse`) anchors on what AMPS writes and cannot be fooled.
:func:`load_filter` logs that warning.

Supported: ``failregex`` / ``ignoreregex`` (several lines), ``prefregex``, ``%(name)s`` interpolation from
``[DEFAULT]``/``[Definition]``/``[Init]``, the address tags ``<HOST>``, ``<ADDR>``, ``<IP4>``, ``<IP6>``,
``<DNS>`` (fail2ban 1.0's expansions) and ``<F-NAME>...</F-NAME>`` captures (``F-PORT``, ``F-USER``
become the port and client). ``[INCLUDES]`` and ``datepattern`` are not interpreted: the time is the
leading AMPS timestamp, parsed strictly. A DNS name is a rejected line (no lookups).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fleet2ban.contract import RAW_LINE_MAX
from fleet2ban.f2bini import IniError, filter_option, filter_scope, one_line, read_config, regex_lines
from shipper.exceptions import FilterError
from shipper.parse import (
    BAD_ADDRESS,
    BAD_PORT,
    BAD_TIMESTAMP,
    EMPTY,
    LINE_MAX,
    LIVENESS_CODE,
    TOO_LONG,
    Liveness,
    ParsedLine,
    ParseResult,
    Rejected,
    _canonical_ip,
    parse_timestamp,
)

log = logging.getLogger(__name__)

NO_MATCH: Final = "no-match"
IGNORED: Final = "ignored"

# fail2ban 1.0 (fail2ban/server/ipdns.py, failregex.py)
_IP4: Final = r"(?:\d{1,3}\.){3}\d{1,3}"
_IP6: Final = r"(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):)"
_R_IP4: Final = rf"(?:::f{{4,6}}:)?(?P<ip4>{_IP4})"
_R_IP6: Final = rf"(?P<ip6>{_IP6})"
_R_DNS: Final = r"(?P<dns>[\w\-.^_]*\w)"
_R_ADDR: Final = rf"\[?(?:{_R_IP4}|{_R_IP6})\]?"
_TAGS: Final = {
    "HOST": _R_ADDR,  # fail2ban with usedns = no: fleet2ban never resolves names
    "ADDR": _R_ADDR,
    "IP4": _R_IP4,
    "IP6": _R_IP6,
    "DNS": _R_DNS,
}
_TAG: Final = re.compile(r"<(/?)(F-[A-Z0-9_-]+|HOST|ADDR|IP4|IP6|DNS)(/?)>")
WARNING: Final = (
    "fail2ban filter %s: its regexes search anywhere in the line, so a client name such as "
    "'x](203.0.113.9:1) disconnected: auth.' can make it report an address that is not the client's; "
    "the built-in parser (no --filter) cannot be fooled this way"
)


def expand_tags(regex: str) -> str:
    """Replace fail2ban's tags by their regexes (each ``<F-X>`` capture becomes group ``f_x``)."""

    def sub(m: re.Match[str]) -> str:
        closing, name, selfclosing = m.groups()
        if name in _TAGS:
            return _TAGS[name]
        group = "f_" + name[2:].lower().replace("-", "_")
        if closing:
            return ")"
        if selfclosing:
            return rf"(?P<{group}>\S+)"
        return f"(?P<{group}>"

    return _TAG.sub(sub, regex)


@dataclass(frozen=True)
class Fail2banFilter:
    """The compiled regexes of one filter file."""

    path: Path
    failregex: tuple[re.Pattern[str], ...]
    ignoreregex: tuple[re.Pattern[str], ...] = ()
    prefregex: re.Pattern[str] | None = None

    def __call__(self, line: str) -> ParseResult:
        return self.parse(line)

    def parse(self, line: str, max_len: int = LINE_MAX) -> ParseResult:
        """Same contract as :func:`shipper.parse.parse_line`, with the filter's regexes deciding."""
        line = line.rstrip("\r\n")
        if len(line) > max_len:
            return Rejected(TOO_LONG, f"{len(line)} characters (bound {max_len})")
        if not line.strip():
            return Rejected(EMPTY, "empty line")
        ts_text, _, rest = line.partition(" ")
        try:
            ts = parse_timestamp(ts_text)
        except ValueError as exc:
            return Rejected(BAD_TIMESTAMP, str(exc))
        if f": {LIVENESS_CODE}" in rest[:64]:
            return Liveness(ts)
        text = rest
        if self.prefregex is not None:
            pm = self.prefregex.search(text)
            if pm is None:
                return Rejected(NO_MATCH, "prefregex did not match")
            text = pm.groupdict().get("content") or text
        if any(r.search(text) for r in self.ignoreregex):
            return Rejected(IGNORED, "ignoreregex matched")
        for regex in self.failregex:
            m = regex.search(text)
            if m is None:
                continue
            groups = m.groupdict()
            addr = groups.get("ip4") or groups.get("ip6")
            if not addr:
                return Rejected(BAD_ADDRESS, f"no address captured (dns {groups.get('dns')!r})")
            ip = _canonical_ip(addr)
            if ip is None:
                return Rejected(BAD_ADDRESS, f"not an IP address: {addr[:64]!r}")
            port_text = groups.get("f_port") or "0"
            if not port_text.isdigit() or int(port_text) > 65535:
                return Rejected(BAD_PORT, f"bad port {port_text[:16]!r}")
            reason = groups.get("f_reason") or _first_unnamed(m) or "match"
            return ParsedLine(ts, ip, int(port_text), groups.get("f_user") or "", reason, line[:RAW_LINE_MAX])
        return Rejected(NO_MATCH, "no failregex matched")


def _first_unnamed(m: re.Match[str]) -> str | None:
    """The first unnamed group that matched: the seed's ``(auth|name in use)`` is the reason."""
    named = set(m.re.groupindex.values())
    for i in range(1, (m.re.groups or 0) + 1):
        if i not in named and m.group(i):
            return m.group(i)
    return None


def load_filter(path: Path, *, warn: bool = True) -> Fail2banFilter:
    """Read a fail2ban filter file. Raises :class:`FilterError` (one line) when it cannot be used: not
    readable, binary, not UTF-8, not INI, a recursive or exploding ``%(name)s``, a bad regex."""
    try:
        cp = read_config(path)
    except IniError as exc:
        raise FilterError(f"filter {exc}") from None
    if not cp.has_section("Definition"):
        raise FilterError(f"filter {path}: no [Definition] section")
    scope = filter_scope(cp)

    def compile_all(option: str) -> tuple[re.Pattern[str], ...]:
        try:
            raw = filter_option(scope, option, what=str(path))
        except IniError as exc:
            raise FilterError(f"filter {exc}") from None
        out = []
        for text in regex_lines(raw):
            try:
                out.append(re.compile(expand_tags(text)))
            except (re.error, RecursionError, OverflowError) as exc:
                raise FilterError(
                    f"filter {path}: {option} {one_line(text, 80)!r}: {one_line(exc)}"
                ) from None
        return tuple(out)

    failregex = compile_all("failregex")
    if not failregex:
        raise FilterError(f"filter {path}: [Definition] has no failregex")
    for r in failregex:
        if not {"ip4", "ip6"} & set(r.groupindex):
            raise FilterError(f"filter {path}: failregex {r.pattern[:80]!r} has no <HOST>/<ADDR> tag")
    pref = compile_all("prefregex")
    flt = Fail2banFilter(path, failregex, compile_all("ignoreregex"), pref[0] if pref else None)
    if warn:
        log.warning(WARNING, path)
    return flt
