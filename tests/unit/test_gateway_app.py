"""The gateway's pure pieces: the language of a request, where a download may come from, test-only routes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from services.gateway.app import GatewayDependencies, _inside, create_app, locale_from_accept_language


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("fr-CH, fr;q=0.9, en;q=0.8, *;q=0.5", "fr-CH"),
        ("de;q=0.5, es;q=0.7", "es"),
        ("*, en;q=0.1", "en"),
        ("x_y, <script>;q=1, pt-BR;q=0.2", "pt-BR"),
        ("en;q=0", None),
        ("en;q=oops", None),
        ("", None),
        (None, None),
    ],
)
def test_the_preferred_well_formed_language_wins(header: str | None, expected: str | None) -> None:
    assert locale_from_accept_language(header) == expected


def test_only_regular_files_directly_in_the_reports_directory_are_served(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "ok.csv").write_text("x")
    (tmp_path / "outside.csv").write_text("secret")
    (reports / "link.csv").symlink_to(tmp_path / "outside.csv")
    (reports / "sub").mkdir()

    assert _inside(reports, "ok.csv") == (reports / "ok.csv").resolve()
    assert _inside(reports, "/anywhere/at/all/ok.csv") == (reports / "ok.csv").resolve()
    for name in ("link.csv", "outside.csv", "../outside.csv", "..", ".", "", "sub", "missing.csv", "a\0b"):
        assert _inside(reports, name) is None, name


def test_the_forced_failure_route_exists_only_when_enabled(tmp_path: Path) -> None:
    def routes(debug_faults: bool) -> set[str]:
        deps = GatewayDependencies(
            publisher=None,  # type: ignore[arg-type]
            broker_errors=(),
            statuses=None,  # type: ignore[arg-type]
            feed=None,  # type: ignore[arg-type]
            idempotency=None,  # type: ignore[arg-type]
            reports_dir=tmp_path,
            readiness=dict,
            today=lambda: dt.date(2026, 11, 22),
            debug_faults=debug_faults,
        )
        return {route.path for route in create_app(deps).routes if isinstance(route, APIRoute)}

    assert "/api/_debug/fail" not in routes(debug_faults=False)
    assert "/api/_debug/fail" in routes(debug_faults=True)
    assert "/api/reports" in routes(debug_faults=False)
