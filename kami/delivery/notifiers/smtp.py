"""SMTP delivery of e-mail. Called only from outbox jobs, after the commit that asked for it."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

from kami.delivery.notifiers.base import Email


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    username: str | None = None
    password: str | None = None
    sender: str = "shop@localhost"
    sender_name: str = "Kami"
    security: str = "starttls"  # "starttls" | "ssl" | "none"
    timeout: float = 15.0


class SmtpMailer:
    def __init__(self, settings: SmtpSettings) -> None:
        self._s = settings

    def send(self, email: Email) -> None:
        s = self._s
        msg = EmailMessage()
        msg["From"] = formataddr((s.sender_name, s.sender))
        msg["To"] = email.to
        msg["Subject"] = email.subject
        msg["Message-ID"] = make_msgid(domain=s.sender.rpartition("@")[2] or "localhost")
        msg.set_content(email.text)
        smtp: smtplib.SMTP
        if s.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                s.host, s.port, timeout=s.timeout, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        with smtp:
            if s.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if s.username:
                smtp.login(s.username, s.password or "")
            smtp.send_message(msg)
