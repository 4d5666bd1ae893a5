"""Bans operators already have, turned into manual ``ban`` decisions (``fleet2ban bans import``), and the
bans in force written out again (``fleet2ban bans export``).

Pure but for reading the file: :func:`read_items` parses one source format into :class:`Item` (address,
jail, when it ends); :func:`plan` applies the same safety rails as ``bans add`` to each and returns the
decisions to write, what was refused (and why) and what had already expired. Formats:

- ``fail2ban-db``: fail2ban's own SQLite database (``/var/lib/fail2ban/fail2ban.sqlite3``): table ``bips``,
  the latest ban of each (ip, jail). A ban is in force while ``timeofban + bantime`` is ahead, or always
  when ``bantime`` is negative (permanent); what is left of it is kept.
- ``csv``: a header naming ``ip`` and optionally ``jail``, ``expires_at`` (RFC 3339; ``permanent``; empty =
  the default length) and ``reason``.
- ``json``: JSON lines or one array of objects with ``ip`` and optionally ``jail``, ``expires_at`` (RFC 3339,
  or null = permanent; absent = the default length) and ``reason`` (what ``bans export --format json``
  writes).
- ``lines``: one address or CIDR per line (blocklists); ``#`` and ``;`` start comments, anything after the
  first word of a line is ignored.

The default length is ``--ttl`` when given, else the jail's ``bantime``. An import is idempotent: a
decision's id derives from (jail, target, expiry, reason), so importing the same file twice writes the
same decisions again, which the processor and the enforcers treat as one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from fleet2ban.audit.manual import manual_ban_decision
from fleet2ban.contract import (
    MAX_BAN_SECONDS,
    BanState,
    ContractError,
    Decision,
    normalize_target,
    rfc3339,
)
from fleet2ban.exceptions import ConfigError
from fleet2ban.rails import Rails
from fleet2ban.safetext import printable
from fleet2ban.settings import JailSettings, Settings

ImportFormat = Literal["fail2ban-db", "csv", "json", "lines"]
FORMATS: tuple[ImportFormat, ...] = ("fail2ban-db", "csv", "json", "lines")

PERMANENT = "permanent"
"""An item's ``expires`` that never comes."""


@dataclass(frozen=True)
class Item:
    """One ban read from a source: ``expires`` is a time, :data:`PERMANENT`, or None (the default)."""

    where: str
    """Where it was read (``FILE:LINE`` or ``FILE:bips`` row), for messages."""
    target: str
    jail: str | None = None
    expires: datetime | str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Refused:
    where: str
    target: str
    why: str


@dataclass
class Plan:
    decisions: list[Decision] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    expired: int = 0
    duplicates: int = 0


# ------------------------------------------------------------------------------------------- reading


def read_items(path: Path, fmt: ImportFormat) -> Iterator[Item]:
    """The bans in ``path``; raises :class:`ConfigError` (one line) when the file is not of ``fmt``."""
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    if fmt == "fail2ban-db":
        yield from _fail2ban_db(path)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path} is not UTF-8 text (give --format fail2ban-db for a fail2ban database)"
        ) from None
    if fmt == "csv":
        yield from _csv(path, text)
    elif fmt == "json":
        yield from _json(path, text)
    else:
        yield from _lines(path, text)


def _fail2ban_db(path: Path) -> Iterator[Item]:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open fail2ban database {path}: {exc}") from None
    try:
        rows = db.execute("SELECT ip, jail, timeofban, bantime FROM bips ORDER BY timeofban").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"{path} is not a fail2ban database with a bips table (fail2ban 0.11+): {exc}"
        ) from None
    finally:
        db.close()
    for n, (ip, jail, timeofban, bantime) in enumerate(rows, 1):
        where = f"{path}:bips#{n}"
        try:
            if int(bantime) < 0:
                expires: datetime | str = PERMANENT
            else:
                expires = datetime.fromtimestamp(int(timeofban) + int(bantime), UTC)
        except (TypeError, ValueError, OverflowError, OSError):
            yield Item(where, str(ip), str(jail), None, "unreadable timeofban/bantime")
            continue
        yield Item(where, str(ip), str(jail), expires)


def _time(text: str, where: str) -> datetime | str | None:
    text = text.strip()
    if not text:
        return None
    if text.lower() == PERMANENT:
        return PERMANENT
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{where}: expires_at {text[:40]!r} is not an RFC 3339 time") from None
    if ts.tzinfo is None:
        raise ConfigError(f"{where}: expires_at {text[:40]!r} has no UTC offset")
    return ts.astimezone(UTC)


def _csv(path: Path, text: str) -> Iterator[Item]:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "ip" not in fields:
        raise ConfigError(f"{path}: a CSV import needs a header with an 'ip' column (got {fields[:6]})")
    reader.fieldnames = fields
    for row in reader:
        where = f"{path}:{reader.line_num}"
        ip = (row.get("ip") or "").strip()
        if not ip:
            continue
        yield Item(
            where,
            ip,
            (row.get("jail") or "").strip() or None,
            _time(row.get("expires_at") or "", where),
            (row.get("reason") or "").strip() or None,
        )


