"""Message bodies for one decision or a digest of several (pure).

Text shown to people (Slack, e-mail) names the decision's address, jail, length, hosts and, for manual
decisions, who and why; never the evidence lines, whose client names are the attacker's. Operator text
is made inert (:func:`fleet2ban.safetext.printable`) and, for Slack, its control characters ``&<>`` are
escaped as Slack asks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from email.message import EmailMessage

from fleet2ban.contract import Decision, encode, rfc3339
from fleet2ban.safetext import printable


def _length(d: Decision) -> str:
    if d.action != "ban":
        return ""
    if d.expires_at is None:
        return " permanently"
    secs = max(0, round((d.expires_at - d.at).total_seconds()))
    if secs % 86400 == 0 and secs:
        return f" for {secs // 86400}d"
    if secs % 3600 == 0 and secs:
        return f" for {secs // 3600}h"
    if secs % 60 == 0 and secs:
        return f" for {secs // 60}m"
    return f" for {secs}s"


def line(d: Decision) -> str:
    """One decision as one line of plain text."""
    what = f"{d.action} {d.ip} in jail {d.jail}{_length(d)}"
    if d.origin == "manual":
        what += f" by {d.by or '?'}"
        if d.reason:
            what += f": {d.reason}"
    elif d.action == "ban":
        what += f" ({d.failures} failures on {', '.join(d.hosts) or '?'})"
        if d.scope is not None:  # jail min_hosts not reached: banned only there
            what += f", only on {', '.join(d.scope)}"
    elif d.reason:
        what += f" ({d.reason})"
    return printable(what)


def headline(decisions: Sequence[Decision], more: int) -> str:
    if len(decisions) == 1 and not more:
        return f"fleet2ban: {line(decisions[0])}"
    bans = sum(1 for d in decisions if d.action == "ban")
    return f"fleet2ban: {len(decisions) + more} decisions ({bans} bans listed of {len(decisions)})"


def webhook_json(decisions: Sequence[Decision], more: int) -> bytes:
    """The generic webhook body: ``{"source", "count", "truncated", "decisions": [the wire records]}``."""
    body = b'{"source":"fleet2ban","count":%d,"truncated":%d,"decisions":[' % (len(decisions) + more, more)
    return body + b",".join(encode(d) for d in decisions) + b"]}"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_json(decisions: Sequence[Decision], more: int) -> bytes:
    """A Slack incoming-webhook body (``text`` only, which every Slack-compatible receiver takes)."""
    lines = [_slack_escape(headline(decisions, more))]
    if len(decisions) > 1 or more:
        lines += [f"• {_slack_escape(line(d))}" for d in decisions]
        if more:
            lines.append(f"… and {more} more")
    return json.dumps({"text": "\n".join(lines)}, ensure_ascii=True).encode()


def email(decisions: Sequence[Decision], more: int, sender: str, to: Sequence[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = headline(decisions, more)[:200]
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    body = [line(d) + f"  [{rfc3339(d.at)} id {d.id}]" for d in decisions]
    if more:
        body.append(f"... and {more} more (see fleet2ban bans history)")
    msg.set_content("\n".join(body) + "\n")
    return msg
