"""Email texts per locale, with dates and numbers formatted by Babel; unknown locales fall back to en."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_decimal

from shared.events import LanguageCount

DEFAULT_LOCALE = "en"

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "day": "daily",
        "week": "weekly",
        "month": "monthly",
        "ready_subject": "Your {period} hotrepos report is ready: {count} repositories",
        "ready_body": (
            "Hello,\n\n"
            "Your {period} report of the hottest new GitHub repositories is ready.\n\n"
            "Repositories: {count}\n"
            "Created on or after: {since}\n"
            "Top languages:\n{languages}\n\n"
            "{partial}"
            "File: {file}\n"
            "Report: {report_id}\n"
        ),
        "partial": (
            "Partial: GitHub answered pages {pages} only in part, "
            "even after retries: some repositories may be missing.\n\n"
        ),
        "failed_subject": "Your hotrepos report could not be produced",
        "failed_body": (
            "Hello,\n\n"
            "Your report {report_id} could not be produced.\n"
            "Stage: {stage}\n"
            "Reason: {reason}\n\n"
            "You can request it again at any time.\n"
        ),
    },
    "fr": {
        "day": "quotidien",
        "week": "hebdomadaire",
        "month": "mensuel",
        "ready_subject": "Votre rapport hotrepos {period} est prêt : {count} dépôts",
        "ready_body": (
            "Bonjour,\n\n"
            "Votre rapport {period} des nouveaux dépôts GitHub les plus populaires est prêt.\n\n"
            "Dépôts : {count}\n"
            "Créés à partir du : {since}\n"
            "Langages principaux :\n{languages}\n\n"
            "{partial}"
            "Fichier : {file}\n"
            "Rapport : {report_id}\n"
        ),
        "partial": (
            "Partiel : GitHub n'a répondu qu'en partie pour les pages {pages}, "
            "même après nouvelles tentatives : des dépôts peuvent manquer.\n\n"
        ),
        "failed_subject": "Votre rapport hotrepos n'a pas pu être produit",
        "failed_body": (
            "Bonjour,\n\n"
            "Votre rapport {report_id} n'a pas pu être produit.\n"
            "Étape : {stage}\n"
            "Raison : {reason}\n\n"
            "Vous pouvez le demander de nouveau à tout moment.\n"
        ),
    },
    "de": {
        "day": "täglicher",
        "week": "wöchentlicher",
        "month": "monatlicher",
        "ready_subject": "Ihr {period} hotrepos-Bericht ist fertig: {count} Repositorys",
        "ready_body": (
            "Hallo,\n\n"
            "Ihr {period} Bericht über die angesagtesten neuen GitHub-Repositorys ist fertig.\n\n"
            "Repositorys: {count}\n"
            "Erstellt ab: {since}\n"
            "Wichtigste Sprachen:\n{languages}\n\n"
            "{partial}"
            "Datei: {file}\n"
            "Bericht: {report_id}\n"
        ),
        "partial": (
            "Unvollständig: GitHub hat die Seiten {pages} auch nach Wiederholungen "
            "nur teilweise geliefert: es können Repositorys fehlen.\n\n"
        ),
        "failed_subject": "Ihr hotrepos-Bericht konnte nicht erstellt werden",
        "failed_body": (
            "Hallo,\n\n"
            "Ihr Bericht {report_id} konnte nicht erstellt werden.\n"
            "Schritt: {stage}\n"
            "Grund: {reason}\n\n"
            "Sie können ihn jederzeit erneut anfordern.\n"
        ),
    },
    "es": {
        "day": "diario",
        "week": "semanal",
        "month": "mensual",
        "ready_subject": "Tu informe {period} de hotrepos está listo: {count} repositorios",
        "ready_body": (
            "Hola:\n\n"
            "Tu informe {period} de los nuevos repositorios de GitHub más populares está listo.\n\n"
            "Repositorios: {count}\n"
            "Creados desde el: {since}\n"
            "Lenguajes principales:\n{languages}\n\n"
            "{partial}"
            "Archivo: {file}\n"
            "Informe: {report_id}\n"
        ),
        "partial": (
            "Parcial: GitHub respondió solo en parte para las páginas {pages}, "
            "incluso tras reintentos: pueden faltar repositorios.\n\n"
        ),
        "failed_subject": "No se pudo generar tu informe de hotrepos",
        "failed_body": (
            "Hola:\n\n"
            "No se pudo generar tu informe {report_id}.\n"
            "Etapa: {stage}\n"
            "Motivo: {reason}\n\n"
            "Puedes solicitarlo de nuevo en cualquier momento.\n"
        ),
    },
}


@dataclass(frozen=True)
class Email:
    subject: str
    body: str


def resolve_locale(tag: str | None) -> Locale:
    """The best supported locale for a BCP 47 tag: fr-CA formats as fr-CA with French texts."""
    if tag:
        try:
            locale = Locale.parse(tag, sep="-")
        except (ValueError, UnknownLocaleError):
            try:
                locale = Locale.parse(tag.split("-")[0])
            except (ValueError, UnknownLocaleError):
                return Locale.parse(DEFAULT_LOCALE)
        if locale.language in TEXTS:
            return locale
    return Locale.parse(DEFAULT_LOCALE)


def _texts(locale: Locale) -> dict[str, str]:
    return TEXTS.get(locale.language, TEXTS[DEFAULT_LOCALE])


def ready_email(
    *,
    locale_tag: str | None,
    report_id: str,
    period: str,
    since: dt.date,
    repositories: int,
    top_languages: list[LanguageCount],
    file: str,
    incomplete_pages: list[int] | None = None,
) -> Email:
    locale = resolve_locale(locale_tag)
    texts = _texts(locale)
    values = {
        "period": texts[period],
        "count": format_decimal(repositories, locale=locale),
        "since": format_date(since, format="long", locale=locale),
        "languages": "\n".join(
            f"  - {lang.language}: {format_decimal(lang.count, locale=locale)}" for lang in top_languages
        )
        or "  -",
        "file": file,
        "report_id": report_id,
        "partial": texts["partial"].format(pages=", ".join(map(str, incomplete_pages))) if incomplete_pages else "",
    }
    return Email(texts["ready_subject"].format(**values), texts["ready_body"].format(**values))


def failed_email(*, locale_tag: str | None, report_id: str, stage: str, reason: str) -> Email:
    texts = _texts(resolve_locale(locale_tag))
    values = {"report_id": report_id, "stage": stage, "reason": reason}
    return Email(texts["failed_subject"].format(**values), texts["failed_body"].format(**values))


def admin_failed_email(*, report_id: str, stage: str, reason: str, requester: str | None) -> Email:
    return Email(
        f"[hotrepos] report {report_id} failed at stage {stage}",
        f"Report: {report_id}\nStage: {stage}\nRequester: {requester or '-'}\nReason: {reason}\n",
    )


def alert_email(
    *, service: str, level: str, logger: str, message: str, exception: str | None, suppressed: int
) -> Email:
    first_line = message.splitlines()[0] if message else ""
    body = f"Service: {service}\nLevel: {level}\nLogger: {logger}\n\n{message}\n"
    if suppressed:
        body += f"\n({suppressed} identical alerts were suppressed since the previous one.)\n"
    if exception:
        body += f"\n{exception}\n"
    return Email(f"[hotrepos] {level} in {service}: {first_line[:150]}", body)
