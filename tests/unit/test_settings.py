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
