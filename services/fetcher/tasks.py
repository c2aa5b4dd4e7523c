"""The fetcher's own Celery app: page fetches with retries, and the consumer step for its queue."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import structlog
from celery import Celery, bootsteps, signals
from celery.exceptions import Reject
from celery.exceptions import Retry as CeleryRetry
from kombu.entity import Exchange, Queue
from kombu.messaging import Consumer

from services.fetcher.github import GitHubClient
from services.fetcher.handlers import PageFetch, Retry, RetryPolicy, failed, fetch_page
from shared import tracing
from shared.context import EventContext, current_context, event_scope
from shared.control import Cancellations
from shared.events import ReportFailed, ReportSpec
from shared.logging import log_file_scope
from shared.messaging import CONFIRM_TIMEOUT_SECONDS, MessageHandler, Outgoing, Publisher, PublishRefused
from shared.outcomes import Claim, OutcomeLedger
from shared.settings import CommonSettings
from shared.topology import DLX

log = structlog.get_logger("hotrepos.fetcher")

# Celery's task messages never leave the fetcher: own exchange and queue, on the same vhost.
TASK_EXCHANGE = Exchange("fetcher.tasks", type="direct", durable=True)
TASK_QUEUE = Queue(
    "fetcher.tasks",
    TASK_EXCHANGE,
    routing_key="fetcher.tasks",
    durable=True,
    # Classic, not quorum: Celery's countdown retries on quorum queues would need its
    # delayed-delivery exchanges, a second topology nobody else should see.
    queue_arguments={
        "x-queue-type": "classic",
        "x-dead-letter-exchange": DLX.name,
        "x-dead-letter-routing-key": "fetcher.tasks",
    },
)
# Where a page task the worker gives up on waits, for `hotrepos dlq replay fetcher.tasks`.
TASK_DEAD_LETTER_QUEUE = Queue(
    "fetcher.tasks.dlq", DLX, routing_key="fetcher.tasks", durable=True, queue_arguments={"x-queue-type": "quorum"}
)
FETCH_PAGE_TASK = "hotrepos.fetcher.fetch_page"
UNEXPECTED_ERROR_RETRIES = 20
EVENT_PREFETCH = 16


@signals.setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    """Connected so that Celery leaves the logging set up by shared.logging alone."""


def create_celery_app(settings: CommonSettings) -> Celery:
    app = Celery("hotrepos-fetcher", broker=settings.amqp_url, set_as_current=False)
    app.conf.update(
        task_queues=[TASK_QUEUE],
        task_default_queue=TASK_QUEUE.name,
        task_default_exchange=TASK_EXCHANGE.name,
        task_default_routing_key=TASK_QUEUE.routing_key,
        task_create_missing_queues=False,
        # Named explicitly: left to itself Celery publishes to the default exchange, which a
        # least-privilege broker user may not write to (it reaches every queue by name).
        task_routes={FETCH_PAGE_TASK: {"exchange": TASK_EXCHANGE.name, "routing_key": TASK_QUEUE.routing_key}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=4,
        # Celery's prefetch restore after a reconnection sends basic.qos from every pool thread on one
        # connection; py-amqp is not thread-safe, the replies get lost, and the worker stalls until the
        # broker drops it for missed heartbeats.
        worker_enable_prefetch_count_reduction=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_detect_quorum_queues=False,
        broker_connection_retry_on_startup=True,
        broker_heartbeat=30,
        broker_transport_options={"confirm_publish": True},
        broker_use_ssl=_celery_ssl(settings),
        enable_utc=True,
        timezone="UTC",
    )
    return app


def _celery_ssl(settings: CommonSettings) -> dict[str, Any] | bool:
    if not settings.amqp_url.startswith("amqps://"):
        return False
    import ssl

    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    if settings.amqp_ca_file:
        options["ca_certs"] = str(settings.amqp_ca_file)
    if settings.amqp_cert_file:
        options["certfile"] = str(settings.amqp_cert_file)
    if settings.amqp_key_file:
        options["keyfile"] = str(settings.amqp_key_file)
    return options


def page_fetch_to_payload(fetch: PageFetch) -> dict[str, Any]:
    return {
        "report_id": fetch.report_id,
        "page": fetch.page,
        "pages": fetch.pages,
        "spec": fetch.spec.model_dump(mode="json"),
    }


def page_fetch_from_payload(payload: dict[str, Any]) -> PageFetch:
    return PageFetch(
        report_id=payload["report_id"],
        page=int(payload["page"]),
        pages=int(payload["pages"]),
        spec=ReportSpec.model_validate(payload["spec"]),
    )


class CeleryFetchScheduler:
    """Schedules page fetches as Celery tasks, carrying the event's context along."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def schedule(self, fetches: list[PageFetch]) -> None:
        context = current_context().as_headers()
        with self.app.producer_or_acquire() as producer:
            for fetch in fetches:
                self.app.send_task(
                    FETCH_PAGE_TASK,
                    args=[page_fetch_to_payload(fetch), context],
                    producer=producer,
                    retry=True,
                    # The consumer's event loop runs this: a confirm that never comes must not stall it,
                    # or its connection falls silent and the broker drops it minutes later.
                    confirm_timeout=CONFIRM_TIMEOUT_SECONDS,
                )


