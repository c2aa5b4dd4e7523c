"""Deterministic repositories shaped exactly like GitHub search items."""

from __future__ import annotations

import base64
import random
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

API = "https://api.github.com"
WEB = "https://github.com"

DEFAULT_SEED = 7
DEFAULT_REPOSITORY_COUNT = 1200
CREATED_SPAN_DAYS = 45
NULL_LANGUAGE_SHARE = 0.10
NULL_DESCRIPTION_SHARE = 0.08
# Probes are placed on the best-starred repositories of the last week so that
# any client fetching the first pages of a recent window sees all of them.
PROBE_WINDOW_DAYS = 7
PROBE_RANKS = (0, 2, 4, 6, 8, 10, 12, 14, 16, 18)

PROBE_DESCRIPTIONS: tuple[str, ...] = (
    'Fast, small, and "batteries included" CSV toolkit, with quotes',
    "First line of the description\nsecond line, after a newline",
    "Ünïcode ✓ - naïve café résumé handling for every locale 🚀",
    '=HYPERLINK("http://example.invalid/x","click me")',
    "+1 reasons to love spreadsheets (formula probe)",
    "-cmd|' /C calc'!A0 shows why CSV cells need escaping",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "Windows line endings\r\nare here too; also a ; semicolon",
    "\tLeading tab, trailing spaces   ",
    'He said "hello, world" and left',
)

LANGUAGE_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("Python", 22),
    ("TypeScript", 16),
    ("JavaScript", 10),
    ("Rust", 8),
    ("Go", 7),
    ("C++", 5),
    ("Jupyter Notebook", 5),
    ("Java", 4),
    ("C#", 3),
    ("C", 3),
    ("Shell", 3),
    ("Kotlin", 2),
    ("Swift", 2),
    ("HTML", 2),
    ("Ruby", 1),
    ("PHP", 1),
    ("Dart", 1),
    ("Zig", 1),
    ("Vue", 1),
    ("Lua", 1),
    ("Svelte", 1),
    ("Nix", 1),
    ("Haskell", 1),
    ("Elixir", 1),
    ("Dockerfile", 1),
    ("MDX", 1),
    ("Objective-C", 1),
    ("Vim Script", 1),
)

LICENSES: tuple[dict[str, Any] | None, ...] = (
    {
        "key": "mit",
        "name": "MIT License",
        "spdx_id": "MIT",
        "url": f"{API}/licenses/mit",
        "node_id": "MDc6TGljZW5zZTEz",
    },
    {
        "key": "apache-2.0",
        "name": "Apache License 2.0",
        "spdx_id": "Apache-2.0",
        "url": f"{API}/licenses/apache-2.0",
        "node_id": "MDc6TGljZW5zZTI=",
    },
    {
        "key": "gpl-3.0",
        "name": "GNU General Public License v3.0",
        "spdx_id": "GPL-3.0",
        "url": f"{API}/licenses/gpl-3.0",
        "node_id": "MDc6TGljZW5zZTk=",
    },
    {
        "key": "bsd-3-clause",
        "name": 'BSD 3-Clause "New" or "Revised" License',
        "spdx_id": "BSD-3-Clause",
        "url": f"{API}/licenses/bsd-3-clause",
        "node_id": "MDc6TGljZW5zZTU=",
    },
    {
        "key": "agpl-3.0",
        "name": "GNU Affero General Public License v3.0",
        "spdx_id": "AGPL-3.0",
        "url": f"{API}/licenses/agpl-3.0",
        "node_id": "MDc6TGljZW5zZTE=",
    },
    {
        "key": "mpl-2.0",
        "name": "Mozilla Public License 2.0",
        "spdx_id": "MPL-2.0",
        "url": f"{API}/licenses/mpl-2.0",
        "node_id": "MDc6TGljZW5zZTE0",
    },
    {
        "key": "unlicense",
        "name": "The Unlicense",
        "spdx_id": "Unlicense",
        "url": f"{API}/licenses/unlicense",
        "node_id": "MDc6TGljZW5zZTE1",
    },
    {"key": "other", "name": "Other", "spdx_id": "NOASSERTION", "url": None, "node_id": "MDc6TGljZW5zZTA="},
    None,
)
LICENSE_WEIGHTS = (40, 22, 8, 5, 3, 3, 2, 4, 13)

