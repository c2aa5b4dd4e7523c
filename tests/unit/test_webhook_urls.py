"""The webhook URL guard: what may be called, at registration and at connection time, and why not."""

from __future__ import annotations

import base64
import re

import pytest

from shared.webhooks import UrlGuard, UrlRefused, WebhookDelivery, address_kind, delivery_id, new_secret
from tests.support.fakes import FakeResolver

DNS = FakeResolver(
    {
        "hooks.example.com": ["93.184.215.14"],
        "localhost": ["127.0.0.1", "::1"],
        "rebound.example.com": ["93.184.215.14", "10.1.2.3"],
        "metadata.example.com": ["169.254.169.254"],
        "receiver.internal": ["10.20.30.40"],
    }
)
GUARD = UrlGuard(resolve=DNS)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("https://[fd00::1]/hook", "private"),
        ("https://[fe80::1]/hook", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://240.0.0.1/hook", "reserved"),
        ("http://localhost/", "localhost resolves to 127.0.0.1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("https://rebound.example.com/hook", "rebound.example.com resolves to 10.1.2.3, a private address"),
        ("https://metadata.example.com/hook", "link-local"),
        ("file:///etc/passwd", "scheme must be http or https, not 'file'"),
        ("gopher://hooks.example.com:70/_evil", "scheme must be http or https, not 'gopher'"),
        ("ftp://hooks.example.com/hook", "scheme must be http or https"),
        ("hooks.example.com/hook", "scheme must be http or https, not 'none'"),
        ("https://user:secret@hooks.example.com/hook", "user-info"),
        ("https://user@hooks.example.com/hook", "user-info"),
        ("https://hooks.example.com:0/hook", "port must be a number from 1 to 65535"),
        ("https://hooks.example.com:65536/hook", "port must be a number from 1 to 65535"),
        ("https://hooks.example.com:http/hook", "port must be a number from 1 to 65535"),
        ("https://hooks.example.com/" + "a" * 2030, "at most 2048"),
        ("https:///hook", "has no host"),
        ("https://hooks.example.com/a b", "spaces or control characters"),
        ("https://nowhere.example.com/hook", "does not resolve"),
        ("http://hooks.example.com/hook", "must use https"),
    ],
)
def test_a_url_is_refused_with_its_reason(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused, match=re.escape(reason)):
        GUARD.check(url)


def test_a_public_https_url_passes() -> None:
    checked = GUARD.check("https://hooks.example.com/hook?x=1")
    assert (checked.scheme, checked.host, checked.port, checked.allowed) == ("https", "hooks.example.com", 443, False)
    assert GUARD.check("https://[2606:4700::1111]:8443/h").port == 8443


def test_allowed_hosts_may_use_http_and_be_inside_the_network() -> None:
    guard = UrlGuard.allowing(["127.0.0.1", " Receiver.Internal. "], resolve=DNS)
    assert guard.check("http://127.0.0.1:9000/hook").allowed
    assert guard.check("http://receiver.internal/hook").allowed
    assert guard.public_addresses("receiver.internal", 80) == ["10.20.30.40"]
    # Listed by address, not by name: localhost is still refused, and so is 127.0.0.2.
    with pytest.raises(UrlRefused, match="loopback"):
        guard.check("http://localhost:9000/hook")
    with pytest.raises(UrlRefused, match="loopback"):
        guard.check("http://127.0.0.2:9000/hook")
    # The other rules hold for an allowed host too.
    with pytest.raises(UrlRefused, match="user-info"):
        guard.check("http://me:pw@127.0.0.1:9000/hook")
    with pytest.raises(UrlRefused, match="scheme"):
        guard.check("gopher://127.0.0.1:70/")


def test_loopback_is_refused_without_the_allow_list() -> None:
    with pytest.raises(UrlRefused, match=re.escape("127.0.0.1 is a loopback address")):
        UrlGuard(resolve=DNS).check("http://127.0.0.1:9000/hook")


def test_at_connection_time_a_name_that_now_resolves_inside_is_refused() -> None:
    """DNS rebinding: the name was public when checked, and points inside when the sender connects."""
    rebinding = FakeResolver({"hooks.example.com": ["93.184.215.14"]})
    guard = UrlGuard(resolve=rebinding)
    assert guard.check("https://hooks.example.com/hook").allowed is False
    rebinding.table["hooks.example.com"] = ["127.0.0.1"]
    with pytest.raises(UrlRefused, match="loopback"):
        guard.public_addresses("hooks.example.com", 443)


@pytest.mark.parametrize(
    ("address", "kind"),
    [("8.8.8.8", None), ("2001:4860:4860::8888", None), ("100.64.0.1", "not a public address"), ("::", "unspecified")],
)
def test_the_kind_of_an_address(address: str, kind: str | None) -> None:
    found = address_kind(address)
    assert (found is None) if kind is None else (kind in (found or ""))


def test_a_secret_is_standard_webhooks_shaped_and_a_delivery_id_is_stable() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert new_secret() != secret
    assert delivery_id("s-1", "e-1") == delivery_id("s-1", "e-1") != delivery_id("s-2", "e-1")
    assert "body" in WebhookDelivery.model_fields
