"""Outbound HTTP calls (webhooks, http tools): the signature, the address guard and the POST.

Every call agentexec makes to a URL a tenant gave goes through here, so no feature opens a
socket of its own. Three parts:

- **Standard Webhooks signing** (https://www.standardwebhooks.com): `webhook-id`,
  `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
  keyed by a `whsec_<base64>` secret. Receivers verify with any Standard Webhooks library.
- **The guard**: a tenant's URL must not reach inside the deployment (the cloud metadata
  service at 169.254.169.254, a database on 10.x, the API itself on loopback). The host is
  resolved and EVERY address it resolves to must be public, unless the host or the address
  is allow-listed. The request then goes to the address that was checked (the URL is pinned
  to it, with the original Host header and TLS server name), so a second DNS answer cannot
  swap in an internal address between the check and the connect (DNS rebinding).
- **The POST**: connect and read timeouts, an overall deadline, no redirects (a redirect
  could lead anywhere), and at most `max_response_bytes` of the answer read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

SECRET_PREFIX = "whsec_"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to. Tests give their own: the guard is pure logic.
Resolver = Callable[[str, int], list[str]]


# ----------------------------------------------------------------- signing


def new_secret(nbytes: int = 24) -> str:
    """A fresh signing secret, `whsec_` and the base64 of `nbytes` random bytes (24 to 64)."""
    if not 24 <= nbytes <= 64:
        raise ValueError("a secret has 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (the timestamp is now unless given)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


# ------------------------------------------------------------------- guard


class OutboundRefused(Exception):
    """The URL may not be called: bad scheme, no host, or an address that is not allowed."""


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks that may be called even when they resolve to non-public addresses.

    Parsed from a setting such as `hooks.internal, *.corp.example, 10.1.0.0/16, 127.0.0.1`.
    With `public=False` (http tools) ONLY listed hosts may be called at all.
    """

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    public: bool = True

    @classmethod
    def parse(cls, setting: str, *, public: bool = True) -> AllowList:
        """The allow-list of a comma-separated setting."""
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for item in (i.strip().lower() for i in setting.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                if item.startswith("*."):
                    suffixes.append(item[1:])
                else:
                    hosts.add(item.rstrip("."))
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks), public)

    def host_listed(self, host: str) -> bool:
        """True when the host name itself is listed (exactly or under a `*.` suffix)."""
        host = host.lower().rstrip(".")
        return host in self.hosts or any(host.endswith(s) for s in self.suffixes)

    def address_listed(self, address: IPAddress) -> bool:
        """True when the address is in a listed network."""
        return any(address in net for net in self.networks if net.version == address.version)


def is_public(address: IPAddress) -> bool:
    """False for loopback, private, link-local, shared, multicast, reserved and unspecified."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return address.is_global and not address.is_multicast


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for host (TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`address`) and what to ask for (`url`, `host`)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str

    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address (the port and path kept)."""
        parts = urlsplit(self.url)
        ip = ipaddress.ip_address(self.address)
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        return urlunsplit((parts.scheme, f"{netloc}:{self.port}", parts.path or "/", parts.query, ""))

    def host_header(self) -> str:
        """The Host header of the original URL."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: str, allow: AllowList, resolver: Resolver = system_resolver) -> Target:
    """Check that `url` may be called and pick the address to call; OutboundRefused otherwise.

    Every address the host resolves to must pass (an answer that mixes a public and a private
    address is refused), so the one connected to is checked whichever it is.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OutboundRefused(f"not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise OutboundRefused("only http and https URLs can be called")
    host = (parts.hostname or "").lower()
    if not host:
        raise OutboundRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused("the URL must not carry credentials")
    port = port or (443 if scheme == "https" else 80)
    listed_host = allow.host_listed(host)
    if not allow.public and not listed_host and not _literal_listed(host, allow):
        raise OutboundRefused(f"host {host} is not in the allow-list")
    try:
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolver(host, port)]
    except (OSError, UnicodeError, ValueError) as exc:
        raise OutboundRefused(f"host {host} does not resolve") from exc
    if not addresses:
        raise OutboundRefused(f"host {host} does not resolve")
    for address in addresses:
        if not (listed_host or allow.address_listed(address) or (allow.public and is_public(address))):
            raise OutboundRefused(
                f"host {host} resolves to {address}, a non-public address that is not in the allow-list"
            )
    return Target(url=url, scheme=scheme, host=host, port=port, address=str(addresses[0]))


def _literal_listed(host: str, allow: AllowList) -> bool:
    try:
        return allow.address_listed(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return False


# -------------------------------------------------------------------- POST


@dataclass(frozen=True)
class Response:
    """What an outbound POST got: the status, at most the cap of the body, and whether it was cut."""

    status_code: int
    body: bytes
    truncated: bool

    @property
    def ok(self) -> bool:
        """A 2xx answer (a redirect is not followed and is not a success)."""
        return 200 <= self.status_code < 300


def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    max_response_bytes: int,
    client: httpx.Client | None = None,
) -> Response:
    """POST `body` to the checked target's address; httpx.HTTPError on a connection failure,
    a timeout (connect, read, or the whole call past 2 x `timeout`).

    The answer's body is read up to `max_response_bytes`; the rest is never read.
    """
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False)
    deadline = time.monotonic() + 2 * timeout
    request_headers = {"content-type": "application/json", "user-agent": "agentexec-webhooks/1"}
    request_headers |= headers | {"host": target.host_header()}
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        url = target.pinned_url()
        with http.stream("POST", url, content=body, headers=request_headers, extensions=extensions) as answer:
            read, cut = _read_capped(answer.iter_raw(), max_response_bytes, deadline)
            return Response(answer.status_code, read, cut)
    finally:
        if own:
            http.close()


def _read_capped(chunks: Iterable[bytes], cap: int, deadline: float) -> tuple[bytes, bool]:
    read = bytearray()
    for chunk in chunks:
        read += chunk
        if len(read) > cap:
            return bytes(read[:cap]), True
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer took longer than the call's deadline")
    return bytes(read), False
