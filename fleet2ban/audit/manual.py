"""Manual decisions (``bans add``/``bans remove``): built and checked here, written by the writer.

Pure: :func:`manual_ban` applies the safety rails (:mod:`fleet2ban.rails`) with the jail's ``ignoreip``
and the enforcer's ``protect``/``min_prefix_v4/v6`` settings, and raises before anything is written.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from fleet2ban.allowlist import AllowList, entry_text
from fleet2ban.audit.exceptions import RailRefusedError
from fleet2ban.contract import MAX_BAN_SECONDS, ContractError, Decision, normalize_target
from fleet2ban.exceptions import ConfigError
from fleet2ban.rails import check_target
from fleet2ban.settings import JailSettings, Settings


def manual_decision_id(action: str) -> str:
    """A fresh id for a manual decision: ``mb-…`` (ban) or ``mu-…`` (unban)."""
    return f"m{action[0]}-{uuid.uuid4().hex[:20]}"


def _target(text: str) -> str:
    try:
        return normalize_target(text)
    except ContractError as exc:
        raise ConfigError(str(exc)) from None


def manual_ban(
    settings: Settings,
    target: str,
    *,
    jail: str | None,
    duration: timedelta | None,
    permanent: bool,
    reason: str,
    by: str,
    now: datetime,
) -> Decision:
    """A manual ``ban`` decision for ``target`` (an address or CIDR), after the safety rails.

    ``duration`` None and not ``permanent``: the jail's ``bantime`` (negative bantime = permanent).
    Raises :class:`ConfigError` (unknown jail, unparsable target, empty reason) or
    :class:`RailRefusedError` (loopback, link-local, ignored/protected, too wide).
    """
    j = settings.jail(jail) if jail else _default_jail(settings)
    ip = _target(target)
    if not reason.strip():
        raise ConfigError("a manual ban needs --reason")
    problems = check_target(
        ip,
        protect=[*j.ignoreip, *settings.enforcer.protect],
        min_prefix_v4=settings.enforcer.min_prefix_v4,
        min_prefix_v6=settings.enforcer.min_prefix_v6,
        allow_loopback=settings.enforcer.allow_loopback,
    )
    if problems:
        raise RailRefusedError(f"refusing to ban {ip} in jail {j.name}: " + "; ".join(map(str, problems)))
    if permanent:
        expires: datetime | None = None
    elif duration is not None:
        expires = now + duration
    else:
        expires = None if j.permanent else now + timedelta(seconds=j.bantime)
    return manual_ban_decision(manual_decision_id("ban"), j, ip, expires, reason, by, now)


def manual_ban_decision(
    decision_id: str, j: JailSettings, ip: str, expires: datetime | None, reason: str, by: str, now: datetime
) -> Decision:
    """The ``ban`` decision an operator makes (``bans add``, ``bans import``), after the rails. An expiry
    more than ten years away is refused (ConfigError): every reader's decoder would drop the decision."""
    if expires is not None and (expires - now).total_seconds() > MAX_BAN_SECONDS:
        raise ConfigError(f"a ban of {ip} expiring more than ten years from now: make it permanent instead")
    return Decision(
        id=decision_id,
        action="ban",
        ip=ip,
        jail=j.name,
        at=now,
        ports=list(j.ports),
        expires_at=expires,
        ban_count=1,
        origin="manual",
        by=by,
        reason=reason.strip(),
    )


def manual_unban(
    settings: Settings, target: str, *, jail: str | None, reason: str, by: str, now: datetime
) -> Decision:
    """A manual ``unban`` decision (lifting is always allowed; the target and jail must be valid)."""
    j = settings.jail(jail) if jail else _default_jail(settings)
    if not reason.strip():
        raise ConfigError("a manual remove needs --reason")
    return Decision(
        id=manual_decision_id("unban"),
        action="unban",
        ip=_target(target),
        jail=j.name,
        at=now,
        ports=list(j.ports),
        origin="manual",
        by=by,
        reason=reason.strip(),
    )


def check_not_allowed(decision: Decision, allow: AllowList, now: datetime) -> None:
    """Raise :class:`RailRefusedError` when ``decision`` is a ban of a target an allow-list entry in force
    covers (the processor would not apply it, and every enforcer would refuse it)."""
    if decision.action != "ban":
        return
    entry = allow.match(decision.jail, decision.ip, now)
    if entry is not None:
        raise RailRefusedError(
            f"refusing to ban {decision.ip} in jail {decision.jail}: allowed: {entry_text(entry)}"
            " (fleet2ban allow remove first)"
        )


def _default_jail(settings: Settings) -> JailSettings:
    enabled = [j for j in settings.jails if j.enabled] or settings.jails
    if not enabled:
        raise ConfigError("no jail configured")
    return enabled[0]
