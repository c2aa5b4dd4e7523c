"""Asking for a report over HTTP: one report.requested per order, however often a client retries it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from services.gateway.idempotency import IdempotencyKeys, IdempotentRequest
from services.gateway.store import ReportStatuses
from services.gateway.views import ReportOrder
from shared.context import EventContext, event_scope
from shared.events import CloudEvent, ReportRequested, derived_event_id
from shared.handling import EventMeta, EventPublisher, ProcessedEvents
from shared.topology import GATEWAY_PROGRESS

log = structlog.get_logger("hotrepos.gateway")


class FutureDate(ValueError):
    """ref_date lies after today."""


class KeyReused(ValueError):
    """An Idempotency-Key already stands for a different order."""


@dataclass(frozen=True)
class Ordering:
    """What placing an order talks to; the composition root builds them, tests may build others."""

    publisher: EventPublisher
    statuses: ReportStatuses
    idempotency: IdempotencyKeys
    processed: ProcessedEvents
    today: Callable[[], dt.date]
    # Errors of Redis that leave the order queued all the same: the status catches up from the queue.
    store_errors: tuple[type[BaseException], ...] = ()


def place_order(ordering: Ordering, order: ReportOrder, locale: str | None, idempotency_key: str | None) -> str:
    """The order's report id, once its report.requested is confirmed by the broker.

    Raises FutureDate, KeyReused, or whatever the publisher raises when the broker does not answer.
    """
    today = ordering.today()
    if order.ref_date is not None and order.ref_date > today:
        raise FutureDate(f"must not be in the future (today is {today.isoformat()} UTC)")
    request_hash = _hash_of(order, locale)
    request = IdempotentRequest(report_id=uuid.uuid4().hex, request_hash=request_hash)
    if idempotency_key is not None:
        request = ordering.idempotency.claim(idempotency_key, request)
        if request.request_hash != request_hash:
            raise KeyReused("already used for a different request")
    if not request.published:
        event_id = derived_event_id(request.report_id, "requested")
        # Folded here, at once, so that a GET right after the answer finds the report; the copy that
        # comes back through the gateway's own queue is then a duplicate, and is not folded again.
        try:
            ordering.processed.remember(GATEWAY_PROGRESS.queue_name, event_id)
        except ordering.store_errors as exc:
            log.warning("dedup.not_recorded", error=str(exc), report_id=request.report_id)
        event = _publish_request(ordering.publisher, request.report_id, event_id, order, locale)
        log.info("report.accepted", report_id=request.report_id, period=order.period)
        _after_publishing(ordering, idempotency_key, request, event)
    return request.report_id


def _hash_of(order: ReportOrder, locale: str | None) -> str:
    canonical = json.dumps([order.model_dump(mode="json"), locale], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _publish_request(
    publisher: EventPublisher, report_id: str, event_id: str, order: ReportOrder, locale: str | None
) -> CloudEvent:
    data = ReportRequested(
        report_id=report_id,
        period=order.period,
        ref_date=order.ref_date,
        notify=order.notify,
        layout=order.layout,
        # Someone is at the page or the API waiting for it: ahead of schedules and bulk jobs.
        priority="interactive",
    )
    with event_scope(EventContext(correlationid=report_id, locale=locale)):
        # Derived from the report id: a retry that publishes again is deduplicated by every consumer.
        return publisher.publish(data, event_id=event_id)


def _after_publishing(
    ordering: Ordering, idempotency_key: str | None, request: IdempotentRequest, event: CloudEvent
) -> None:
    """Record what the broker confirmed; the request is queued, so a Redis hiccup here must not fail it."""
    try:
        if idempotency_key is not None:
            ordering.idempotency.mark_published(idempotency_key, request)
        ordering.statuses.apply(ReportRequested.model_validate(event.data), EventMeta.of(event))
    except ordering.store_errors as exc:
        log.warning("projection.deferred", error=str(exc), report_id=request.report_id)
