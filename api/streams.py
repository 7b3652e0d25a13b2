"""Limits on open event streams, so no client can hold capacity that others need.

- **A per-key cap across web processes.** Each open stream holds a lease: a member of the
  Redis sorted set `agentexec:streams:<key id>` scored by its expiry (Redis's clock). A new
  stream drops the expired members and is refused (429) when `MAX_STREAMS_PER_KEY` remain.
  The hub's thread (api/fanout.py) renews this process's leases every `RENEW_SECONDS`, so
  a crashed process's leases lapse within `LEASE_SECONDS` instead of counting forever.
  When Redis is down the cap is not enforced (the stream is not refused for it).
- **A revoked key's streams end** within the key cache's lifetime: the same thread checks,
  every `KEY_CHECK_SECONDS` (= app.auth's cache), that the keys of this process's open
  streams are still live, and ends the streams of the others.
- **A client that left is noticed within a second**, not at the next heartbeat: the
  stream's socket is watched (epoll, peer hang-up) by the same thread.
- **A client that stops reading is dropped:** the stream's socket gets a small send buffer
  and a send timeout (`SSE_SEND_TIMEOUT_SECONDS`); when the kernel's buffers are full for
  that long the write fails and the stream ends. Nothing is queued in the process, so its
  memory does not grow; the client reconnects with Last-Event-ID.

`guarded()` wraps a stream's frames: it makes the lease visible to the stream's wake-up
seam (`current_lease()`, used by api/sse.py) and releases it when the stream ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import select
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
import structlog

from api.fanout import Hub, Waiter
from app.errors import AgentExecError

log = structlog.get_logger(__name__)
LEASE_SECONDS = 60
RENEW_SECONDS = 15.0
KEY_CHECK_SECONDS = 5.0  # app.auth caches a key's verdict this long
CLIENT_CHECK_SECONDS = 0.5
SEND_BUFFER_BYTES = 64 * 1024
_PREFIX = "agentexec:streams:"

# KEYS[1] the key's set; ARGV: cap, lease seconds, member. 1 when taken, 0 when at the cap.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""
# KEYS: sets; ARGV[1] lease seconds, then per key the count of its members and the members.
_RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local i = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  for j = 1, n do redis.call('ZADD', KEYS[k], 'XX', expiry, ARGV[i + j]) end
  redis.call('EXPIRE', KEYS[k], tonumber(ARGV[1]) * 2)
  i = i + n + 1
end
return 1
"""


class StreamEnded(AgentExecError):
    """An open stream must end now: its key was revoked, or its client left."""


class TooManyStreams(AgentExecError):
    """The key already has MAX_STREAMS_PER_KEY open streams."""

    def __init__(self, cap: int):
        super().__init__(f"this API key already has {cap} open event streams (MAX_STREAMS_PER_KEY)")
        self.cap = cap


class Lease:
    """One open stream's place in its key's count, and what the hub needs to end it."""

    __slots__ = ("key_id", "tenant", "member", "counted", "sock", "waiter", "ended")

    def __init__(self, key_id: uuid.UUID | None, tenant: str, sock: socket.socket | None, counted: bool):
        self.key_id = key_id
        self.tenant = tenant
        self.member = uuid.uuid4().hex
        self.counted = counted
        self.sock = sock
        self.waiter: Waiter | None = None
        self.ended: str | None = None

    def end(self, reason: str) -> None:
        """End the stream at its next wake-up (now, if it is waiting)."""
        self.ended = reason
        if self.waiter is not None:
            self.waiter.end(reason)


_current: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "agentexec_stream_lease", default=None
)


def current_lease() -> Lease | None:
    """The lease of the stream being iterated on this thread (or greenlet), if guarded."""
    return _current.get()


def _epoll() -> Any:
    try:  # gevent's monkey-patching removes select.epoll; a poll with timeout 0 never blocks anyway
        from gevent import monkey

        return monkey.get_original("select", "epoll")()
    except ImportError:
        return select.epoll()


