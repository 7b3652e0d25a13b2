"""app.outbound.post against a real local HTTP server: the pinned address, the Host header, the
response cap, no redirect followed, the timeout."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.outbound import AllowList, Target, check_url, post


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


def target_for(server: HTTPServer, path: str, host: str = "receiver.test") -> Target:
    """The server's URL under a made-up name that "resolves" to 127.0.0.1 (allow-listed)."""
    url = f"http://{host}:{server.port}{path}"
    return check_url(url, AllowList.parse("127.0.0.1"), lambda h, p: ["127.0.0.1"])


def test_the_post_goes_to_the_checked_address_with_the_urls_host_header(server: HTTPServer):
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return Response("ok", status=200)

    server.expect_request("/in", method="POST").respond_with_handler(handler)
    answer = post(
        target_for(server, "/in?x=1"), b'{"a":1}', {"webhook-id": "m1"}, timeout=2, max_response_bytes=100
    )
    assert (answer.status_code, answer.body, answer.truncated, answer.ok) == (200, b"ok", False, True)
    (request,) = seen
    assert request.headers["Host"] == f"receiver.test:{server.port}"  # the name, not the address
    assert request.headers["webhook-id"] == "m1"
    assert request.headers["content-type"] == "application/json"
    assert request.args["x"] == "1" and request.get_data() == b'{"a":1}'


def test_at_most_the_cap_of_a_large_answer_is_read(server: HTTPServer):
    server.expect_request("/big").respond_with_data(b"x" * 1_000_000)
    answer = post(target_for(server, "/big"), b"{}", {}, timeout=2, max_response_bytes=64 * 1024)
    assert answer.ok and answer.truncated
    assert len(answer.body) == 64 * 1024


def test_a_redirect_is_not_followed_and_is_not_a_success(server: HTTPServer):
    server.expect_request("/moved").respond_with_data(
        "", status=302, headers={"Location": "http://10.0.0.1/"}
    )
    answer = post(target_for(server, "/moved"), b"{}", {}, timeout=2, max_response_bytes=10)
    assert answer.status_code == 302 and not answer.ok


def test_a_receiver_slower_than_the_timeout_is_a_timeout_error(server: HTTPServer):
    release = threading.Event()

    def slow(request: Request) -> Response:
        release.wait(10)
        return Response("late")

    server.expect_request("/slow").respond_with_handler(slow)
    try:
        with pytest.raises(httpx.TimeoutException):
            post(target_for(server, "/slow"), b"{}", {}, timeout=0.3, max_response_bytes=10)
    finally:
        release.set()


def test_a_closed_port_is_a_connection_error():
    from tests.processes import free_port

    target = check_url(f"http://127.0.0.1:{free_port()}/", AllowList.parse("127.0.0.1"))
    with pytest.raises(httpx.ConnectError):
        post(target, b"{}", {}, timeout=1, max_response_bytes=10)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HTTPServer, str]]:
    """An HTTPS server whose certificate names receiver.test only (self-signed by openssl)."""
    import ssl
    import subprocess

    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subject = ["-subj", "/CN=receiver.test", "-addext", "subjectAltName=DNS:receiver.test"]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context, threaded=True)
    server.start()
    server.expect_request("/in", method="POST").respond_with_data("tls ok")
    yield server, str(cert)
    server.clear()
    server.stop()


def test_an_https_call_to_the_pinned_address_verifies_the_certificate_of_the_urls_host(tls_server):  # type: ignore[no-untyped-def]
    """The connection goes to the checked address, and TLS still checks the certificate against
    the URL's host name (SNI): pinning the address does not turn verification off."""
    import ssl

    server, ca = tls_server
    allow = AllowList.parse("127.0.0.1")
    trusting = httpx.Client(verify=ssl.create_default_context(cafile=ca), follow_redirects=False)
    good = check_url(f"https://receiver.test:{server.port}/in", allow, lambda h, p: ["127.0.0.1"])
    answer = post(good, b"{}", {}, timeout=2, max_response_bytes=100, client=trusting)
    assert (answer.status_code, answer.body) == (200, b"tls ok")
    other = check_url(f"https://other.test:{server.port}/in", allow, lambda h, p: ["127.0.0.1"])
    with pytest.raises(httpx.ConnectError, match="(?i)certificate|hostname"):
        post(other, b"{}", {}, timeout=2, max_response_bytes=100, client=trusting)
    with pytest.raises(httpx.ConnectError, match="(?i)certificate"):
        post(good, b"{}", {}, timeout=2, max_response_bytes=100)  # its own client: the system's CAs
