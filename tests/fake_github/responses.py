"""GitHub's error bodies and messages, worded as the real API words them."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

REST_DOCS = "https://docs.github.com/rest"
SEARCH_DOCS = "https://docs.github.com/v3/search/"
RATE_LIMIT_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-primary-rate-limits"
SECONDARY_RATE_LIMIT_DOCS = (
    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
)
SECONDARY_RATE_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you "
    "try again. If you reach out to GitHub Support for help, please include the "
    "request ID {request_id}."
)
STATUS_MESSAGES = {
    404: "Not Found",
    422: "Validation Failed",
    500: "Server Error",
    502: "Server Error",
    503: "Service Unavailable",
}


def error_body(message: str, status: int, documentation_url: str = REST_DOCS) -> dict[str, Any]:
    """The JSON object GitHub sends with an error status."""
    return {"message": message, "documentation_url": documentation_url, "status": str(status)}


def status_error_body(status: int) -> dict[str, Any]:
    """A plausible GitHub body for an arbitrary error status."""
    try:
        fallback = HTTPStatus(status).phrase
    except ValueError:
        fallback = "Error"
    return error_body(STATUS_MESSAGES.get(status, fallback), status)


def rate_limit_body(token: str | None, client_ip: str) -> dict[str, Any]:
    """GitHub's primary rate-limit 403 body for a token or an anonymous client."""
    if token:
        # GitHub names the user id; a token's stable hash stands in for it.
        user_id = sum(token.encode()) * 7919 % 10_000_000
        message = (
            f"API rate limit exceeded for user ID {user_id}. If you reach out to GitHub "
            "Support for help, please include the request ID 0000:FAKE:0000000:0000000:00000000."
        )
    else:
        message = (
            f"API rate limit exceeded for {client_ip}. (But here's the good news: "
            "Authenticated requests get a higher rate limit. Check out the documentation "
            "for more details.)"
        )
    return error_body(message, 403, RATE_LIMIT_DOCS)


def secondary_rate_limit_body(request_id: str) -> dict[str, Any]:
    """GitHub's secondary rate-limit body, sent with 429 and Retry-After."""
    message = SECONDARY_RATE_LIMIT_MESSAGE.format(request_id=request_id)
    return error_body(message, 429, SECONDARY_RATE_LIMIT_DOCS)
