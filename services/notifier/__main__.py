"""Composition root of the notifier: `python -m services.notifier`."""

from __future__ import annotations

from functools import partial

from pydantic import EmailStr, Field

from services.notifier.handlers import (
    Recipients,
    handle_alert_raised,
    handle_report_exported,
    handle_report_failed,
)
from services.notifier.mailer import SmtpMailer
from services.notifier.sent_emails import RedisSentEmails
from shared.bootstrap import bootstrap
from shared.pipeline import Route
from shared.settings import CommonSettings, load_settings
from shared.topology import NOTIFIER_ALERTS, NOTIFIER_EXPORTED, NOTIFIER_FAILED


class NotifierSettings(CommonSettings):
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    mail_from: EmailStr = "hotrepos@example.com"


def main() -> None:
    settings = load_settings(NotifierSettings)
    service = bootstrap("notifier", settings)
    mailer = SmtpMailer(settings.smtp_host, settings.smtp_port, settings.mail_from)
    sent = RedisSentEmails(service.redis)
    recipients = Recipients(list(settings.admins), settings.alert_interval_seconds)
    service.run(
        {
            NOTIFIER_EXPORTED: {"report.exported": Route(partial(handle_report_exported, mailer=mailer, sent=sent))},
            NOTIFIER_FAILED: {
                "report.failed": Route(partial(handle_report_failed, mailer=mailer, sent=sent, recipients=recipients))
            },
            NOTIFIER_ALERTS: {
                "alert.raised": Route(partial(handle_alert_raised, mailer=mailer, sent=sent, recipients=recipients))
            },
        },
        prefetch_count=4,
    )


if __name__ == "__main__":
    main()