WORDS = (
    "atlas",
    "beacon",
    "cinder",
    "delta",
    "ember",
    "falcon",
    "glyph",
    "harbor",
    "ion",
    "juniper",
    "kite",
    "lumen",
    "mosaic",
    "nimbus",
    "orbit",
    "pixel",
    "quartz",
    "raven",
    "sable",
    "tensor",
    "umbra",
    "vertex",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
    "agent",
    "forge",
    "stack",
    "flow",
    "lens",
    "vault",
    "relay",
    "spark",
    "grid",
    "shell",
    "prism",
    "echo",
    "drift",
    "bloom",
)
QUALIFIERS = (
    "Blazing-fast",
    "Minimal",
    "Type-safe",
    "Self-hosted",
    "Open-source",
    "Lightweight",
    "Production-ready",
    "Experimental",
    "Local-first",
    "Privacy-focused",
    "Zero-dependency",
    "Modern",
    "Composable",
    "Tiny",
)
PURPOSES = (
    "toolkit",
    "framework",
    "library",
    "CLI",
    "engine",
    "runtime",
    "SDK",
    "server",
    "dashboard",
    "plugin",
    "compiler",
    "agent",
    "starter template",
    "benchmark suite",
    "desktop app",
)
DOMAINS = (
    "LLM agents",
    "vector search",
    "static sites",
    "terminal UIs",
    "Kubernetes operators",
    "data pipelines",
    "web scraping",
    "game engines",
    "home automation",
    "code review",
    "time-series databases",
    "observability",
    "image generation",
    "speech recognition",
    "password management",
    "browser automation",
    "edge functions",
    "embedded devices",
    "spreadsheets",
    "note taking",
    "retrieval-augmented generation",
    "GPU kernels",
)
TAGLINES = (
    "Batteries included.",
    "Written from scratch with no runtime dependencies.",
    "Works offline and syncs when you are back online.",
    "Supports streaming, retries and structured output out of the box.",
    "Ships as a single static binary for Linux, macOS and Windows.",
    "Designed for teams that want fewer moving parts in production.",
    "Includes a plugin system, a REST API and a small web dashboard.",
    "Benchmarked against the popular alternatives; see the docs for numbers.",
    "Configuration lives in one readable TOML file.",
    "MIT licensed and open to contributions of every size.",
)
TOPICS = (
    "llm",
    "ai",
    "machine-learning",
    "deep-learning",
    "python",
    "typescript",
    "rust",
    "golang",
    "cli",
    "developer-tools",
    "productivity",
    "open-source",
    "self-hosted",
    "automation",
    "agents",
    "rag",
    "vector-database",
    "webassembly",
    "kubernetes",
    "docker",
    "devops",
    "observability",
    "database",
    "sqlite",
    "postgresql",
    "react",
    "nextjs",
    "svelte",
    "tauri",
    "electron",
    "terminal",
    "tui",
    "web-scraping",
    "data-engineering",
    "etl",
    "analytics",
    "security",
    "privacy",
    "cryptography",
    "game-development",
    "graphics",
    "gpu",
    "cuda",
    "embedded",
    "iot",
    "home-assistant",
    "chatgpt",
    "openai",
    "anthropic",
    "langchain",
    "transformers",
    "computer-vision",
    "speech-to-text",
    "nlp",
    "static-site-generator",
    "markdown",
    "note-taking",
    "api",
    "rest-api",
    "graphql",
    "microservices",
    "performance",
    "benchmark",
    "testing",
)
HOMEPAGES = ("", None, "https://{login}.github.io/{name}", "https://{name}.dev", "https://docs.{name}.io/en/latest/")


def _node_id(prefix: str, number: int) -> str:
    """GitHub-style opaque node id derived from a numeric id."""
    encoded = base64.b64encode(number.to_bytes(5, "big")).decode().rstrip("=")
    return f"{prefix}_kgDO{encoded}"


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_owner(login: str, owner_id: int, is_org: bool) -> dict[str, Any]:
    """A search item's `owner` object, with every field GitHub returns."""
    url = f"{API}/users/{login}"
    return {
        "login": login,
        "id": owner_id,
        "node_id": _node_id("O" if is_org else "U", owner_id),
        "avatar_url": f"https://avatars.githubusercontent.com/u/{owner_id}?v=4",
        "gravatar_id": "",
        "url": url,
        "html_url": f"{WEB}/{login}",
        "followers_url": f"{url}/followers",
        "following_url": f"{url}/following{{/other_user}}",
        "gists_url": f"{url}/gists{{/gist_id}}",
        "starred_url": f"{url}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{url}/subscriptions",
        "organizations_url": f"{url}/orgs",
        "repos_url": f"{url}/repos",
        "events_url": f"{url}/events{{/privacy}}",
        "received_events_url": f"{url}/received_events",
        "type": "Organization" if is_org else "User",
        "user_view_type": "public",
        "site_admin": False,
    }


