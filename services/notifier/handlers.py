"""Notifier handlers: email the requester and the admins; each email is sent once per report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol

import structlog

from services.notifier.sent_emails import SentEmails
from services.notifier.templates import (
    Email,
    admin_failed_email,
    alert_email,
    failed_email,
    ready_email,
    resolve_locale,
)
from shared.events import AlertRaised, ReportExported, ReportFailed
from shared.handling import EventMeta, Rejected, RetryLater

log = structlog.get_logger("hotrepos.notifier")


class Mailer(Protocol):
    def send(self, message: Email, to: list[str], *, key: str, kind: str, language: str = "en") -> None:
        """Send one email; kind names it in metrics (ready, failed, admin-failed, alert).

        Raises RetryLater when it cannot be sent now, Rejected when it never can.
        """
        ...


@dataclass(frozen=True)
class Recipients:
    admins: list[str]
    alert_interval_seconds: float = 60.0


def _send_once(
    mailer: Mailer, sent: SentEmails, message: Email, to: list[str], key: str, kind: str, language: str = "en"
) -> None:
    if not to or sent.was_sent(key):
        return
    if not sent.start_sending(key):
        # Another replica is sending this very email: come back once it has, or has died trying.
        raise RetryLater(f"email {kind} for {key} is being sent by another replica", delay=5)
    try:
        mailer.send(message, to, key=key, kind=kind, language=language)
    except Exception:
        sent.abandon(key)
        raise
    sent.mark_sent(key)


def handle_report_exported(event: ReportExported, meta: EventMeta, *, mailer: Mailer, sent: SentEmails) -> None:
    if event.spec.notify is None:
        return
    message = ready_email(
        locale_tag=meta.locale,
        report_id=event.report_id,
        period=event.spec.period,
        since=event.spec.since,
        repositories=event.repositories,
        top_languages=event.top_languages,
        file=PurePath(event.path).name,
        incomplete_pages=event.incomplete_pages,
    )
    language = resolve_locale(meta.locale).language
    key = f"{event.report_id}:ready:{event.spec.notify}"
    _send_once(mailer, sent, message, [event.spec.notify], key, "ready", language)


def handle_report_failed(
    event: ReportFailed, meta: EventMeta, *, mailer: Mailer, sent: SentEmails, recipients: Recipients
) -> None:
    requester = event.spec.notify if event.spec else None
    if requester:
        message = failed_email(
            locale_tag=meta.locale, report_id=event.report_id, stage=event.stage, reason=event.reason
        )
        language = resolve_locale(meta.locale).language
        key = f"{event.report_id}:failed:{requester}"
        try:
            _send_once(mailer, sent, message, [requester], key, "failed", language)
        except Rejected as exc:
            # A refused requester address must not keep the admins from hearing of the failure.
            log.warning("email.refused", recipient_kind="requester", reason=str(exc))
    admin_message = admin_failed_email(
        report_id=event.report_id, stage=event.stage, reason=event.reason, requester=requester
    )
    _send_once(mailer, sent, admin_message, recipients.admins, f"{event.report_id}:failed:admins", "admin-failed")


def handle_alert_raised(
    event: AlertRaised, meta: EventMeta, *, mailer: Mailer, sent: SentEmails, recipients: Recipients
) -> None:
    # Every replica of every service may raise the same alert: one email per interval in all.
    # The token lets a retry of this very alert through (say SMTP was down), and no other.
    interval = recipients.alert_interval_seconds
    if not recipients.admins or not sent.first_in_interval(event.fingerprint, interval, token=meta.id):
        return
    message = alert_email(
        service=event.service,
        level=event.level,
        logger=event.logger,
        message=event.message,
        exception=event.exception,
        suppressed=event.suppressed,
    )
    _send_once(mailer, sent, message, recipients.admins, f"alert:{meta.id}", "alert")