class Streams:
    """This process's open streams: their leases, the cap, and the hub tasks that police them."""

    def __init__(
        self, client: redis.Redis, hub: Hub, keys_alive: Callable[[str, set[uuid.UUID]], set[uuid.UUID]]
    ):
        self._redis = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._keys_alive = keys_alive
        self._leases: dict[str, Lease] = {}
        self._by_fd: dict[int, Lease] = {}
        self._epoll = _epoll()
        hub.add_task(RENEW_SECONDS, self.renew)
        hub.add_task(KEY_CHECK_SECONDS, self.check_keys)
        hub.add_task(CLIENT_CHECK_SECONDS, self.check_clients)

    def open(self, key_id: uuid.UUID | None, tenant: str, cap: int, sock: Any, send_timeout: float) -> Lease:
        """A lease for a new stream of `key_id` (None without auth: not capped); TooManyStreams
        when the key is at `cap`."""
        counted = False
        lease = Lease(key_id, tenant, sock if isinstance(sock, socket.socket) else None, counted)
        if key_id is not None and cap > 0:
            try:
                if not self._acquire(keys=[_PREFIX + str(key_id)], args=[cap, LEASE_SECONDS, lease.member]):
                    raise TooManyStreams(cap)
                lease.counted = True
            except redis.RedisError as exc:
                log.warning("stream cap not enforced: Redis unavailable", error=str(exc))
        self._leases[lease.member] = lease
        if lease.sock is not None:
            try:
                lease.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
                lease.sock.settimeout(send_timeout)
                fd = lease.sock.fileno()
                self._epoll.register(fd, select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR)
                self._by_fd[fd] = lease
            except OSError:
                lease.sock = None
        return lease

    def close(self, lease: Lease) -> None:
        """The stream ended: free its place at once."""
        self._leases.pop(lease.member, None)
        if lease.sock is not None:
            for fd, held in list(self._by_fd.items()):
                if held is lease:
                    self._forget_fd(fd)
        if lease.counted:
            try:
                self._redis.zrem(_PREFIX + str(lease.key_id), lease.member)
            except redis.RedisError:
                log.debug("a stream lease lapses on its own: Redis unavailable")

    def _forget_fd(self, fd: int) -> None:
        self._by_fd.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    # ------------------------------------------------------------ hub tasks

    def renew(self) -> None:
        """Push the expiry of every counted lease of this process (one round trip)."""
        by_key: dict[str, list[str]] = {}
        for lease in list(self._leases.values()):
            if lease.counted:
                by_key.setdefault(_PREFIX + str(lease.key_id), []).append(lease.member)
        if not by_key:
            return
        args: list[Any] = [LEASE_SECONDS]
        for members in by_key.values():
            args += [len(members), *members]
        try:
            self._renew(keys=list(by_key), args=args)
        except redis.RedisError as exc:
            log.warning("stream leases not renewed: Redis unavailable", error=str(exc))

    def check_keys(self) -> None:
        """End the streams whose key was revoked (or deleted)."""
        by_tenant: dict[str, set[uuid.UUID]] = {}
        for lease in list(self._leases.values()):
            if lease.key_id is not None:
                by_tenant.setdefault(lease.tenant, set()).add(lease.key_id)
        for tenant, key_ids in by_tenant.items():
            alive = self._keys_alive(tenant, key_ids)
            for lease in list(self._leases.values()):
                if lease.tenant == tenant and lease.key_id in key_ids and lease.key_id not in alive:
                    lease.end("key revoked")

    def check_clients(self) -> None:
        """End the streams whose client hung up (the write would only fail at the next frame)."""
        if not self._by_fd:
            return
        for fd, _events in self._epoll.poll(0):
            lease = self._by_fd.get(fd)
            self._forget_fd(fd)
            if lease is not None:
                lease.end("client closed")


def guarded(frames: Iterator[str], lease: Lease, streams: Streams) -> Iterator[str]:
    """Relay a stream's frames with its lease visible to its wake-up seam; free the lease at the end."""
    try:
        while True:
            token = _current.set(lease)
            try:
                frame = next(frames)
            except StopIteration:
                return
            finally:
                _current.reset(token)
            yield frame
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
        streams.close(lease)


_streams: dict[int, Streams] = {}


def _keys_alive(store: Any) -> Callable[[str, set[uuid.UUID]], set[uuid.UUID]]:
    def alive(tenant: str, key_ids: set[uuid.UUID]) -> set[uuid.UUID]:
        return {k.id for k in store.list(tenant) if k.id in key_ids and k.revoked_at is None}

    return alive


def relay(frames: Iterator[str]) -> Iterator[str]:
    """The frames of a new stream of this request's key, guarded (see the module's docstring).

    Aborts with 429 problem+json when the key already has MAX_STREAMS_PER_KEY open streams.
    Call it in the view: the count is taken now, while the request is being answered.
    """
    from flask import abort, current_app, g, request

    from api.deps import service, settings
    from api.fanout import hub_for
    from api.problems import problem

    conf, bus = settings(), service().event_bus
    client = getattr(bus, "client", None)
    if not isinstance(client, redis.Redis):
        return frames  # no Redis (a test's fake bus): nothing to count against
    hub = hub_for(client)
    streams = _streams.get(id(hub))
    if streams is None:
        store = current_app.extensions.get("agentexec.keys")
        streams = _streams[id(hub)] = Streams(
            client, hub, _keys_alive(store) if store is not None else (lambda _t, ids: ids)
        )
    key_id = g.get("key_id") if conf.auth_enabled else None
    try:
        lease = streams.open(
            key_id,
            g.get("tenant", ""),
            conf.max_streams_per_key,
            request.environ.get("gunicorn.socket"),
            conf.sse_send_timeout_seconds,
        )
    except TooManyStreams as exc:
        abort(
            problem(
                429,
                "Too Many Requests",
                str(exc),
                headers={"Retry-After": str(int(RENEW_SECONDS))},
                type="https://agentexec.dev/problems/too-many-streams",
                max_streams_per_key=exc.cap,
            )
        )
    return guarded(frames, lease, streams)