def repository_urls(full_name: str) -> dict[str, str]:
    """All `*_url` fields of a repository, in GitHub's order."""
    url = f"{API}/repos/{full_name}"
    return {
        "forks_url": f"{url}/forks",
        "keys_url": f"{url}/keys{{/key_id}}",
        "collaborators_url": f"{url}/collaborators{{/collaborator}}",
        "teams_url": f"{url}/teams",
        "hooks_url": f"{url}/hooks",
        "issue_events_url": f"{url}/issues/events{{/number}}",
        "events_url": f"{url}/events",
        "assignees_url": f"{url}/assignees{{/user}}",
        "branches_url": f"{url}/branches{{/branch}}",
        "tags_url": f"{url}/tags",
        "blobs_url": f"{url}/git/blobs{{/sha}}",
        "git_tags_url": f"{url}/git/tags{{/sha}}",
        "git_refs_url": f"{url}/git/refs{{/sha}}",
        "trees_url": f"{url}/git/trees{{/sha}}",
        "statuses_url": f"{url}/statuses/{{sha}}",
        "languages_url": f"{url}/languages",
        "stargazers_url": f"{url}/stargazers",
        "contributors_url": f"{url}/contributors",
        "subscribers_url": f"{url}/subscribers",
        "subscription_url": f"{url}/subscription",
        "commits_url": f"{url}/commits{{/sha}}",
        "git_commits_url": f"{url}/git/commits{{/sha}}",
        "comments_url": f"{url}/comments{{/number}}",
        "issue_comment_url": f"{url}/issues/comments{{/number}}",
        "contents_url": f"{url}/contents/{{+path}}",
        "compare_url": f"{url}/compare/{{base}}...{{head}}",
        "merges_url": f"{url}/merges",
        "archive_url": f"{url}/{{archive_format}}{{/ref}}",
        "downloads_url": f"{url}/downloads",
        "issues_url": f"{url}/issues{{/number}}",
        "pulls_url": f"{url}/pulls{{/number}}",
        "milestones_url": f"{url}/milestones{{/number}}",
        "notifications_url": f"{url}/notifications{{?since,all,participating}}",
        "labels_url": f"{url}/labels{{/name}}",
        "releases_url": f"{url}/releases{{/id}}",
        "deployments_url": f"{url}/deployments",
    }


