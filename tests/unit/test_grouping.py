from services.aggregator.grouping import deduplicate, group_by_language
from shared.events import Repository


def repo(id: int, language: str | None, stars: int, name: str | None = None) -> Repository:
    return Repository(
        id=id,
        full_name=name or f"owner/repo{id}",
        html_url=f"https://github.com/owner/repo{id}",
        description=None,
        language=language,
        stargazers_count=stars,
        forks_count=0,
        created_at="2026-11-20T00:00:00Z",
    )


def test_a_repository_on_two_pages_is_kept_once() -> None:
    shifted = repo(2, "Go", 50)
    assert [r.id for r in deduplicate([[repo(1, "Go", 90), shifted], [shifted, repo(3, "C", 10)]])] == [1, 2, 3]


def test_null_language_becomes_unknown_and_comes_last() -> None:
    groups = group_by_language([repo(1, None, 5), repo(2, "python", 3), repo(3, "C++", 9), repo(4, "Go", 1)])
    assert [g.language for g in groups] == ["C++", "Go", "python", "Unknown"]


def test_repositories_sorted_by_stars_then_name() -> None:
    groups = group_by_language([repo(1, "Go", 5, "b/b"), repo(2, "Go", 9), repo(3, "Go", 5, "a/a")])
    assert [r.full_name for r in groups[0].repositories] == ["owner/repo2", "a/a", "b/b"]
