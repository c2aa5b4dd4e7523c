"""The real page in headless Chromium, against the real gateway and pipeline: pick, click, watch, download."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from services.gateway.hardening import CONTENT_SECURITY_POLICY
from tests.support.browser import chromium
from tests.support.pipeline import Gateway, Pipeline

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def gateway(pipeline: Pipeline) -> Gateway:
    return pipeline.start_gateway(env={"GATEWAY_AUTH": "token"})


@pytest.fixture(scope="module")
def token(pipeline: Pipeline) -> str:
    return pipeline.create_token(f"browser-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


# Playwright's init scripts and bindings are not subject to the page's CSP: this sees what the policy refused.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) =>
  window.cspViolation(`${event.effectiveDirective} refused ${event.blockedURI || "inline"} in ${event.sourceFile}`));
"""


@pytest.fixture
def page(browser: Browser, gateway: Gateway) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    problems: list[str] = []
    context.expose_function("cspViolation", lambda text: problems.append(f"CSP violation: {text}"))
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    opened = context.new_page()
    # Nothing but the gateway is ever asked for: the page and /docs work on a network with no way out.
    opened.on(
        "request",
        lambda request: (
            problems.append(f"left the gateway: {request.url}")
            # blob: is the downloaded CSV, fetched with the token and handed to the browser to save.
            if not request.url.startswith((f"{gateway.url}/", "data:", f"blob:{gateway.url}/"))
            else None
        ),
    )
    opened.on("pageerror", lambda error: problems.append(str(error)))
    # Answers the tests expect (a 422) are logged as failed loads too: the script's own errors count.
    opened.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource")
            else None
        ),
    )
    # The page closes its event stream once the report is over, which may abort it: that is no failure.
    opened.on(
        "requestfailed",
        lambda request: (
            problems.append(f"{request.failure} for {request.url}") if request.failure != "net::ERR_ABORTED" else None
        ),
    )
    opened.on(
        "response",
        lambda response: problems.append(f"{response.status} for {response.url}") if response.status == 404 else None,
    )
    yield opened
    context.close()
    assert problems == [], f"the page went wrong: {problems}"


def sign_in(page: Page, token: str) -> None:
    """The page asks for a token once, and keeps it in the tab's sessionStorage, never in a cookie."""
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#order")).to_be_hidden()
    page.fill("#token", token)
    page.click("#sign-in")
    expect(page.locator("#order")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()


def test_generate_a_report_from_the_page_and_download_it(page: Page, gateway: Gateway, token: str) -> None:
    answer = page.goto(gateway.url)
    assert answer is not None and answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    expect(page).to_have_title("hotrepos")
    page.fill("#token", "hr_not-a-token")
    page.click("#sign-in")
    expect(page.locator("#error")).to_contain_text("does not accept this token")
    sign_in(page, token)
    assert page.context.cookies() == []
    assert page.evaluate("sessionStorage.getItem('hotrepos.token')") == token
    page.reload()
    expect(page.locator("#order")).to_be_visible()  # once per tab: a reload keeps it
    page.select_option("#period", "month")
    page.click("#generate")

    download = page.locator("#download")
    expect(download).to_be_visible(timeout=90_000)
    expect(page.locator("#progress")).to_have_attribute("value", "100")
    expect(page.locator("#state")).to_contain_text("Done: 500 repositories")
    bars = page.locator("#chart rect")
    expect(bars.first).to_be_visible()
    assert 1 <= bars.count() <= 12
    labels = page.locator("#chart text").all_text_contents()
    assert "Unknown" in labels or len(labels) == 2 * bars.count()
    expect(page.locator("#history tr").first).to_contain_text("exported")
    expect(page.locator("#history tr").first).to_contain_text("month")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gateway-page.png"), full_page=True)

    href = download.get_attribute("href")
    assert href is not None and href.endswith("/download")
    with page.expect_download() as started:
        download.click()
    saved = started.value
    assert saved.suggested_filename.startswith("hotrepos-month-") and saved.suggested_filename.endswith(".csv")
    first_line = Path(saved.path()).read_bytes().split(b"\r\n", 1)[0]
    assert first_line == b"language,full_name,stars,forks,created_at,html_url,description"


def test_invalid_input_is_shown_on_the_page(page: Page, gateway: Gateway, token: str) -> None:
    page.goto(gateway.url)
    sign_in(page, token)
    page.fill("#notify", "not-an-email")
    # The browser's own check would stop the form; the gateway's 422 is what this test is about.
    page.evaluate("document.getElementById('notify').type = 'text'")
    page.click("#generate")
    expect(page.locator("#error")).to_contain_text("notify: value is not a valid email address")
    expect(page.locator("#progress-box")).to_be_hidden()


def test_the_api_docs_render_offline_under_the_policy_and_try_a_request(page: Page, gateway: Gateway) -> None:
    answer = page.goto(f"{gateway.url}/docs")
    assert answer is not None and answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("hotrepos gateway", timeout=30_000)
    expect(page.locator(".opblock-summary-path", has_text="/api/reports/{report_id}/download")).to_be_visible()

    health = page.locator(".opblock", has=page.locator(".opblock-summary-path", has_text="/healthz"))
    health.locator(".opblock-summary").click()
    health.get_by_role("button", name="Try it out").click()
    health.get_by_role("button", name="Execute").click()
    live = health.locator(".live-responses-table tbody")
    expect(live.locator(".response-col_status")).to_have_text("200")
    expect(live.locator(".response-col_description")).to_contain_text('"status": "ok"')
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gateway-docs.png"), full_page=True)
