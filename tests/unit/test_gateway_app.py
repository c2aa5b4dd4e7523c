"""The gateway's routes in FastAPI's TestClient over in-memory fakes, and its handlers called directly."""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from services.gateway.handlers import (
    handle_report_aggregated,
    handle_report_exported,
    handle_report_failed,
    handle_report_page_fetched,
    handle_report_requested,
)
from services.gateway.routes import GatewayDependencies, create_app, file_inside
from services.gateway.views import locale_from_accept_language
from services.gateway.webhooks import WebhookAdmin
from shared.events import (
    LanguageGroup,
    ReportAggregated,
    ReportExported,
    ReportFailed,
    ReportPageFetched,
    ReportRequested,
    ReportSpec,
    derived_event_id,
)
from shared.topology import GATEWAY_PROGRESS
from shared.webhooks import UrlGuard
from tests.support.fakes import (
    FakeResolver,
    InMemoryDeliveryRecords,
    InMemoryFeed,
    InMemoryIdempotencyKeys,
    InMemoryProcessedEvents,
    InMemoryRecentOrders,
    InMemoryStatuses,
    InMemoryWebhookSubscriptions,
    RecordingPublisher,
    meta_of,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx's successor
    from fastapi.testclient import TestClient

TODAY = dt.date(2026, 11, 22)
SPEC = ReportSpec(period="day", since=dt.date(2026, 11, 21))


class BrokerDown(Exception):
    pass


class DownPublisher(RecordingPublisher):
    def publish(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise BrokerDown("connection refused")


@dataclass
class Gateway:
    client: TestClient
    deps: GatewayDependencies
    publisher: RecordingPublisher
    statuses: InMemoryStatuses
    processed: InMemoryProcessedEvents


def gateway_over(
    tmp_path: Path,
    *,
    publisher: RecordingPublisher | None = None,
    debug: bool = False,
    webhooks: WebhookAdmin | None = None,
) -> Gateway:
    publisher = publisher or RecordingPublisher()
    statuses = InMemoryStatuses()
    processed = InMemoryProcessedEvents()
    deps = GatewayDependencies(
        publisher=publisher,
        broker_errors=(BrokerDown,),
        statuses=statuses,
        reader=statuses,
        feed=InMemoryFeed(statuses),
        idempotency=InMemoryIdempotencyKeys(),
        processed=processed,
        reports_dir=tmp_path,
        readiness=lambda: {"broker": "ok", "redis": "ok", "projection": "ok"},
        today=lambda: TODAY,
        webhooks=webhooks
        or WebhookAdmin(InMemoryWebhookSubscriptions(), InMemoryDeliveryRecords(), UrlGuard(resolve=FakeResolver())),
        recent_orders=InMemoryRecentOrders(),
        debug_faults=debug,
        keepalive_seconds=1,
    )
    return Gateway(TestClient(create_app(deps)), deps, publisher, statuses, processed)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    made = gateway_over(tmp_path)
    with made.client:
        yield made


def test_a_request_is_published_once_folded_once_and_answered_with_where_to_follow_it(gateway: Gateway) -> None:
    answer = gateway.client.post("/api/reports", json={"period": "week"}, headers={"Accept-Language": "de, en;q=0.5"})
    assert answer.status_code == 202
    report_id = answer.json()["report_id"]
    assert answer.headers["Location"] == f"/api/reports/{report_id}"
    [event] = gateway.publisher.events
    assert (event.type, event.id, event.data["report_id"]) == (
        "report.requested",
        derived_event_id(report_id, "requested"),
        report_id,
    )
    assert gateway.statuses.folds == 1
    # The copy that comes back through the gateway's own queue is a known duplicate there.
    assert gateway.processed.seen(GATEWAY_PROGRESS.queue_name, event.id)
    status = gateway.client.get(f"/api/reports/{report_id}").json()
    assert (status["state"], status["period"], status["locale"]) == ("requested", "week", None)


def test_an_idempotency_key_finds_its_report_and_refuses_another_order(gateway: Gateway) -> None:
    key = {"Idempotency-Key": "k-1"}
    first = gateway.client.post("/api/reports", json={"period": "day"}, headers=key)
    again = gateway.client.post("/api/reports", json={"period": "day"}, headers=key)
    assert first.json()["report_id"] == again.json()["report_id"]
    assert len(gateway.publisher.events) == 1
    other = gateway.client.post("/api/reports", json={"period": "week"}, headers=key)
    assert other.status_code == 422 and "already used for a different request" in other.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"period": "year"}, "period"),
        ({"period": "day", "ref_date": "2026-11-23"}, "ref_date"),
        ({"period": "day", "ref_date": 0}, "ref_date"),
        ({"period": "day", "notify": "not-an-address"}, "notify"),
        ({"period": "day", "locale": "<script>"}, "locale"),
        ({"period": "day", "surprise": 1}, "surprise"),
    ],
)
def test_a_bad_order_gets_a_422_that_names_the_field(gateway: Gateway, body: dict[str, object], field: str) -> None:
    answer = gateway.client.post("/api/reports", json=body)
    assert answer.status_code == 422
    assert field in {str(part) for error in answer.json()["detail"] for part in error["loc"]}
    assert gateway.publisher.events == []


