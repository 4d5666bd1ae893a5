"""``fleet2ban import-fail2ban``: an existing fail2ban jail section (and its filter) as fleet2ban settings.

Carried over: ``maxretry``, ``findtime``, ``bantime`` (fail2ban's time abbreviations: ``10m``, ``1h30m``,
``1d``, ``-1``), ``port`` (numbers, ``a,b``, ``a:b`` ranges, service names), ``ignoreip`` (addresses and
CIDRs), ``bantime.increment`` / ``.factor`` / ``.formula`` / ``.multipliers`` / ``.maxtime`` /
``.rndtime`` / ``.overalljails``, ``logpath`` (-> ``shipper.log_path``), and the filter: the seed's AMPS
filter becomes the built-in strict parser with its reasons; any other filter is kept as
``shipper.filter_path`` with the reasons its first group can produce. Everything else (actions, backend,
usedns, hostnames in ignoreip...) is listed as not carried over.

fail2ban's ``[recidive]`` jail (its filter ``recidive``, or any filter over fail2ban's own log that counts
``NOTICE [JAIL] Ban <HOST>`` lines) becomes a jail with ``source: bans``: it counts the bans of the other
jails, as fleet2ban decides them. What it leaves unset takes jail.conf's ``[recidive]`` values (findtime
1d, bantime 1w, maxretry 5), not fleet2ban's defaults for a jail of events.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fleet2ban.contract import ContractError, exempts_most, target_network
from fleet2ban.f2bini import (
    filter_option,
    filter_scope,
    find_config,
    interpolate,
    one_line,
    read_config,
    regex_lines,
)
from fleet2ban.settings import JailSettings, format_validation_error
from processor.exceptions import ImportFail2banError

_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "mi": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
    "mo": 2592000,
    "month": 2592000,
    "months": 2592000,
    "y": 31536000,
    "year": 31536000,
    "years": 31536000,
}
_TIME_PART = re.compile(r"(-?\d+(?:\.\d+)?)\s*([a-z]*)", re.IGNORECASE)
_HANDLED = {
    "enabled",
    "filter",
    "logpath",
    "maxretry",
    "findtime",
    "bantime",
    "port",
    "ignoreip",
    "bantime.increment",
    "bantime.factor",
    "bantime.formula",
    "bantime.multipliers",
    "bantime.maxtime",
    "bantime.rndtime",
    "bantime.overalljails",
}
_HARMLESS = {"backend", "usedns", "protocol", "chain", "banaction", "banaction_allports", "mode"}
RECIDIVE_DEFAULTS = {"maxretry": 5, "findtime": 86400.0, "bantime": 604800.0}
"""fail2ban's jail.conf ``[recidive]`` (and its [DEFAULT] maxretry)."""
_BAN_LINE = re.compile(r"NOTICE.*\\\]\\s\+Ban\\s\+<HOST>")
"""A failregex over fail2ban's own log that matches its ``NOTICE [JAIL] Ban <HOST>`` lines."""
SEED_REGEX = re.compile(r"07-0013.*\\\(<HOST>:\[\\d\]\+\\\) disconnected: \(([^()]*)\)")


def str2seconds(text: str) -> float:
    """fail2ban's time syntax (``MyTime.str2seconds``): ``600``, ``10m``, ``1h 30m``, ``-1``."""
    s = text.strip().lower()
    if not s:
        raise ImportFail2banError("empty time value")
    if len(s) > 64:
        raise ImportFail2banError(f"not a fail2ban time: {one_line(text, 40)!r}")
    total = 0.0
    pos = 0
    for m in _TIME_PART.finditer(s):
        if s[pos : m.start()].strip():
            raise ImportFail2banError(f"not a fail2ban time: {text!r}")
        unit = m.group(2) or "s"
        if unit not in _UNITS:
            raise ImportFail2banError(f"unknown time unit {unit!r} in {text!r}")
        total += float(m.group(1)) * _UNITS[unit]
        pos = m.end()
    if s[pos:].strip():
        raise ImportFail2banError(f"not a fail2ban time: {text!r}")
    if not math.isfinite(total):
        raise ImportFail2banError(f"time {text!r} is out of range")
    return total


