"""SMTP adapter: a message that cannot be sent now raises RetryLater, so no email is lost."""

from __future__ import annotations

import email.utils
import hashlib
import re
import smtplib
from email.message import EmailMessage

from services.notifier.templates import Email
from shared import metrics
from shared.handling import Rejected, RetryLater

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]+")


def header_safe(value: str) -> str:
    """No CR, LF or other control character may reach a header: that is how headers are injected."""
    return _CONTROL_CHARACTERS.sub(" ", value).strip()


class SmtpMailer:
    def __init__(self, host: str, port: int, sender: str, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.timeout = timeout

    def send(self, message: Email, to: list[str], *, key: str, kind: str, language: str = "en") -> None:
        try:
            self._send(message, to, key=key, language=language)
        except Exception:
            metrics.EMAILS.labels(kind=kind, outcome="failed").inc()
            raise
        metrics.EMAILS.labels(kind=kind, outcome="sent").inc()

    def _send(self, message: Email, to: list[str], *, key: str, language: str) -> None:
        mail = EmailMessage()
        mail["From"] = header_safe(self.sender)
        mail["To"] = ", ".join(header_safe(address) for address in to)
        mail["Subject"] = header_safe(message.subject)
        mail["Date"] = email.utils.formatdate(usegmt=True)
        # A stable Message-ID lets mail clients fold a resend into the same message.
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        mail["Message-ID"] = f"<{digest}@hotrepos>"
        mail.set_content(message.body)
        # After set_content, which replaces every Content-* header.
        mail["Content-Language"] = header_safe(language)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            raise Rejected(f"SMTP server refused every recipient: {exc.recipients}") from exc
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                raise RetryLater(f"SMTP temporary failure {exc.smtp_code}") from exc
            raise Rejected(f"SMTP server refused the message: {exc.smtp_code} {exc.smtp_error!r}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise RetryLater(f"SMTP server {self.host}:{self.port} unreachable: {exc}") from exc
