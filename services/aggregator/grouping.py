"""Fan-in result: repositories deduplicated by id and grouped by language, in report order."""

from __future__ import annotations

from collections.abc import Iterable

from shared.events import UNKNOWN_LANGUAGE, LanguageGroup, Repository


def language_order_key(language: str) -> tuple[bool, str, str]:
    # Alphabetical regardless of case, with repositories of no known language last.
    return (language == UNKNOWN_LANGUAGE, language.casefold(), language)


def repository_order_key(repository: Repository) -> tuple[int, str, int]:
    return (-repository.stargazers_count, repository.full_name.casefold(), repository.id)


def deduplicate(pages: Iterable[Iterable[Repository]]) -> list[Repository]:
    """Search pages shift while paging: keep one copy per repository id, the first seen."""
    unique: dict[int, Repository] = {}
    for page in pages:
        for repository in page:
            unique.setdefault(repository.id, repository)
    return list(unique.values())


def group_by_language(repositories: Iterable[Repository]) -> list[LanguageGroup]:
    groups: dict[str, list[Repository]] = {}
    for repository in repositories:
        groups.setdefault(repository.language or UNKNOWN_LANGUAGE, []).append(repository)
    return [
        LanguageGroup(language=language, repositories=sorted(groups[language], key=repository_order_key))
        for language in sorted(groups, key=language_order_key)
    ]
