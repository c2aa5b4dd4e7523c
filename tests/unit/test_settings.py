import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("notifier", "AMQP_URL", "http://nope"),
        ("notifier", "SMTP_PORT", "seventy"),
        ("notifier", "ADMINS", "root"),
        ("notifier", "LOG_LEVEL", "LOUD"),
        ("gateway", "GATEWAY_CORS_ORIGINS", "https://ok.example.com,*"),
        ("gateway", "GATEWAY_CORS_ORIGINS", "https://ok.example.com/path"),
        ("gateway", "GATEWAY_MAX_BODY_BYTES", "10"),
    ],
)
def test_a_malformed_setting_stops_the_service_naming_it(service: str, variable: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        env={"PATH": "/usr/bin:/bin", variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"invalid setting {variable}" in result.stderr


def test_a_bad_schedule_stops_the_fetcher() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.fetcher", "beat"],
        env={"PATH": "/usr/bin:/bin", "REPORT_SCHEDULE": "year=0 0 * * *"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "REPORT_SCHEDULE" in result.stderr


def test_the_budget_is_a_limit_over_a_window_and_the_older_per_minute_name_still_sets_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.fetcher.__main__ import FetcherSettings

    for name in ("GITHUB_RATE_LIMIT_REQUESTS", "GITHUB_RATE_LIMIT_PER_MINUTE", "GITHUB_RATE_LIMIT_WINDOW_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    defaults = FetcherSettings()
    assert (defaults.github_rate_limit_requests, defaults.github_rate_limit_window_seconds) == (30, 60.0)
    monkeypatch.setenv("GITHUB_RATE_LIMIT_PER_MINUTE", "12")
    assert FetcherSettings().github_rate_limit_requests == 12
    monkeypatch.setenv("GITHUB_RATE_LIMIT_REQUESTS", "10")
    monkeypatch.setenv("GITHUB_RATE_LIMIT_WINDOW_SECONDS", "10")
    compressed = FetcherSettings()
    assert (compressed.github_rate_limit_requests, compressed.github_rate_limit_window_seconds) == (10, 10.0)