def _time(key: str, text: str) -> float:
    try:
        return str2seconds(text)
    except ImportFail2banError as exc:
        raise ImportFail2banError(f"{key}: {exc}") from None


def _int(key: str, text: str) -> int:
    if not re.fullmatch(r"\s*-?\d{1,9}\s*", text):
        raise ImportFail2banError(f"{key} = {one_line(text, 40)!r}: not a whole number")
    return int(text)


def _float(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ImportFail2banError(f"{key} = {one_line(text, 40)!r}: not a number") from None
    if not math.isfinite(value):
        raise ImportFail2banError(f"{key} = {one_line(text, 40)!r}: not a finite number")
    return value


_PORT_RANGE = re.compile(r"(\d{1,5})[:-](\d{1,5})")


def _port(part: str, text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ImportFail2banError(f"port {part!r}: {value} is out of range 1-65535")
    return value


def parse_ports(text: str, notes: list[str]) -> list[int]:
    """fail2ban's ``port``: numbers, ``a:b``/``a-b`` ranges, service names; ImportFail2banError for a
    malformed, empty or out-of-range one (never silently the default)."""
    ports: list[int] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part or part == "0:65535":
            if part:
                notes.append("port = 0:65535 (all ports): fleet2ban bans per port; listed none")
            continue
        if ":" in part or "-" in part:
            m = _PORT_RANGE.fullmatch(part)
            if m is None:
                raise ImportFail2banError(f"port {one_line(part, 40)!r}: not a port range (a:b)")
            a, b = _port(part, m.group(1)), _port(part, m.group(2))
            if b < a:
                raise ImportFail2banError(f"port range {part!r} is empty ({a} > {b})")
            if b - a > 1000:
                notes.append(f"port range {part} is too wide to list; left out")
                continue
            ports.extend(range(a, b + 1))
        elif part.isdigit():
            ports.append(_port(part, part[:6]))
        else:
            try:
                ports.append(socket.getservbyname(part, "tcp"))
            except (OSError, UnicodeError, ValueError):
                notes.append(f"port {one_line(part, 40)!r}: unknown service name")
    return ports


def parse_ignoreip(text: str, notes: list[str]) -> list[str]:
    """Addresses and CIDRs (through the contract's one parser); one that covers every address of its
    family, or together half or more of them, is refused: the jail could (almost) never ban anything
    (fail2ban would not either, on that host)."""
    out: list[str] = []
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        try:
            net = target_network(part)
        except ContractError:
            notes.append(
                f"ignoreip {one_line(part, 60)!r}: not an address or CIDR (hostnames are not resolved)"
            )
            continue
        if net.prefixlen == 0:
            raise ImportFail2banError(
                f"ignoreip {part} covers every IPv{net.version} address: this jail could never ban anyone;"
                " remove it from the jail before importing"
            )
        nets.append(net)
        out.append(str(net))
    space = exempts_most(nets)
    if space is not None:
        raise ImportFail2banError(
            f"ignoreip {one_line(text, 80)!r} covers half or more of {space}: this jail would ban almost"
            " no one; remove it from the jail before importing"
        )
    return out


def _reasons_from_regex(regexes: list[str]) -> list[str] | None:
    """The alternatives of the first unnamed group of each failregex, when they are plain words."""
    reasons: list[str] = []
    for rx in regexes:
        m = re.search(r"\((?!\?)([^()]*)\)", rx.replace(r"\(", "").replace(r"\)", ""))
        if m is None:
            return None
        alts = m.group(1).split("|")
        if not all(re.fullmatch(r"[\w .-]+", a) for a in alts):
            return None
        reasons += [a for a in alts if a not in reasons]
    return reasons or None


@dataclass
class ImportResult:
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _recidive(values: dict[str, str], own: set[str], out: dict[str, Any], notes: list[str]) -> None:
    """fail2ban's recidive (bans of other jails, read from fail2ban's own log) as ``source: bans``.

    ``own``: the keys set in the jail's section itself. jail.conf's ``[recidive]`` sets findtime and
    bantime in the section, so a [DEFAULT] value never reaches them in fail2ban; maxretry comes from
    [DEFAULT] (5 in jail.conf)."""
    out["source"] = "bans"
    for key, value in RECIDIVE_DEFAULTS.items():
        if key not in (values if key == "maxretry" else own):
            out[key] = value
            notes.append(
                f"{key} not set in the section: fail2ban's [recidive] value {value:g} (jail.conf) taken"
            )
    notes.append(
        "logpath and filter (Ban lines of fail2ban's own log): imported as source: bans, which counts the"
        " automatic bans of the other jails (jails: [...] chooses them)"
    )
    if "_jailname" in values.get("filter", ""):
        notes.append(
            f"filter parameters {one_line(values['filter'], 60)!r}: a source: bans jail never counts its own"
            " bans; list the jails it counts in jails: [...]"
        )
    notes.append(
        "fail2ban's recidive bans every port (banaction_allports); fleet2ban bans the ports listed:"
        f" {', '.join(str(p) for p in out.get('ports', [9007]))}; list those of every counted jail"
    )


def import_jail(jail_file: Path, jail: str | None = None, filter_dir: Path | None = None) -> ImportResult:
    """Read one jail section (and its filter) and return fleet2ban settings plus what was left out."""
    cp = read_config(jail_file)
    jail = _choose_jail(cp, jail_file, jail)
    scope = {**cp.defaults(), **dict(cp.items(jail))}
    values = {k: interpolate(v, scope, what=f"{jail_file} [{jail}] {k}").strip() for k, v in scope.items()}
    notes: list[str] = []
    out: dict[str, Any] = {"name": re.sub(r"[^A-Za-z0-9_.-]", "-", jail)[:24], **_counting(values, notes)}
    inc = _increment(values)
    if inc:
        out["bantime_increment"] = inc
    shipper: dict[str, Any] = {}
    # jail.conf's [DEFAULT] says filter = %(__name__)s[mode=...]: the section's own name
    filter_name = values.get("filter", jail).replace("%(__name__)s", jail).split("[", 1)[0].strip()
    fdir = filter_dir or (jail_file.parent / "filter.d")
    fpath = find_config(fdir, filter_name)
    fscope: dict[str, str] = {}
    if fpath is not None and filter_name != "recidive":
        fscope = filter_scope(read_config(fpath))  # as the shipper's --filter reads it
    if filter_name == "recidive" or _BAN_LINE.search(fscope.get("failregex", "")):
        own = set(getattr(cp, "_sections", {}).get(jail, {}))  # the section's own keys, not [DEFAULT]'s
        _recidive(values, own, out, notes)
    else:
        _log_source(values, filter_name, fdir, fpath, fscope, out, shipper, notes)
    own_raw = dict(cp.items(jail, raw=True))
    for key in sorted(values):
        if key in _HANDLED or (key in cp.defaults() and key not in own_raw):
            continue
        if key.startswith("action") or key in _HARMLESS:
            notes.append(f"{key} = {values[key][:60]!r}: enforcement is fleet2ban's enforcer's job")
        else:
            notes.append(f"{key} = {values[key][:60]!r}: no fleet2ban equivalent")
    try:
        JailSettings.model_validate(out)
    except ValidationError as exc:
        problems = format_validation_error(exc, head="")
        raise ImportFail2banError(f"the imported jail is not valid: {one_line(problems)}") from None
    settings: dict[str, Any] = {"jails": [out]}
    if shipper:
        settings["shipper"] = shipper
    return ImportResult(settings, notes)


def _choose_jail(cp: Any, jail_file: Path, jail: str | None) -> str:
    """``jail``, or the file's one enabled jail (or its one jail); an error naming the candidates."""
    sections = [s for s in cp.sections() if s not in ("INCLUDES", "Definition", "Init")]
    if jail is None:
        enabled = [s for s in sections if cp.get(s, "enabled", fallback="false").strip().lower() == "true"]
        candidates = enabled or sections
        if len(candidates) != 1:
            raise ImportFail2banError(
                f"{jail_file} has {len(candidates)} candidate jails ({', '.join(candidates) or 'none'}): use --jail"
            )
        jail = candidates[0]
    if not cp.has_section(jail):
        raise ImportFail2banError(f"no jail [{jail}] in {jail_file} (found: {', '.join(sections)})")
    return jail


def _counting(values: dict[str, str], notes: list[str]) -> dict[str, Any]:
    """maxretry, findtime, bantime, ports and ignoreip, those the jail sets."""
    out: dict[str, Any] = {}
    if "maxretry" in values:
        out["maxretry"] = _int("maxretry", values["maxretry"])
    for key in ("findtime", "bantime"):
        if key in values:
            out[key] = _time(key, values[key])
    if "port" in values:
        ports = parse_ports(values["port"], notes)
        if ports:
            out["ports"] = ports
    if "ignoreip" in values:
        out["ignoreip"] = parse_ignoreip(values["ignoreip"], notes)
    return out


def _increment(values: dict[str, str]) -> dict[str, Any]:
    """fail2ban's ``bantime.*`` options as ``bantime_increment`` (empty: none set)."""
    inc: dict[str, Any] = {}
    if values.get("bantime.increment", "").lower() == "true":
        inc["enabled"] = True
    for key, name, conv in (
        ("bantime.factor", "factor", lambda v: _float("bantime.factor", v)),
        ("bantime.formula", "formula", str),
        ("bantime.maxtime", "maxtime", lambda v: _time("bantime.maxtime", v)),
        ("bantime.rndtime", "rndtime", lambda v: _time("bantime.rndtime", v)),
    ):
        if values.get(key):
            inc[name] = conv(values[key])
    if values.get("bantime.multipliers"):
        inc["multipliers"] = [_float("bantime.multipliers", x) for x in values["bantime.multipliers"].split()]
    if values.get("bantime.overalljails", "").lower() == "true":
        inc["overalljails"] = True
    return inc


def _log_source(
    values: dict[str, str],
    filter_name: str,
    fdir: Path,
    fpath: Path | None,
    fscope: dict[str, str],
    out: dict[str, Any],
    shipper: dict[str, Any],
    notes: list[str],
) -> None:
    """A jail over a log: the shipper's ``log_path``, and its filter as the built-in parser (the seed's
    AMPS filter) or ``filter_path`` with the reasons its failregex names."""
    if values.get("logpath"):
        paths = values["logpath"].split()
        shipper["log_path"] = paths[0]
        if len(paths) > 1:
            notes.append(f"logpath lists {len(paths)} files: a shipper follows one; took {paths[0]}")
    if "[" in values.get("filter", ""):
        notes.append(f"filter parameters {values['filter']!r} are not interpreted")
    if fpath is None:
        notes.append(f"filter {filter_name!r} not found in {fdir}: kept the built-in AMPS parser")
        return
    regexes = regex_lines(filter_option(fscope, "failregex", what=str(fpath)))
    seed = [SEED_REGEX.search(rx) for rx in regexes]
    if regexes and all(seed):
        reasons = [r for m in seed if m for r in m.group(1).split("|")]
        out["reasons"] = list(dict.fromkeys(reasons))
        notes.append(
            f"filter {fpath.name} is the seed's AMPS filter: using the built-in strict parser instead "
            "(it cannot be fooled by hostile client names)"
        )
    else:
        shipper["filter_path"] = str(fpath)
        reasons_opt = _reasons_from_regex(regexes)
        out["reasons"] = reasons_opt or ["match"]
        if reasons_opt is None:
            notes.append("could not infer the filter's reasons: the jail counts every match")
    if fscope.get("datepattern"):
        notes.append("datepattern: the shipper reads AMPS's own leading timestamp")
