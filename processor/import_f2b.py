"""``fleet2ban import-fail2ban``: an existing fail2ban jail section (and its filter) as fleet2ban settings.

Carried over: ``maxretry``, ``findtime``, ``bantime`` (fail2ban's time abbreviations: ``10m``, ``1h30m``,
``1d``, ``-1``), ``port`` (numbers, ``a,b``, ``a:b`` ranges, service names), ``ignoreip`` (addresses and
CIDRs), ``bantime.increment`` / ``.factor`` / ``.formula`` / ``.multipliers`` / ``.maxtime`` /
``.rndtime`` / ``.overalljails``, ``logpath`` (-> ``shipper.log_path``), and the filter: the seed's AMPS
filter becomes the built-in strict parser with its reasons; any other filter is kept as
``shipper.filter_path`` with the reasons its first group can produce. Everything else (actions, backend,
usedns, hostnames in ignoreip...) is listed as not carried over.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet2ban.settings import JailSettings
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
SEED_REGEX = re.compile(r"07-0013.*\\\(<HOST>:\[\\d\]\+\\\) disconnected: \(([^()]*)\)")


def str2seconds(text: str) -> float:
    """fail2ban's time syntax (``MyTime.str2seconds``): ``600``, ``10m``, ``1h 30m``, ``-1``."""
    s = text.strip().lower()
    if not s:
        raise ImportFail2banError("empty time value")
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
    return total


def parse_ports(text: str, notes: list[str]) -> list[int]:
    ports: list[int] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part or part == "0:65535":
            if part:
                notes.append("port = 0:65535 (all ports): fleet2ban bans per port; listed none")
            continue
        if ":" in part or "-" in part:
            lo, hi = re.split(r"[:-]", part, maxsplit=1)
            a, b = int(lo), int(hi)
            if b - a > 1000:
                notes.append(f"port range {part} is too wide to list; left out")
                continue
            ports.extend(range(a, b + 1))
        elif part.isdigit():
            ports.append(int(part))
        else:
            try:
                ports.append(socket.getservbyname(part, "tcp"))
            except OSError:
                notes.append(f"port {part!r}: unknown service name")
    return ports


def parse_ignoreip(text: str, notes: list[str]) -> list[str]:
    out: list[str] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            notes.append(f"ignoreip {part!r}: not an address or CIDR (hostnames are not resolved)")
    return out


def _read_ini(path: Path) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, inline_comment_prefixes=(" #", " ;"), interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with path.open(encoding="utf-8") as f:
            cp.read_file(f)
        local = path.with_suffix(".local")
        if local.is_file() and local != path:
            with local.open(encoding="utf-8") as f:
                cp.read_file(f)
    except (OSError, configparser.Error) as exc:
        raise ImportFail2banError(f"cannot read {path}: {exc}") from None
    return cp


def _interpolate(value: str, scope: dict[str, str], depth: int = 0) -> str:
    if depth > 10:
        return value

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        return _interpolate(scope[key], scope, depth + 1) if key in scope else m.group(0)

    return re.sub(r"%\((\w[\w.-]*)\)s", sub, value)


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


def import_jail(jail_file: Path, jail: str | None = None, filter_dir: Path | None = None) -> ImportResult:
    """Read one jail section (and its filter) and return fleet2ban settings plus what was left out."""
    cp = _read_ini(jail_file)
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
    scope = {**cp.defaults(), **dict(cp.items(jail))}
    values = {k: _interpolate(v, scope).strip() for k, v in scope.items()}
    notes: list[str] = []
    out: dict[str, Any] = {"name": re.sub(r"[^A-Za-z0-9_.-]", "-", jail)[:24]}
    if "maxretry" in values:
        out["maxretry"] = int(values["maxretry"])
    if "findtime" in values:
        out["findtime"] = str2seconds(values["findtime"])
    if "bantime" in values:
        out["bantime"] = str2seconds(values["bantime"])
    if "port" in values:
        ports = parse_ports(values["port"], notes)
        if ports:
            out["ports"] = ports
    if "ignoreip" in values:
        out["ignoreip"] = parse_ignoreip(values["ignoreip"], notes)
    inc: dict[str, Any] = {}
    if values.get("bantime.increment", "").lower() == "true":
        inc["enabled"] = True
    for key, name, conv in (
        ("bantime.factor", "factor", float),
        ("bantime.formula", "formula", str),
        ("bantime.maxtime", "maxtime", str2seconds),
        ("bantime.rndtime", "rndtime", str2seconds),
    ):
        if values.get(key):
            inc[name] = conv(values[key])
    if values.get("bantime.multipliers"):
        inc["multipliers"] = [float(x) for x in values["bantime.multipliers"].split()]
    if values.get("bantime.overalljails", "").lower() == "true":
        inc["overalljails"] = True
    if inc:
        out["bantime_increment"] = inc

    shipper: dict[str, Any] = {}
    if values.get("logpath"):
        paths = values["logpath"].split()
        shipper["log_path"] = paths[0]
        if len(paths) > 1:
            notes.append(f"logpath lists {len(paths)} files: a shipper follows one; took {paths[0]}")
    filter_name = values.get("filter", jail).split("[", 1)[0].strip()
    if "[" in values.get("filter", ""):
        notes.append(f"filter parameters {values['filter']!r} are not interpreted")
    fdir = filter_dir or (jail_file.parent / "filter.d")
    fpath = next(
        (p for p in (fdir / f"{filter_name}.local", fdir / f"{filter_name}.conf") if p.is_file()), None
    )
    if fpath is None:
        notes.append(f"filter {filter_name!r} not found in {fdir}: kept the built-in AMPS parser")
    else:
        fcp = _read_ini(fpath)
        fscope = {**fcp.defaults(), **(dict(fcp.items("Init")) if fcp.has_section("Init") else {})}
        if fcp.has_section("Definition"):
            fscope.update(dict(fcp.items("Definition")))
        regexes = [
            ln.strip() for ln in _interpolate(fscope.get("failregex", ""), fscope).splitlines() if ln.strip()
        ]
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
    for key in sorted(values):
        if key in _HANDLED or (key in cp.defaults() and key not in dict(cp.items(jail, raw=True))):
            continue
        if key.startswith("action") or key in _HARMLESS:
            notes.append(f"{key} = {values[key][:60]!r}: enforcement is fleet2ban's enforcer's job")
        else:
            notes.append(f"{key} = {values[key][:60]!r}: no fleet2ban equivalent")
    try:
        JailSettings.model_validate(out)
    except Exception as exc:
        raise ImportFail2banError(f"the imported jail is not valid: {exc}") from None
    settings: dict[str, Any] = {"jails": [out]}
    if shipper:
        settings["shipper"] = shipper
    return ImportResult(settings, notes)