def register_tasks(
    app: Celery,
    *,
    github: GitHubClient,
    publisher: Publisher,
    policy: RetryPolicy,
    cancellations: Cancellations,
    outcomes: OutcomeLedger,
) -> None:
    rng = random.Random()

    @app.task(name=FETCH_PAGE_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def fetch_page_task(
        self: Any, payload: dict[str, Any], context: dict[str, str], decided_failure: str | None = None
    ) -> None:
        fetch = page_fetch_from_payload(payload)
        scope = EventContext.from_headers(context).merged(correlationid=fetch.report_id)
        bound = structlog.contextvars.bound_contextvars(
            report_id=fetch.report_id, correlation_id=scope.correlationid, page=fetch.page
        )
        with (
            event_scope(scope),
            log_file_scope("fetcher.fetch_page"),
            bound,
            tracing.span("fetch report page", attributes={"hotrepos.page": fetch.page}),
        ):
            attempt = self.request.retries
            try:
                if decided_failure is not None:
                    # The failure was claimed already: only its publication is retried, never the fetch.
                    outcome: Outgoing | Retry = failed(fetch.report_id, "fetch", decided_failure, fetch.spec)
                elif cancellations.is_cancelled(fetch.report_id):
                    log.info("fetch.cancelled")
                    return
                else:
                    outcome = fetch_page(fetch, attempt, github=github, policy=policy, rng=rng)
                if isinstance(outcome, Retry):
                    log.warning(
                        "fetch.retry", reason=outcome.reason, attempt=attempt + 1, countdown=round(outcome.countdown, 2)
                    )
                    raise self.retry(countdown=outcome.countdown, confirm_timeout=CONFIRM_TIMEOUT_SECONDS)
                try:
                    _publish(publisher, outcomes, outcome)
                except PublishRefused:
                    raise
                except Exception as exc:
                    if isinstance(outcome.data, ReportFailed) and decided_failure is None:
                        raise self.retry(
                            args=[payload, context, outcome.data.reason],
                            countdown=min(60.0, policy.backoff(attempt, rng) + 1),
                            confirm_timeout=CONFIRM_TIMEOUT_SECONDS,
                        ) from exc
                    raise
            except CeleryRetry:
                raise
            except PublishRefused as exc:
                # A permission is wrong: retrying cannot help. The task waits in fetcher.tasks.dlq.
                log.error("fetch.refused_by_broker", attempt=attempt + 1)
                raise Reject(str(exc), requeue=False) from exc
            except Exception as exc:
                # Redis or the broker unreachable, or a bug: try again later. Past the limit, the report
                # fails if it still can, and the task waits in fetcher.tasks.dlq for a replay.
                if attempt >= UNEXPECTED_ERROR_RETRIES:
                    log.exception("fetch.gave_up", attempt=attempt + 1)
                    reason = f"gave up on page {fetch.page} after {attempt + 1} attempts: {type(exc).__name__}"
                    with contextlib.suppress(Exception):
                        _publish(publisher, outcomes, failed(fetch.report_id, "fetch", reason, fetch.spec))
                    raise Reject(str(exc), requeue=False) from exc
                log.warning("fetch.unexpected_error", error=f"{type(exc).__name__}: {exc}", attempt=attempt + 1)
                raise self.retry(
                    countdown=min(60.0, policy.backoff(attempt, rng) + 1), confirm_timeout=CONFIRM_TIMEOUT_SECONDS
                ) from exc
            log.info("fetch.done", published=type(outcome.data).__name__)


def _publish(publisher: Publisher, outcomes: OutcomeLedger, outgoing: Outgoing) -> None:
    if isinstance(outgoing.data, ReportFailed):
        if outcomes.claim(outgoing.data.report_id, "failed") is Claim.OTHER:
            return  # exported or cancelled already: one outcome per report
        # The notifier tells the admins of every report.failed: an alert here would mail them twice.
        log.warning("report.failed", reason=outgoing.data.reason)
    publisher.publish(
        outgoing.data,
        event_id=outgoing.event_id,
        exchange=outgoing.exchange,
        correlationid=outgoing.correlationid,
    )


def consumer_step(handlers: list[MessageHandler]) -> type[bootsteps.ConsumerStep]:
    """A Celery consumer step that consumes the fetcher's event queues with the shared wrapper."""

    class EventQueuesStep(bootsteps.ConsumerStep):  # type: ignore[misc]
        def get_consumers(self, channel: Any) -> list[Consumer]:
            return [
                # A prefetch bound, as every other service has: a backlog spreads across replicas.
                Consumer(
                    channel,
                    queues=[handler.subscription.queue()],
                    on_message=handler,
                    accept=None,
                    prefetch_count=EVENT_PREFETCH,
                )
                for handler in handlers
            ]

    return EventQueuesStep