def test_a_broker_that_does_not_answer_gives_a_503_to_retry(tmp_path: Path) -> None:
    with gateway_over(tmp_path, publisher=DownPublisher()).client as client:
        answer = client.post("/api/reports", json={"period": "day"})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"


def fold_lifecycle(gateway: Gateway, report_id: str, *, file_name: str = "hot.csv") -> None:
    events = [
        ReportRequested(report_id=report_id, period="day"),
        ReportPageFetched(report_id=report_id, page=1, pages=1, spec=SPEC, items=[]),
        ReportAggregated(report_id=report_id, spec=SPEC, total=0, languages=[]),
        ReportExported(
            report_id=report_id,
            path=f"/elsewhere/{file_name}",
            rows=0,
            sha256="a" * 64,
            layout="rows",
            spec=SPEC,
            repositories=0,
            top_languages=[],
        ),
    ]
    for event in events:
        gateway.statuses.apply(event, meta_of(event))


def test_an_exported_report_reads_as_such_and_its_csv_downloads(gateway: Gateway) -> None:
    fold_lifecycle(gateway, "r-1")
    (gateway.deps.reports_dir / "hot.csv").write_text("language,full_name\r\n")
    status = gateway.client.get("/api/reports/r-1").json()
    assert (status["state"], status["pages_fetched"], status["download_url"]) == (
        "exported",
        1,
        "/api/reports/r-1/download",
    )
    download = gateway.client.get("/api/reports/r-1/download")
    assert download.status_code == 200 and download.text == "language,full_name\r\n"
    assert download.headers["content-type"].startswith("text/csv")


def test_a_partial_report_reads_as_partial(gateway: Gateway) -> None:
    fold_lifecycle(gateway, "r-p")
    exported = ReportExported(
        report_id="r-p",
        path="/elsewhere/hot.csv",
        rows=0,
        sha256="a" * 64,
        layout="rows",
        spec=SPEC,
        repositories=0,
        top_languages=[],
        incomplete_pages=[4],
    )
    gateway.statuses.statuses.pop("r-p")
    for event in (ReportRequested(report_id="r-p", period="day"), exported):
        gateway.statuses.apply(event, meta_of(event))
    status = gateway.client.get("/api/reports/r-p").json()
    assert (status["state"], status["partial"], status["incomplete_pages"]) == ("exported", True, [4])
    stream = gateway.client.get("/api/reports/r-p/events").text
    assert '"incomplete_pages": [4]' in stream


def test_unknown_and_impossible_ids_are_404s(gateway: Gateway) -> None:
    for path in ("/api/reports/nope", "/api/reports/..%2F..", "/api/reports/nope/download", "/api/reports/nope/events"):
        assert gateway.client.get(path).status_code == 404, path
    assert gateway.client.delete("/api/reports/nope").status_code == 404


def test_a_csv_gone_from_disk_is_a_404_not_a_crash(gateway: Gateway) -> None:
    fold_lifecycle(gateway, "r-2", file_name="missing.csv")
    assert gateway.client.get("/api/reports/r-2/download").status_code == 404


