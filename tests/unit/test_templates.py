import datetime as dt

from services.notifier.mailer import header_safe
from services.notifier.templates import ready_email, resolve_locale
from shared.events import LanguageCount


def ready(locale: str | None) -> tuple[str, str]:
    email = ready_email(
        locale_tag=locale,
        report_id="r1",
        period="week",
        since=dt.date(2026, 11, 15),
        repositories=1234,
        top_languages=[LanguageCount(language="Python", count=1000)],
        file="f.csv",
    )
    return email.subject, email.body


def test_french_texts_dates_and_numbers() -> None:
    subject, body = ready("fr")
    assert subject == "Votre rapport hotrepos hebdomadaire est prêt : 1\u202f234 dépôts"
    assert "Créés à partir du : 15 novembre 2026" in body
    assert "  - Python: 1\u202f000" in body


def test_german_and_spanish() -> None:
    assert "15. November 2026" in ready("de")[1] and "1.234" in ready("de")[0]
    assert "15 de noviembre de 2026" in ready("es")[1]


def test_regional_and_unknown_locales() -> None:
    assert resolve_locale("fr-CA").language == "fr"
    assert resolve_locale("xx").language == "en"
    assert resolve_locale(None).language == "en"
    subject, body = ready("pt-BR")
    assert subject.startswith("Your weekly hotrepos report is ready: 1,234")
    assert "November 15, 2026" in body


def test_header_injection_is_flattened() -> None:
    assert header_safe("hi\r\nBcc: victim@example.com") == "hi Bcc: victim@example.com"
