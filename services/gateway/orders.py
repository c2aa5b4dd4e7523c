"""Asking for a report over HTTP: one report.requested per order, however often a client retries it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from services.gateway.access import Identity
from services.gateway.idempotency import IdempotencyKeys, IdempotentRequest, RecentOrders
from services.gateway.quota import RequestQuota
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


class QuotaExceeded(Exception):
    """The identity asked for GATEWAY_REQUESTS_PER_HOUR reports within the last hour."""

    def __init__(self, identity: str, retry_after: float) -> None:
        super().__init__(f"too many report requests: retry in {retry_after:g} s")
        self.identity = identity
        self.retry_after = retry_after


@dataclass(frozen=True)
class Ordering:
    """What placing an order talks to; the composition root builds them, tests may build others."""

    publisher: EventPublisher
    statuses: ReportStatuses
    idempotency: IdempotencyKeys
    processed: ProcessedEvents
    today: Callable[[], dt.date]
    recent_orders: RecentOrders
    quota: RequestQuota
    # Errors of Redis that leave the order queued all the same: the status catches up from the queue.
    store_errors: tuple[type[BaseException], ...] = ()


def place_order(
    ordering: Ordering, order: ReportOrder, locale: str | None, idempotency_key: str | None, requester: Identity
) -> str:
    """The order's report id, once its report.requested is confirmed by the broker.

    A retry with the same Idempotency-Key, or an order the requester placed already and whose report
    is still in flight, gets that report again, and counts nothing against the quota.
    Raises FutureDate, KeyReused, QuotaExceeded, or whatever the publisher raises when the broker does
    not answer.
    """
    today = ordering.today()
    if order.ref_date is not None and order.ref_date > today:
        raise FutureDate(f"must not be in the future (today is {today.isoformat()} UTC)")
    if order.notify is None and requester.email is not None:
        order = order.model_copy(update={"notify": requester.email})
    request_hash = _hash_of(order, locale)
    request = IdempotentRequest(report_id=uuid.uuid4().hex, request_hash=request_hash)
    # One identity's keys are its own: another's same key is another order.
    scoped_key = None if idempotency_key is None else f"{requester.name}\0{idempotency_key}"
    if scoped_key is not None:
        request = ordering.idempotency.claim(scoped_key, request)
        if request.request_hash != request_hash:
            raise KeyReused("already used for a different request")
    if request.published:
        return request.report_id
    # The same period of the same day: what a report with no ref_date covers depends on the day.
    order_hash = _hash_of(order.model_copy(update={"ref_date": order.ref_date or today}), locale)
    in_flight = _join_in_flight(ordering, requester, order_hash, scoped_key, request)
    if in_flight is not None:
        return in_flight
    retry_after = ordering.quota.take(requester.name, request.report_id)
    if retry_after is not None:
        raise QuotaExceeded(requester.name, retry_after)
    try:
        event = _publish_new(ordering, request, order, locale, requester)
    except Exception:
        _give_back(ordering, requester, request.report_id)
        raise
    _after_publishing(ordering, scoped_key, request, requester, order_hash, event)
    return request.report_id


def _give_back(ordering: Ordering, requester: Identity, report_id: str) -> None:
    """A request that was not placed (the broker or Redis did not answer) leaves the quota as it was."""
    try:
        ordering.quota.give_back(requester.name, report_id)
    except ordering.store_errors as exc:
        log.warning("quota.not_given_back", error=str(exc), report_id=report_id)


def _publish_new(
    ordering: Ordering, request: IdempotentRequest, order: ReportOrder, locale: str | None, requester: Identity
) -> CloudEvent:
    # Before publishing: no event of the report may be folded before its owner is known.
    ordering.statuses.record_owner(request.report_id, requester.name, dt.datetime.now(dt.UTC))
    event_id = derived_event_id(request.report_id, "requested")
    # Folded here, at once, so that a GET right after the answer finds the report; the copy that
    # comes back through the gateway's own queue is then a duplicate, and is not folded again.
    try:
        ordering.processed.remember(GATEWAY_PROGRESS.queue_name, event_id)
    except ordering.store_errors as exc:
        log.warning("dedup.not_recorded", error=str(exc), report_id=request.report_id)
    event = _publish_request(ordering.publisher, request.report_id, event_id, order, locale)
    log.info("report.accepted", report_id=request.report_id, period=order.period, identity=requester.name)
    return event


def _join_in_flight(
    ordering: Ordering, requester: Identity, order_hash: str, scoped_key: str | None, request: IdempotentRequest
) -> str | None:
    """The requester's report of this very order, if it has not finished yet; the key then stands for it."""
    report_id = ordering.recent_orders.last(requester.name, order_hash)
    if report_id is None:
        return None
    status = ordering.statuses.get(report_id)
    # Not folded yet (Redis hiccuped after the broker confirmed it): it is in flight all the same.
    if status is not None and status.terminal:
        return None
    log.info("report.joined", report_id=report_id, identity=requester.name)
    if scoped_key is not None:
        ordering.idempotency.mark_published(scoped_key, request.model_copy(update={"report_id": report_id}))
    return report_id


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
    ordering: Ordering,
    scoped_key: str | None,
    request: IdempotentRequest,
    requester: Identity,
    order_hash: str,
    event: CloudEvent,
) -> None:
    """Record what the broker confirmed; the request is queued, so a Redis hiccup here must not fail it."""
    try:
        if scoped_key is not None:
            ordering.idempotency.mark_published(scoped_key, request)
        ordering.recent_orders.remember(requester.name, order_hash, request.report_id)
        ordering.statuses.apply(ReportRequested.model_validate(event.data), EventMeta.of(event))
    except ordering.store_errors as exc:
        log.warning("projection.deferred", error=str(exc), report_id=request.report_id)