def test_cancel_broadcasts_for_a_running_report_and_refuses_a_finished_one(gateway: Gateway) -> None:
    event = ReportRequested(report_id="r-3", period="day")
    gateway.statuses.apply(event, meta_of(event))
    assert gateway.client.delete("/api/reports/r-3").status_code == 202
    [command] = gateway.publisher.events
    assert (command.type, command.data["report_id"]) == ("report.cancel.requested", "r-3")
    fold_lifecycle(gateway, "r-4")
    finished = gateway.client.delete("/api/reports/r-4")
    assert finished.status_code == 409 and "already exported" in finished.text


def test_the_history_is_newest_first_and_paged(gateway: Gateway) -> None:
    for index in range(3):
        event = ReportRequested(report_id=f"h-{index}", period="day")
        meta = replace(meta_of(event), time=dt.datetime(2026, 11, 22, 12, index, tzinfo=dt.UTC))
        gateway.statuses.apply(event, meta)
    page = gateway.client.get("/api/reports", params={"limit": 2}).json()
    assert [item["report_id"] for item in page["items"]] == ["h-2", "h-1"]
    assert (page["total"], page["next_offset"]) == (3, 2)
    assert gateway.client.get("/api/reports", params={"limit": 0}).status_code == 422


def test_the_progress_stream_replays_a_finished_report_and_ends(gateway: Gateway) -> None:
    fold_lifecycle(gateway, "r-5")
    stream = gateway.client.get("/api/reports/r-5/events")
    frames = [block for block in stream.text.split("\n\n") if block.startswith("id:")]
    assert [frame.splitlines()[0] for frame in frames] == ["id: 1", "id: 2", "id: 3", "id: 4"]
    assert '"state": "exported"' in frames[-1] and '"download_url": "/api/reports/r-5/download"' in frames[-1]
    assert gateway.client.get("/api/reports/r-5/events", headers={"Last-Event-ID": "4"}).status_code == 204


def test_readiness_reports_each_check(gateway: Gateway) -> None:
    ready = gateway.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["projection"] == "ok"


def test_the_gateway_handlers_fold_each_report_event() -> None:
    statuses = InMemoryStatuses()
    handlers = [
        (handle_report_requested, ReportRequested(report_id="r-6", period="day")),
        (handle_report_page_fetched, ReportPageFetched(report_id="r-6", page=1, pages=2, spec=SPEC, items=[])),
        (
            handle_report_aggregated,
            ReportAggregated(
                report_id="r-6", spec=SPEC, total=0, languages=[LanguageGroup(language="Go", repositories=[])]
            ),
        ),
        (handle_report_failed, ReportFailed(report_id="r-6", stage="export", reason="disk")),
        (
            handle_report_exported,
            ReportExported(
                report_id="r-6",
                path="/r/x.csv",
                rows=0,
                sha256="a" * 64,
                layout="rows",
                spec=SPEC,
                repositories=0,
                top_languages=[],
            ),
        ),
    ]
    states = []
    for handler, event in handlers:
        handler(event, meta_of(event), statuses=statuses)  # type: ignore[operator]
        status = statuses.get("r-6")
        assert status is not None
        states.append(status.state)
    # The first outcome stays: an export that comes after a failure changes nothing.
    assert states == ["requested", "fetching", "aggregated", "failed", "failed"]


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

    assert file_inside(reports, "ok.csv") == (reports / "ok.csv").resolve()
    assert file_inside(reports, "/anywhere/at/all/ok.csv") == (reports / "ok.csv").resolve()
    for name in ("link.csv", "outside.csv", "../outside.csv", "..", ".", "", "sub", "missing.csv", "a\0b"):
        assert file_inside(reports, name) is None, name


def test_the_forced_failure_route_exists_only_when_enabled(tmp_path: Path) -> None:
    def routes(debug: bool) -> set[str]:
        app = create_app(gateway_over(tmp_path, debug=debug).deps)
        return {route.path for route in app.routes if isinstance(route, APIRoute)}

    assert "/api/_debug/fail" not in routes(debug=False)
    assert "/api/_debug/fail" in routes(debug=True)
    assert "/api/reports" in routes(debug=False)
