"""Webhook subscriptions: written by the gateway, read by the webhooks service, defined once here.

What both sides share: the subscription and delivery-record models, the Redis store that keeps them
(Redis runs with AOF in compose, so they survive a restart), the webhooks service's own delivery
message, and the URL guard that a webhook URL passes at registration (gateway) and again at every
delivery (webhooks service). Nothing here imports a transport or a Redis client: handlers use it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_settings import NoDecode

from shared.events import EventData, ReportId, derived_event_id
from shared.ownership import is_scheduled_report
from shared.stored import decode_stored

# The events a subscriber may ask for: a report's outcome, exported or failed.
WebhookEventType = Literal["report.exported", "report.failed"]
WEBHOOK_EVENT_TYPES: tuple[WebhookEventType, ...] = ("report.exported", "report.failed")
WebhookFormat = Literal["standard", "slack"]
DeliveryStatus = Literal["delivered", "retrying", "failed"]

# The webhooks service's own message: one delivery of one event to one subscription.
WEBHOOK_DELIVERY = "webhook.delivery"

MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks asks for 24 to 64
# How many deliveries each subscription's history keeps, newest first.
DELIVERIES_KEPT = 100
RECORDS_TTL_SECONDS = 30 * 24 * 3600


class WebhookSubscription(BaseModel):
    """Who hears of which report outcomes, where, and how (the secret signs standard deliveries)."""

    model_config = ConfigDict(frozen=True)

    id: str
    url: str
    events: tuple[WebhookEventType, ...]
    format: WebhookFormat
    description: str | None = None
    secret: str | None = None
    created_at: dt.datetime
    # Who created it (the gateway's identity): only they and admins manage it; None from before owners.
    owner: str | None = None
    # An admin's subscription hears of every report; anyone else's of their own and the scheduled ones.
    owner_admin: bool = False

    def hears_of(self, report_id: str, report_owner: str | None) -> bool:
        """Whether this subscription may hear of the report: its creator may see it."""
        if self.owner is None or self.owner_admin:
            return True
        return report_owner == self.owner or (report_owner is None and is_scheduled_report(report_id))


class DeliveryRecord(BaseModel):
    """Where one event's delivery to one subscription stands."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    event_type: str
    report_id: str | None
    status: DeliveryStatus
    attempts: int = Field(ge=0)
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: dt.datetime | None = None
    updated_at: dt.datetime


class WebhookDelivery(EventData):
    """Deliver one event to one webhook subscription (the webhooks service's own message)."""

    subscription_id: str = Field(max_length=64)
    event_id: str = Field(max_length=128, description="The delivered event's id: the webhook-id header")
    event_type: WebhookEventType
    report_id: ReportId
    body: str = Field(
        max_length=1_000_000,
        description="The CloudEvent as it went over the broker, in JSON: the body of a standard delivery",
    )


def delivery_id(subscription_id: str, event_id: str) -> str:
    """One message id per (subscription, event): the delivery queue's dedup sends it once however often
    it is published, across replicas and redeliveries."""
    return derived_event_id("webhook", subscription_id, event_id)


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and the base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class WebhookSubscriptions(Protocol):
    """The subscriptions, as the gateway manages them and the webhooks service reads them."""

    def add(self, subscription: WebhookSubscription) -> None: ...

    def get(self, subscription_id: str) -> WebhookSubscription | None: ...

    def all(self) -> list[WebhookSubscription]: ...

    def delete(self, subscription_id: str) -> bool:
        """False when there was no such subscription."""
        ...


class DeliveryRecords(Protocol):
    """Each subscription's latest deliveries, and a short lease on one delivery being sent."""

    def get(self, subscription_id: str, event_id: str) -> DeliveryRecord | None: ...

    def save(self, subscription_id: str, record: DeliveryRecord) -> None: ...

    def latest(self, subscription_id: str, limit: int) -> list[DeliveryRecord]: ...

    def start_sending(self, subscription_id: str, event_id: str, lease_seconds: float) -> bool:
        """False while another replica holds the lease on this very delivery."""
        ...

    def done_sending(self, subscription_id: str, event_id: str) -> None: ...


_SUBSCRIPTIONS_KEY = "hotrepos:webhooks:subscriptions"


