"""app.outbound as pure logic: Standard Webhooks signatures (checked with the reference library),
the address guard against faked DNS answers, and the webhook retry schedule."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.outbound import AllowList, OutboundRefused, Target, check_url, is_public, new_secret, signed_headers
from app.webhooks.service import retry_delay


def resolves_to(*addresses: str):  # type: ignore[no-untyped-def]
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return list(addresses)

    resolver.calls = calls  # type: ignore[attr-defined]
    return resolver


def no_such_host(host: str, port: int) -> list[str]:
    raise OSError("Name or service not known")


# ----------------------------------------------------------------- signing


def test_a_signed_body_verifies_with_the_standardwebhooks_library():
    secret = new_secret()
    body = b'{"id":1,"type":"agent.execution.completed"}'
    headers = signed_headers(secret, "msg_2b3c", body)
    assert Webhook(secret).verify(body, headers) == {"id": 1, "type": "agent.execution.completed"}
    assert headers["webhook-signature"].startswith("v1,")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5


def test_a_changed_body_id_or_timestamp_does_not_verify():
    secret = new_secret()
    headers = signed_headers(secret, "msg_1", b"{}")
    for changed in (
        (b'{"x":1}', headers),
        (b"{}", headers | {"webhook-id": "msg_2"}),
        (b"{}", headers | {"webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}),
    ):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(*changed)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(b"{}", headers)  # another endpoint's secret


def test_a_secret_is_whsec_and_the_base64_of_24_to_64_random_bytes():
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert len(base64.b64decode(new_secret(32).removeprefix("whsec_"))) == 32
    assert new_secret() != new_secret()
    with pytest.raises(ValueError):
        new_secret(8)


def test_the_signature_is_the_documented_hmac_of_id_timestamp_and_body():
    import hashlib
    import hmac

    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    mac = hmac.new(b"k" * 24, b"msg_1.1700000000.{}", hashlib.sha256).digest()
    assert signed_headers(secret, "msg_1", b"{}", timestamp=1700000000)["webhook-signature"] == (
        "v1," + base64.b64encode(mac).decode()
    )


# ------------------------------------------------------------------- guard

NOTHING_LISTED = AllowList.parse("")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::",
    ],
)
def test_a_host_resolving_to_a_non_public_address_is_refused(address):  # type: ignore[no-untyped-def]
    with pytest.raises(OutboundRefused, match="non-public"):
        check_url("https://hooks.example.com/x", NOTHING_LISTED, resolves_to(address))


def test_a_public_address_is_called_and_pinned():
    resolver = resolves_to("93.184.216.34")
    target = check_url("https://Hooks.Example.com:8443/in?a=1", NOTHING_LISTED, resolver)
    assert resolver.calls == [("hooks.example.com", 8443)]  # type: ignore[attr-defined]
    assert target == Target(
        "https://Hooks.Example.com:8443/in?a=1", "https", "hooks.example.com", 8443, "93.184.216.34"
    )
    assert target.pinned_url() == "https://93.184.216.34:8443/in?a=1"
    assert target.host_header() == "hooks.example.com:8443"
    assert is_public(__import__("ipaddress").ip_address("93.184.216.34"))


def test_one_private_address_among_public_ones_refuses_the_host():
    with pytest.raises(OutboundRefused, match="10.1.2.3"):
        check_url("http://mixed.example.com/", NOTHING_LISTED, resolves_to("93.184.216.34", "10.1.2.3"))


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/"]
)
def test_a_literal_private_address_is_refused_after_resolution(url):  # type: ignore[no-untyped-def]
    from app.outbound import system_resolver

    with pytest.raises(OutboundRefused):
        check_url(url, NOTHING_LISTED, system_resolver)  # a literal resolves to itself, no DNS


@pytest.mark.parametrize(
    ("setting", "url", "answer"),
    [
        ("127.0.0.1", "http://localhost:9000/", "127.0.0.1"),  # the address is listed
        ("localhost", "http://localhost:9000/", "127.0.0.1"),  # the host is listed
        ("10.0.0.0/8", "http://hooks.internal/", "10.9.8.7"),  # a network
        ("*.corp.example", "http://a.b.corp.example/", "192.168.0.10"),  # a suffix
        ("::1", "http://[::1]:9000/", "::1"),
    ],
)
def test_an_allow_listed_host_or_address_may_be_private(setting, url, answer):  # type: ignore[no-untyped-def]
    target = check_url(url, AllowList.parse(setting), resolves_to(answer))
    assert target.address == answer


def test_the_allow_list_does_not_leak_to_other_private_addresses():
    allow = AllowList.parse("127.0.0.1, hooks.internal")
    with pytest.raises(OutboundRefused):
        check_url("http://other.internal/", allow, resolves_to("10.0.0.5"))
    with pytest.raises(OutboundRefused):
        check_url("http://localhost/", allow, resolves_to("127.0.0.2"))


def test_a_strict_allow_list_refuses_every_unlisted_host_even_a_public_one():
    strict = AllowList.parse("tools.example.com", public=False)
    with pytest.raises(OutboundRefused, match="not in the allow-list"):
        check_url("https://other.example.com/", strict, resolves_to("93.184.216.34"))
    assert check_url("https://tools.example.com/", strict, resolves_to("93.184.216.34")).port == 443


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://hooks.example.com/", "http and https"),
        ("file:///etc/passwd", "http and https"),
        ("http:///nohost", "no host"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("http://hooks.example.com:99999/", "not a valid URL"),
    ],
)
def test_urls_that_are_not_plain_http_are_refused(url, why):  # type: ignore[no-untyped-def]
    with pytest.raises(OutboundRefused, match=why):
        check_url(url, NOTHING_LISTED, resolves_to("93.184.216.34"))


def test_a_host_that_does_not_resolve_is_refused():
    with pytest.raises(OutboundRefused, match="does not resolve"):
        check_url("https://nowhere.invalid/", NOTHING_LISTED, no_such_host)
    with pytest.raises(OutboundRefused, match="does not resolve"):
        check_url("https://nowhere.invalid/", NOTHING_LISTED, resolves_to())


def test_an_ipv6_target_is_pinned_in_brackets():
    target = check_url("http://v6.example.com/hook", NOTHING_LISTED, resolves_to("2606:4700::1111"))
    assert target.pinned_url() == "http://[2606:4700::1111]:80/hook"
    assert target.host_header() == "v6.example.com"


# ----------------------------------------------------------------- retries


def test_retries_back_off_from_the_base_doubling():
    assert [retry_delay(n, 5.0) for n in range(1, 6)] == [5.0, 10.0, 20.0, 40.0, 80.0]
    assert retry_delay(1, 5.0, jitter=0.1) == pytest.approx(5.5)
    # 24 h of retries from 5 s: the 15th wait (5 x 2^14 s) no longer fits in the window.
    waits = [retry_delay(n, 5.0) for n in range(1, 16)]
    assert sum(waits[:14]) < 86400 < sum(waits)