class _RepositoryFactory:
    """Draws repositories one at a time from a single seeded random stream."""

    def __init__(self, seed: int, count: int, today: date) -> None:
        self.rng = random.Random(seed)
        self.count = count
        self.span_start = datetime.combine(today - timedelta(days=CREATED_SPAN_DAYS), time(), tzinfo=UTC)
        self.span_end = datetime.combine(today, time(), tzinfo=UTC)
        self.used_names: set[str] = set()
        self.owners: list[tuple[str, int, bool]] = []
        self.repo_ids = self.rng.sample(range(1_050_000_000, 1_150_000_000), count)

    def build_all(self) -> list[dict[str, Any]]:
        return [self.build(repo_id) for repo_id in self.repo_ids]

    def owner(self) -> tuple[str, int, bool]:
        rng = self.rng
        # Reusing owners makes some accounts own several hot repositories.
        if self.owners and rng.random() < 0.25:
            return rng.choice(self.owners)
        login = f"{rng.choice(WORDS)}{rng.choice(WORDS).capitalize()}"
        if rng.random() < 0.3:
            login += str(rng.randint(1, 99))
        owner = (login, rng.randint(1_000, 250_000_000), rng.random() < 0.3)
        self.owners.append(owner)
        return owner

    def unique_name(self, login: str) -> str:
        rng = self.rng
        while True:
            name = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}"
            if rng.random() < 0.3:
                name += f"-{rng.choice(('rs', 'py', 'js', 'go', 'cli', 'ai', 'kit'))}"
            if f"{login}/{name}" not in self.used_names:
                self.used_names.add(f"{login}/{name}")
                return name

    def description(self) -> str | None:
        rng = self.rng
        if rng.random() < NULL_DESCRIPTION_SHARE:
            return None
        first, second = rng.sample(TAGLINES, 2)
        return f"{rng.choice(QUALIFIERS)} {rng.choice(PURPOSES)} for {rng.choice(DOMAINS)}. {first} {second}"

    def language(self) -> str | None:
        if self.rng.random() < NULL_LANGUAGE_SHARE:
            return None
        names = [name for name, _ in LANGUAGE_WEIGHTS]
        weights = [weight for _, weight in LANGUAGE_WEIGHTS]
        return self.rng.choices(names, weights)[0]

    def stars(self) -> int:
        # Heavy-tailed like real trending repos; low counts repeat often, so
        # the id tie-breaker of the sort gets exercised.
        return min(int(8 * self.rng.paretovariate(1.15)), 95_000)

    def build(self, repo_id: int) -> dict[str, Any]:
        rng = self.rng
        login, owner_id, is_org = self.owner()
        name = self.unique_name(login)
        full_name = f"{login}/{name}"
        span_seconds = int((self.span_end - self.span_start).total_seconds())
        created = self.span_start + timedelta(seconds=rng.randrange(span_seconds))
        remaining = max(int((self.span_end - created).total_seconds()), 1)
        pushed = created + timedelta(seconds=rng.randrange(remaining))
        updated = pushed + timedelta(seconds=rng.randrange(max(int((self.span_end - pushed).total_seconds()), 1)))
        stars = self.stars()
        forks = int(stars * rng.uniform(0.02, 0.2))
        open_issues = rng.randint(0, max(stars // 40, 3))
        license_info = rng.choices(LICENSES, LICENSE_WEIGHTS)[0]
        homepage_template = rng.choice(HOMEPAGES)
        homepage = homepage_template.format(login=login.lower(), name=name) if homepage_template else homepage_template
        topics = sorted(rng.sample(TOPICS, rng.randint(3, 12)))
        item: dict[str, Any] = {
            "id": repo_id,
            "node_id": _node_id("R", repo_id),
            "name": name,
            "full_name": full_name,
            "private": False,
            "owner": build_owner(login, owner_id, is_org),
            "html_url": f"{WEB}/{full_name}",
            "description": self.description(),
            "fork": False,
            "url": f"{API}/repos/{full_name}",
            **repository_urls(full_name),
            "created_at": _timestamp(created),
            "updated_at": _timestamp(updated),
            "pushed_at": _timestamp(pushed),
            "git_url": f"git://github.com/{full_name}.git",
            "ssh_url": f"git@github.com:{full_name}.git",
            "clone_url": f"{WEB}/{full_name}.git",
            "svn_url": f"{WEB}/{full_name}",
            "homepage": homepage,
            "size": rng.randint(12, 250_000),
            "stargazers_count": stars,
            "watchers_count": stars,
            "language": self.language(),
            "has_issues": rng.random() < 0.95,
            "has_projects": rng.random() < 0.8,
            "has_downloads": True,
            "has_wiki": rng.random() < 0.7,
            "has_pages": rng.random() < 0.2,
            "has_discussions": rng.random() < 0.25,
            "forks_count": forks,
            "mirror_url": None,
            "archived": rng.random() < 0.01,
            "disabled": False,
            "open_issues_count": open_issues,
            "license": dict(license_info) if license_info else None,
            "allow_forking": True,
            "is_template": rng.random() < 0.03,
            "web_commit_signoff_required": False,
            "topics": topics,
            "visibility": "public",
            "forks": forks,
            "open_issues": open_issues,
            "watchers": stars,
            "default_branch": rng.choice(("main", "main", "main", "master", "dev")),
            "score": 1.0,
        }
        return item


def _place_probe_descriptions(repositories: list[dict[str, Any]], today: date) -> None:
    """Give tricky CSV/formula-injection descriptions to prominent recent repos."""
    window_start = (today - timedelta(days=PROBE_WINDOW_DAYS)).isoformat()
    recent = sorted(
        (repo for repo in repositories if repo["created_at"] >= window_start),
        key=lambda repo: (-repo["stargazers_count"], repo["id"]),
    )
    for rank, description in zip(PROBE_RANKS, PROBE_DESCRIPTIONS, strict=True):
        if rank < len(recent):
            recent[rank]["description"] = description


def generate_repositories(
    seed: int = DEFAULT_SEED,
    count: int = DEFAULT_REPOSITORY_COUNT,
    today: date | None = None,
) -> list[dict[str, Any]]:
    """Repositories created during the 45 days before `today`, same for the same seed."""
    today = today or datetime.now(UTC).date()
    repositories = _RepositoryFactory(seed, count, today).build_all()
    _place_probe_descriptions(repositories, today)
    return repositories