def _json(path: Path, text: str) -> Iterator[Item]:
    stripped = text.lstrip()
    objs: Iterable[tuple[int, object]]
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        objs = enumerate(data, 1)
    else:
        parsed: list[tuple[int, object]] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                parsed.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not valid JSON ({exc})") from None
        objs = parsed
    for n, obj in objs:
        where = f"{path}:{n}"
        if not isinstance(obj, dict) or not isinstance(obj.get("ip"), str):
            raise ConfigError(f"{where}: each entry must be an object with an 'ip' string")
        expires: datetime | str | None
        if "expires_at" not in obj:
            expires = None
        elif obj["expires_at"] is None:
            expires = PERMANENT
        elif isinstance(obj["expires_at"], str):
            expires = _time(obj["expires_at"], where)
        else:
            raise ConfigError(f"{where}: expires_at must be an RFC 3339 string or null")
        jail = obj.get("jail")
        reason = obj.get("reason")
        yield Item(
            where,
            obj["ip"],
            jail if isinstance(jail, str) and jail else None,
            expires,
            reason if isinstance(reason, str) and reason else None,
        )


def _lines(path: Path, text: str) -> Iterator[Item]:
    for n, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].split(";", 1)[0].strip()
        if body:
            yield Item(f"{path}:{n}", body.split()[0])


# ------------------------------------------------------------------------------------------- planning


def import_id(jail: str, target: str, expires: datetime | None, reason: str) -> str:
    """A manual ban's id that is the same each time the same entry is imported."""
    exp = "-" if expires is None else rfc3339(expires)
    digest = hashlib.blake2b(f"{jail}|{target}|{exp}|{reason}".encode(), digest_size=10).hexdigest()
    return f"mb-{digest}"


def plan(
    items: Iterable[Item],
    settings: Settings,
    *,
    now: datetime,
    jail: str | None,
    ttl: timedelta | None,
    reason: str,
    by: str,
) -> Plan:
    """The manual ban decisions for ``items``, after the rails; refused and expired ones counted.

    ``jail`` maps every item to that jail (else an item's own jail must be configured, or the first
    configured jail is used for items without one). ``ttl`` is the length of items without an expiry
    (else their jail's bantime). One (jail, target) appears once: the entry that ends last wins.
    """
    out = Plan()
    rails = Rails.build(settings.enforcer, settings.jails)
    chosen: dict[tuple[str, str], tuple[Decision, str]] = {}
    for item in items:
        try:
            target = normalize_target(item.target)
        except ContractError as exc:
            out.refused.append(Refused(item.where, item.target[:80], str(exc)))
            continue
        if item.reason is not None and item.reason.startswith("unreadable"):
            out.refused.append(Refused(item.where, target, item.reason))
            continue
        j = _jail(settings, jail or item.jail)
        if j is None:
            out.refused.append(
                Refused(item.where, target, f"no jail named {item.jail!r} here (map it with --jail NAME)")
            )
            continue
        refusal = rails.refusal(j.name, target)  # the rails of the processor and every enforcer
        if refusal is not None:
            out.refused.append(Refused(item.where, target, refusal))
            continue
        expires = _expiry(item, j, now, ttl)
        if expires is not None and expires <= now:
            out.expired += 1
            continue
        if expires is not None and expires - now > _LONGEST:  # the contract refuses such a decision
            out.refused.append(
                Refused(
                    item.where,
                    target,
                    f"expires {rfc3339(expires)}, more than ten years from now (a ban without end is"
                    " 'permanent')",
                )
            )
            continue
        why = (item.reason or reason).strip()
        decision = manual_ban_decision(
            import_id(j.name, target, expires, why), j, target, expires, why, by, now
        )
        key = (j.name, target)
        prev = chosen.get(key)
        if prev is not None:
            out.duplicates += 1
            if not _ends_later(decision, prev[0]):
                continue
        chosen[key] = (decision, item.where)
    out.decisions = [d for d, _w in chosen.values()]
    return out


_LONGEST = timedelta(seconds=MAX_BAN_SECONDS)


def _jail(settings: Settings, name: str | None) -> JailSettings | None:
    if name is None:
        return next((j for j in settings.jails if j.enabled), settings.jails[0])
    return next((j for j in settings.jails if j.name == name), None)


def _expiry(item: Item, j: JailSettings, now: datetime, ttl: timedelta | None) -> datetime | None:
    if item.expires == PERMANENT:
        return None
    if isinstance(item.expires, datetime):
        return item.expires
    if ttl is not None:
        return now + ttl
    return None if j.permanent else now + timedelta(seconds=j.bantime)


def _ends_later(a: Decision, b: Decision) -> bool:
    if a.expires_at is None:
        return b.expires_at is not None
    return b.expires_at is not None and a.expires_at > b.expires_at


# ------------------------------------------------------------------------------------------- export


ExportFormat = Literal["csv", "json", "lines"]


def export_rows(bans: Iterable[BanState]) -> Iterator[dict[str, str | None]]:
    """Rows of ``bans export``: ip, jail, expires_at (RFC 3339 UTC or None = permanent), origin, reason."""
    for d in bans:
        yield {
            "ip": d.ip,
            "jail": d.jail,
            "expires_at": None if d.expires_at is None else rfc3339(d.expires_at),
            "origin": d.origin,
            "reason": None if d.reason is None else printable(d.reason),
        }


def render_export(rows: Iterable[dict[str, str | None]], fmt: ExportFormat) -> Iterator[str]:
    """The lines of an export file (each without its newline); what :func:`read_items` reads back."""
    if fmt == "lines":
        for r in rows:
            yield str(r["ip"])
        return
    if fmt == "json":
        for r in rows:
            yield json.dumps(r, ensure_ascii=True, separators=(",", ":"))
        return
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, ["ip", "jail", "expires_at", "reason"], extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "expires_at": r["expires_at"] or PERMANENT})
    yield from buf.getvalue().splitlines()
