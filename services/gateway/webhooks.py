"""Webhook subscriptions over HTTP: register, list, remove, and see each one's latest deliveries.

Plain routes on an APIRouter, included by create_app like the others: whatever guards the API guards
them too. A subscription is its creator's: to anyone else but an admin it does not exist. The
subscriptions live in Redis (shared/webhooks.py), where the webhooks service reads them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.access import Caller, Identity
from services.gateway.hardening import log_refusal
from shared.webhooks import (
    MAX_URL_LENGTH,
    WEBHOOK_EVENT_TYPES,
    DeliveryRecord,
    DeliveryRecords,
    DeliveryStatus,
    UrlGuard,
    UrlRefused,
    WebhookEventType,
    WebhookFormat,
    WebhookSubscription,
    WebhookSubscriptions,
    new_secret,
)

log = structlog.get_logger("hotrepos.gateway")

DELIVERIES_SHOWN = 50


class WebhookOrder(BaseModel):
    """A subscription as a client asks for it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"url": "https://ci.example.com/hooks/hotrepos", "events": ["report.exported"]},
                {"url": "https://hooks.slack.com/services/T000/B000/XXXX", "format": "slack"},
            ]
        },
    )

    url: str = Field(max_length=MAX_URL_LENGTH, description="https, outside the network (see the docs' URL rules)")
    events: list[WebhookEventType] = Field(
        default_factory=lambda: list(WEBHOOK_EVENT_TYPES), min_length=1, description="Defaults to both"
    )
    format: WebhookFormat = Field(
        default="standard", description="standard: the signed CloudEvent; slack: a text for an incoming webhook"
    )
    description: str | None = Field(default=None, max_length=500)


class WebhookView(BaseModel):
    """A subscription as the API lists it: never with its secret."""

    id: str
    url: str
    events: list[WebhookEventType]
    format: WebhookFormat
    description: str | None
    created_at: dt.datetime


class WebhookCreated(BaseModel):
    """A new subscription, with its secret: shown only in this answer."""

    id: str
    url: str
    events: list[WebhookEventType]
    format: WebhookFormat
    description: str | None
    secret: str | None = Field(description="Standard Webhooks secret (whsec_...); none for slack")


class DeliveryView(BaseModel):
    event_id: str = Field(description="The event's id: the webhook-id header of each attempt")
    event_type: str
    report_id: str | None
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: dt.datetime | None


@dataclass(frozen=True)
class WebhookAdmin:
    """What the webhook routes talk to; the composition root builds them, tests may build others."""

    subscriptions: WebhookSubscriptions
    deliveries: DeliveryRecords
    guard: UrlGuard
    new_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))


def view_of(subscription: WebhookSubscription) -> WebhookView:
    return WebhookView(
        id=subscription.id,
        url=subscription.url,
        events=list(subscription.events),
        format=subscription.format,
        description=subscription.description,
        created_at=subscription.created_at,
    )


def delivery_view(record: DeliveryRecord) -> DeliveryView:
    return DeliveryView.model_validate(record.model_dump(include=set(DeliveryView.model_fields)))


def webhook_routes(admin: WebhookAdmin) -> APIRouter:
    router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])

    def visible_webhook(request: Request, webhook_id: str, identity: Identity) -> WebhookSubscription | None:
        """The subscription, if the caller may manage it: its creator, or an admin."""
        subscription = admin.subscriptions.get(webhook_id) if 0 < len(webhook_id) <= 64 else None
        if subscription is None or identity.admin or subscription.owner == identity.name:
            return subscription
        log_refusal(request.scope, 404, "another identity's webhook", identity=identity.name, webhook_id=webhook_id)
        return None

    def not_found(webhook_id: str) -> JSONResponse:
        return JSONResponse({"detail": f"no webhook {webhook_id!r}"}, status_code=404)

    @router.post(
        "",
        status_code=201,
        response_model=WebhookCreated,
        responses={422: {"description": "A field is invalid, or the URL may not be called (the reason says why)"}},
    )
    def add_webhook(order: WebhookOrder, identity: Caller) -> JSONResponse:
        """Subscribe a URL to report outcomes; the answer holds the signing secret, shown only here."""
        try:
            admin.guard.check(order.url)
        except UrlRefused as exc:
            log.info("webhook.refused", reason=str(exc))
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("body", "url"), "msg": f"Value error, {exc}", "input": order.url}]
            ) from None
        subscription = WebhookSubscription(
            id=admin.new_id(),
            url=order.url,
            events=tuple(dict.fromkeys(order.events)),
            format=order.format,
            description=order.description,
            secret=new_secret() if order.format == "standard" else None,
            created_at=admin.clock(),
            owner=identity.name,
            owner_admin=identity.admin,
        )
        admin.subscriptions.add(subscription)
        log.info("webhook.added", webhook_id=subscription.id, format=subscription.format, identity=identity.name)
        created = WebhookCreated(**view_of(subscription).model_dump(exclude={"created_at"}), secret=subscription.secret)
        return JSONResponse(
            created.model_dump(mode="json"), status_code=201, headers={"Location": f"/api/webhooks/{subscription.id}"}
        )

    @router.get("", response_model=list[WebhookView])
    def list_webhooks(identity: Caller) -> list[WebhookView]:
        """The caller's subscriptions (an admin's: every one), oldest first, without secrets."""
        return [
            view_of(subscription)
            for subscription in admin.subscriptions.all()
            if identity.admin or subscription.owner == identity.name
        ]

    @router.delete("/{webhook_id}", status_code=204, responses={404: {"description": "Unknown webhook"}})
    def remove_webhook(request: Request, webhook_id: str, identity: Caller) -> Response:
        """Unsubscribe: a delivery still waiting for a retry is dropped when its turn comes."""
        if visible_webhook(request, webhook_id, identity) is None or not admin.subscriptions.delete(webhook_id):
            return not_found(webhook_id)
        log.info("webhook.removed", webhook_id=webhook_id, identity=identity.name)
        return Response(status_code=204)

    @router.get(
        "/{webhook_id}/deliveries",
        response_model=list[DeliveryView],
        responses={404: {"description": "Unknown webhook"}},
    )
    def webhook_deliveries(
        request: Request,
        webhook_id: str,
        identity: Caller,
        limit: Annotated[int, Query(ge=1, le=100)] = DELIVERIES_SHOWN,
    ) -> list[DeliveryView] | JSONResponse:
        """The subscription's latest deliveries, newest first: delivered, retrying or failed."""
        if visible_webhook(request, webhook_id, identity) is None:
            return not_found(webhook_id)
        return [delivery_view(record) for record in admin.deliveries.latest(webhook_id, limit)]

    return router
