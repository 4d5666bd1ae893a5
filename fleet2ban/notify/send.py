"""Delivery: HTTP POST (httpx) for webhooks and Slack, SMTP (smtplib, STARTTLS) for e-mail.

Each sender raises :class:`DeliveryError` with one line on any failure (the agent backs off and retries).
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import ssl
from collections.abc import Sequence

import httpx

from fleet2ban.contract import Decision
from fleet2ban.exceptions import Fleet2banError
from fleet2ban.notify import render
from fleet2ban.settings import DestinationSettings, SmtpSettings

SIGNATURE_HEADER = "X-Fleet2ban-Signature"


class DeliveryError(Fleet2banError):
    """A message could not be delivered (it will be retried)."""


def signature(secret: str, body: bytes) -> str:
    """``sha256=HEX``: the HMAC-SHA256 of the body under the destination's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Sender:
    """Sends one message (a decision or a digest) to one destination."""

    def __init__(self, dest: DestinationSettings, smtp: SmtpSettings) -> None:
        self.dest = dest
        self.smtp = smtp
        self._http = httpx.Client(timeout=dest.timeout_s) if dest.kind != "email" else None

    def send(self, decisions: Sequence[Decision], more: int) -> None:
        if self.dest.kind == "email":
            self._email(decisions, more)
            return
        body = (
            render.slack_json(decisions, more)
            if self.dest.kind == "slack"
            else render.webhook_json(decisions, more)
        )
        headers = {"Content-Type": "application/json", **self.dest.headers}
        if self.dest.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.dest.secret.get_secret_value(), body)
        assert self._http is not None and self.dest.url is not None
        try:
            res = self._http.post(self.dest.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{self.dest.name}: {type(exc).__name__}: {exc}") from None
        if not 200 <= res.status_code < 300:
            raise DeliveryError(f"{self.dest.name}: HTTP {res.status_code} from {self.dest.url}")

    def _email(self, decisions: Sequence[Decision], more: int) -> None:
        s = self.smtp
        msg = render.email(decisions, more, s.from_addr, self.dest.to)
        try:
            with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
                if s.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.username:
                    smtp.login(s.username, s.password.get_secret_value() if s.password else "")
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"{self.dest.name}: SMTP {s.host}:{s.port}: {exc}") from None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