def _records_key(subscription_id: str) -> str:
    return f"hotrepos:webhooks:deliveries:{subscription_id}"


def _order_key(subscription_id: str) -> str:
    return f"hotrepos:webhooks:delivery-order:{subscription_id}"


def _lease_key(subscription_id: str, event_id: str) -> str:
    return f"hotrepos:webhooks:sending:{subscription_id}:{event_id}"


class RedisWebhookSubscriptions:
    """Every subscription in one Redis hash, by id."""

    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    def add(self, subscription: WebhookSubscription) -> None:
        self._redis.hset(_SUBSCRIPTIONS_KEY, subscription.id, subscription.model_dump_json())

    def get(self, subscription_id: str) -> WebhookSubscription | None:
        return decode_stored(WebhookSubscription, self._redis.hget(_SUBSCRIPTIONS_KEY, subscription_id))

    def all(self) -> list[WebhookSubscription]:
        found = (decode_stored(WebhookSubscription, raw) for raw in self._redis.hvals(_SUBSCRIPTIONS_KEY))
        return sorted((s for s in found if s is not None), key=lambda s: (s.created_at, s.id))

    def delete(self, subscription_id: str) -> bool:
        """The subscription and its deliveries' history; a delivery still waiting finds it gone."""
        pipe = self._redis.pipeline()
        pipe.hdel(_SUBSCRIPTIONS_KEY, subscription_id)
        pipe.delete(_records_key(subscription_id), _order_key(subscription_id))
        removed, _ = pipe.execute()
        return bool(removed)


class RedisDeliveryRecords:
    """Each subscription's deliveries: a hash by event id, ordered by a sorted set, the latest kept."""

    def __init__(self, redis_client: Any, *, ttl_seconds: int = RECORDS_TTL_SECONDS) -> None:
        self._redis = redis_client
        self._ttl = ttl_seconds

    def get(self, subscription_id: str, event_id: str) -> DeliveryRecord | None:
        return decode_stored(DeliveryRecord, self._redis.hget(_records_key(subscription_id), event_id))

    def save(self, subscription_id: str, record: DeliveryRecord) -> None:
        records, order = _records_key(subscription_id), _order_key(subscription_id)
        pipe = self._redis.pipeline()
        pipe.hset(records, record.event_id, record.model_dump_json())
        # Ordered by the first attempt: a retry does not move a delivery up the list.
        pipe.zadd(order, {record.event_id: record.updated_at.timestamp()}, nx=True)
        pipe.zrange(order, 0, -DELIVERIES_KEPT - 1)
        pipe.zremrangebyrank(order, 0, -DELIVERIES_KEPT - 1)
        # A subscription deleted meanwhile leaves no history behind for long.
        pipe.expire(records, self._ttl)
        pipe.expire(order, self._ttl)
        _, _, dropped, *_ = pipe.execute()
        if dropped:
            self._redis.hdel(records, *dropped)

    def latest(self, subscription_id: str, limit: int) -> list[DeliveryRecord]:
        ids = self._redis.zrevrange(_order_key(subscription_id), 0, max(0, limit - 1))
        if not ids:
            return []
        found = (decode_stored(DeliveryRecord, raw) for raw in self._redis.hmget(_records_key(subscription_id), ids))
        return [record for record in found if record is not None]

    def start_sending(self, subscription_id: str, event_id: str, lease_seconds: float) -> bool:
        lease = max(1, int(lease_seconds * 1000))
        return bool(self._redis.set(_lease_key(subscription_id, event_id), 1, nx=True, px=lease))

    def done_sending(self, subscription_id: str, event_id: str) -> None:
        self._redis.delete(_lease_key(subscription_id, event_id))


# --- The URL guard --------------------------------------------------------------------------------


class UrlRefused(ValueError):
    """A webhook URL that may not be called; the message says why."""


Resolver = Callable[[str, int], list[str]]


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address the host resolves to, as the connection would find them (raises socket.gaierror)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _host_list(value: object) -> object:
    if isinstance(value, str):
        return [normalise_host(part) for part in value.split(",") if part.strip()]
    if isinstance(value, Iterable):
        return [normalise_host(str(part)) for part in value]
    return value


