"""The notifier's handlers, called directly: who gets which email, once, and what happens when SMTP balks."""

from __future__ import annotations

import datetime as dt

import pytest

from services.notifier.handlers import Recipients, handle_alert_raised, handle_report_exported, handle_report_failed
from shared.events import AlertRaised, LanguageCount, ReportExported, ReportFailed, ReportSpec
from shared.handling import Rejected, RetryLater
from tests.support.fakes import InMemorySentEmails, RecordingMailer, meta_of

ADMINS = Recipients(admins=["ops@example.com"], alert_interval_seconds=60)
SPEC = ReportSpec(period="week", since=dt.date(2026, 11, 15), notify="reader@example.com")


def exported(notify: str | None = "reader@example.com") -> ReportExported:
    return ReportExported(
        report_id="r-1",
        path="/reports/hot-week-2026-11-15-r-1.csv",
        rows=3,
        sha256="0" * 64,
        layout="rows",
        spec=SPEC.model_copy(update={"notify": notify}),
        repositories=1234,
        top_languages=[LanguageCount(language="Python", count=2)],
    )


def test_the_requester_hears_of_the_report_in_their_language_once() -> None:
    mailer, sent = RecordingMailer(), InMemorySentEmails()
    event = exported()
    handle_report_exported(event, meta_of(event, locale="fr-CA"), mailer=mailer, sent=sent)
    handle_report_exported(event, meta_of(event, locale="fr-CA"), mailer=mailer, sent=sent)  # a redelivery
    [email] = mailer.sent
    assert email.to == ["reader@example.com"] and email.kind == "ready" and email.language == "fr"
    assert "1\u00a0234" in email.message.body and "hot-week-2026-11-15-r-1.csv" in email.message.body
    assert "Partiel" not in email.message.body


def test_a_partial_report_s_email_says_which_pages_github_served_in_part() -> None:
    mailer = RecordingMailer()
    event = exported().model_copy(update={"incomplete_pages": [2, 5]})
    handle_report_exported(event, meta_of(event, locale="de"), mailer=mailer, sent=InMemorySentEmails())
    [email] = mailer.sent
    assert "Unvollständig: GitHub hat die Seiten 2, 5" in email.message.body


def test_a_report_nobody_asked_to_hear_of_sends_nothing() -> None:
    mailer = RecordingMailer()
    event = exported(notify=None)
    handle_report_exported(event, meta_of(event), mailer=mailer, sent=InMemorySentEmails())
    assert mailer.sent == []


def test_an_email_another_replica_is_sending_is_retried_later_not_sent_twice() -> None:
    sent = InMemorySentEmails()
    sent.start_sending("r-1:ready:reader@example.com")
    event = exported()
    with pytest.raises(RetryLater, match="being sent by another replica"):
        handle_report_exported(event, meta_of(event), mailer=RecordingMailer(), sent=sent)


def test_smtp_down_frees_the_email_for_the_retry() -> None:
    mailer, sent = RecordingMailer(), InMemorySentEmails()
    mailer.failures.append(RetryLater("SMTP unreachable"))
    event = exported()
    with pytest.raises(RetryLater):
        handle_report_exported(event, meta_of(event), mailer=mailer, sent=sent)
    handle_report_exported(event, meta_of(event), mailer=mailer, sent=sent)
    assert len(mailer.sent) == 1 and sent.sending == set()


def failed(notify: str | None) -> ReportFailed:
    spec = SPEC.model_copy(update={"notify": notify})
    return ReportFailed(report_id="r-1", stage="fetch", reason="GitHub answered 422", spec=spec)


def test_a_failure_reaches_the_requester_and_the_admins() -> None:
    mailer = RecordingMailer()
    event = failed("reader@example.com")
    handle_report_failed(
        event, meta_of(event, locale="de"), mailer=mailer, sent=InMemorySentEmails(), recipients=ADMINS
    )
    assert [(e.kind, e.to, e.language) for e in mailer.sent] == [
        ("failed", ["reader@example.com"], "de"),
        ("admin-failed", ["ops@example.com"], "en"),
    ]
    assert "GitHub answered 422" in mailer.sent[1].message.body and "reader@example.com" in mailer.sent[1].message.body


def test_a_refused_requester_address_still_tells_the_admins() -> None:
    mailer = RecordingMailer()
    mailer.failures.append(Rejected("550 no such user"))
    event = failed("nobody@example.com")
    handle_report_failed(event, meta_of(event), mailer=mailer, sent=InMemorySentEmails(), recipients=ADMINS)
    assert [e.kind for e in mailer.sent] == ["admin-failed"]


def test_a_failure_without_requester_tells_only_the_admins() -> None:
    mailer = RecordingMailer()
    event = ReportFailed(report_id="r-2", stage="cancelled", reason="cancelled by request")
    handle_report_failed(event, meta_of(event), mailer=mailer, sent=InMemorySentEmails(), recipients=ADMINS)
    assert [(e.kind, e.to) for e in mailer.sent] == [("admin-failed", ["ops@example.com"])]


def alert(fingerprint: str = "f-1") -> AlertRaised:
    return AlertRaised(
        service="fetcher", level="ERROR", logger="hotrepos.fetcher", message="boom", fingerprint=fingerprint
    )


def test_identical_alerts_make_one_email_per_interval_but_its_own_retry_goes_through() -> None:
    mailer, sent = RecordingMailer(), InMemorySentEmails()
    first, second = alert(), alert()
    first_meta, second_meta = meta_of(first, event_id="a-1"), meta_of(second, event_id="a-2")
    mailer.failures.append(RetryLater("SMTP unreachable"))
    with pytest.raises(RetryLater):
        handle_alert_raised(first, first_meta, mailer=mailer, sent=sent, recipients=ADMINS)
    handle_alert_raised(second, second_meta, mailer=mailer, sent=sent, recipients=ADMINS)  # throttled
    handle_alert_raised(first, first_meta, mailer=mailer, sent=sent, recipients=ADMINS)  # the retry
    [email] = mailer.sent
    assert email.kind == "alert" and email.to == ["ops@example.com"] and "boom" in email.message.subject


def test_alerts_without_admins_send_nothing() -> None:
    mailer = RecordingMailer()
    event = alert()
    handle_alert_raised(event, meta_of(event), mailer=mailer, sent=InMemorySentEmails(), recipients=Recipients([]))
    assert mailer.sent == []
