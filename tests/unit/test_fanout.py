"""The fan-out hub's bookkeeping against an in-memory pub/sub: one connection, waiters woken
per channel, confirmation before a stream replays, reconnects, idle channels swept."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from api import fanout
from api.server import peer_hung_up
from tests.conftest import wait_for


class FakePubSub:
    """Answers subscribes like Redis (a `subscribe` message per channel) and relays publishes."""

    def __init__(self, broker: FakeBroker):
        self.broker = broker
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.channels: set[str] = set()
        self.closed = False

    def subscribe(self, *channels: str) -> None:
        self.broker.check()
        for channel in channels:
            self.channels.add(channel)
            self.inbox.put({"type": "subscribe", "channel": channel.encode(), "data": 1})

    def unsubscribe(self, *channels: str) -> None:
        self.broker.check()
        for channel in channels:
            self.channels.discard(channel)
            self.inbox.put({"type": "unsubscribe", "channel": channel.encode(), "data": 0})

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        self.broker.check()
        try:
            return self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        self.closed = True


class FakeBroker:
    def __init__(self) -> None:
        self.connections: list[FakePubSub] = []
        self.down = False

    def check(self) -> None:
        if self.down:
            raise redis.ConnectionError("Redis is down")

    def connect(self) -> FakePubSub:
        self.check()
        pubsub = FakePubSub(self)
        self.connections.append(pubsub)
        return pubsub

    def publish(self, channel: str) -> None:
        for pubsub in self.connections:
            if not pubsub.closed and channel in pubsub.channels:
                pubsub.inbox.put({"type": "message", "channel": channel.encode(), "data": b"{}"})


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def hub(broker: FakeBroker) -> Iterator[fanout.Hub]:
    hub = fanout.Hub(broker.connect)
    yield hub
    hub.stop()


def test_many_waiters_share_one_connection_and_only_their_channel_wakes_them(
    hub: fanout.Hub, broker: FakeBroker
) -> None:
    a = [hub.register("ch.a") for _ in range(50)]
    b = hub.register("ch.b")
    assert len(broker.connections) == 1
    assert all(hub.live(w) for w in [*a, b])  # confirmed by the time register returned
    broker.publish("ch.a")
    assert all(w.wait(5) for w in a)
    assert not b.wait(0.05)


def test_a_lost_connection_wakes_every_waiter_and_the_hub_resubscribes_after_it(
    hub: fanout.Hub, broker: FakeBroker
) -> None:
    waiter = hub.register("ch.a")
    broker.down = True
    assert waiter.wait(5)  # woken at once: the stream switches to polling the log
    wait_for(lambda: not hub.live(waiter), timeout=5, what="the hub to notice")
    broker.down = False
    wait_for(lambda: hub.live(waiter), timeout=10, what="the hub to reconnect")
    assert waiter.wait(5)  # woken again after the reconnect, to read what it missed
    broker.publish("ch.a")
    assert waiter.wait(5)
    assert len([c for c in broker.connections if not c.closed]) == 1


def test_a_channel_nobody_watches_is_unsubscribed_by_the_sweep(hub: fanout.Hub, broker: FakeBroker) -> None:
    waiter = hub.register("ch.a")
    hub.unregister(waiter)
    hub._sweep()
    wait_for(lambda: "ch.a" not in broker.connections[0].channels, timeout=5, what="the unsubscribe")
    again = hub.register("ch.a")
    assert hub.live(again) and "ch.a" in broker.connections[0].channels


def test_a_waiter_asked_to_end_wakes_with_the_reason(hub: fanout.Hub) -> None:
    waiter = hub.register("ch.a")
    threading.Timer(0.05, waiter.end, args=("key revoked",)).start()
    assert waiter.wait(5) and waiter.ended == "key revoked"


def test_a_peer_that_closed_its_side_is_seen_as_gone_and_one_that_sent_more_is_not() -> None:
    server, client = socket.socketpair()
    with server, client:
        assert not peer_hung_up(server)
        client.sendall(b"GET / HTTP/1.1\r\n")
        assert not peer_hung_up(server)
        server.recv(100)
        client.shutdown(socket.SHUT_WR)
        assert peer_hung_up(server)


def test_while_redis_is_down_many_streams_poll_the_log_more_slowly_within_a_budget(
    hub: fanout.Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "POLL_BUDGET", 2.0)
    waiters = [hub.register(f"ch.{i}") for i in range(6)]
    assert hub.poll_seconds(0.5) == 3.0  # 6 streams, 2 reads a second between them
    for waiter in waiters[:5]:
        hub.unregister(waiter)
    assert hub.poll_seconds(0.5) == 0.5


def _reader(started: threading.Event, release: threading.Event, calls: list[int]) -> Any:
    def read() -> int:
        calls.append(1)
        started.set()
        assert release.wait(5)
        return len(calls)

    return read


def test_streams_woken_before_an_identical_read_started_share_its_result() -> None:
    started, release, calls = threading.Event(), threading.Event(), []
    read = _reader(started, release, calls)
    woken_at = time.monotonic()
    results: list[int] = []

    def stream() -> None:
        fanout.reading_after_wake(woken_at)
        results.append(fanout.shared_read(("events", "x", 7), read))

    first = threading.Thread(target=stream)
    first.start()
    assert started.wait(5)  # the first stream's read is in flight, started after the wake-up
    others = [threading.Thread(target=stream) for _ in range(5)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(5)
    assert calls == [1] and results == [1] * 6


def test_a_stream_woken_after_a_read_started_or_not_woken_at_all_reads_for_itself() -> None:
    started, release, calls = threading.Event(), threading.Event(), []
    read = _reader(started, release, calls)
    results: list[int] = []

    def stream(woken_at: float | None) -> None:
        fanout.reading_after_wake(woken_at)
        results.append(fanout.shared_read(("events", "y", 7), read))

    first = threading.Thread(target=stream, args=(time.monotonic(),))
    first.start()
    assert started.wait(5)
    late = threading.Thread(target=stream, args=(time.monotonic(),))  # woken after the read began
    unwoken = threading.Thread(target=stream, args=(None,))  # a first replay or a resync
    late.start()
    unwoken.start()
    wait_for(lambda: len(calls) == 3, timeout=5, what="three reads")
    release.set()
    for t in (first, late, unwoken):
        t.join(5)
    assert sorted(results) == [3, 3, 3] and len(calls) == 3


def test_an_outage_is_logged_once_not_at_every_reconnect_attempt(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the suite: a hub whose Redis had gone logged a warning every 5 s for the rest of the
    process, into other tests' captured logs."""
    from structlog.testing import capture_logs

    monkeypatch.setattr(fanout, "MAX_BACKOFF_SECONDS", 0.02)
    attempts = 0

    def connect() -> FakePubSub:
        nonlocal attempts
        attempts += 1
        return broker.connect()

    broker.down = True
    hub = fanout.Hub(connect)
    try:
        with capture_logs() as logs:
            hub.register("ch.a")
            wait_for(lambda: attempts >= 5, timeout=10, what="five reconnect attempts")
        warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
        assert warnings == ["event fan-out cannot reach Redis; streams poll the log"]
        broker.down = False
        wait_for(lambda: hub.connected, timeout=10, what="the hub to reconnect")
        with capture_logs() as logs:
            broker.down = True  # a second outage is logged again
            wait_for(lambda: not hub.connected, timeout=10, what="the hub to notice")
        assert any(e["log_level"] == "warning" for e in logs)
    finally:
        broker.down = False
        hub.stop()


def test_the_hub_thread_outlives_an_unexpected_error_and_connects_after_it(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the suite: an error that is not a Redis error (there, the unit tier's socket guard)
    ended the hub's thread, and with it every wake-up of the process's streams."""
    monkeypatch.setattr(fanout, "MAX_BACKOFF_SECONDS", 0.02)
    failures = 3

    def connect() -> FakePubSub:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("not a Redis error")
        return broker.connect()

    hub = fanout.Hub(connect)
    try:
        waiter = hub.register("ch.a")
        wait_for(lambda: hub.live(waiter), timeout=10, what="the hub to connect after the errors")
        broker.publish("ch.a")
        assert waiter.wait(5)
    finally:
        hub.stop()


def test_a_web_worker_raises_its_open_files_limit_to_the_hard_limit() -> None:
    """Each open stream holds a file descriptor: the worker takes all the hard limit allows."""
    import resource

    from api.server import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 256 if hard == resource.RLIM_INFINITY else max(hard // 2, 64))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        got = raise_open_files_limit()
        assert got == resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY:
            assert got == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