# A settings field: WEBHOOK_ALLOWED_HOSTS=127.0.0.1,receiver.internal (comma-separated host names).
AllowedHosts = Annotated[list[str], NoDecode, BeforeValidator(_host_list)]

_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x20\x7f]")
_INSIDE_ONLY_IF_ALLOWED = "only hosts listed in WEBHOOK_ALLOWED_HOSTS may be inside the network"


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the rules that need no name resolution."""

    scheme: str
    host: str
    port: int
    allowed: bool  # its host is in WEBHOOK_ALLOWED_HOSTS: any scheme of the two, any address


def address_kind(address: str) -> str | None:
    """What range inside the network an address is in ("a loopback address"), or None for a public one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class UrlGuard:
    """The rules a webhook URL must pass, at registration and again at every delivery.

    http or https, https unless the host is in allowed_hosts; no user-info; at most 2,048
    characters; a port in 1-65535; and, unless the host is in allowed_hosts, no address it resolves
    to inside the network (loopback, private, link-local, multicast, unspecified, reserved).
    """

    allowed_hosts: frozenset[str] = frozenset()
    resolve: Resolver = field(default=resolve_addresses, compare=False)

    @classmethod
    def allowing(cls, hosts: Iterable[str], resolve: Resolver = resolve_addresses) -> UrlGuard:
        return cls(frozenset(normalise_host(h) for h in hosts if h.strip()), resolve)

    def check(self, url: str) -> CheckedUrl:
        """Every rule, resolving the name: at registration. Raises UrlRefused."""
        checked = self._form(url)
        if not checked.allowed:
            try:
                self.public_addresses(checked.host, checked.port)
            except OSError as exc:
                raise UrlRefused(f"host {checked.host!r} does not resolve: {exc}") from None
        return _https_unless_allowed(checked)

    def check_unresolved(self, url: str) -> CheckedUrl:
        """Every rule that needs no name resolution: before each delivery, whose connection then checks
        the addresses themselves (public_addresses). Raises UrlRefused."""
        return _https_unless_allowed(self._form(url))

    def _form(self, url: str) -> CheckedUrl:
        if len(url) > MAX_URL_LENGTH:
            raise UrlRefused(f"is {len(url)} characters long; at most {MAX_URL_LENGTH}")
        if _UNSAFE_CHARACTERS.search(url):
            raise UrlRefused("must not contain spaces or control characters")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UrlRefused(f"scheme must be http or https, not {scheme or 'none'!r}")
        if "@" in parts.netloc:
            raise UrlRefused("must not carry user-info (user:password@)")
        host = normalise_host(parts.hostname or "")
        if not host:
            raise UrlRefused("has no host")
        port = _port_of(parts, scheme)
        allowed = host in self.allowed_hosts
        if not allowed and _is_address(host):
            kind = address_kind(host)
            if kind is not None:
                raise UrlRefused(f"{host} is {kind}; {_INSIDE_ONLY_IF_ALLOWED}")
        return CheckedUrl(scheme, host, port, allowed)

    def public_addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to: all of them public, unless the host is allowed.

        Raises UrlRefused for an address inside the network, OSError when the name does not resolve.
        Called at connection time too, so that a name which resolves elsewhere since its check
        (DNS rebinding) gains nothing.
        """
        addresses = self.resolve(host, port)
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        if normalise_host(host) in self.allowed_hosts:
            return addresses
        for address in addresses:
            kind = address_kind(address)
            if kind is not None:
                raise UrlRefused(f"{host} resolves to {address}, {kind}; {_INSIDE_ONLY_IF_ALLOWED}")
        return addresses


def _https_unless_allowed(checked: CheckedUrl) -> CheckedUrl:
    if checked.scheme != "https" and not checked.allowed:
        raise UrlRefused("must use https: plain http is only for hosts listed in WEBHOOK_ALLOWED_HOSTS")
    return checked


def _port_of(parts: SplitResult, scheme: str) -> int:
    try:
        port = parts.port
    except ValueError:
        raise UrlRefused("port must be a number from 1 to 65535") from None
    if port is None:
        return 443 if scheme == "https" else 80
    if not 1 <= port <= 65535:
        raise UrlRefused("port must be a number from 1 to 65535")
    return port


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a name: its addresses are checked once resolved
    return True
