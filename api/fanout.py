"""One Redis subscription per web process, fanned out to the process's event streams.

An SSE stream used to open its own Redis pub/sub connection: 10,000 watchers were 10,000
Redis connections and 10,000 sockets to read. Now each web process has one `Hub`: a
background thread (a greenlet under gevent, whose monkey-patching makes `threading` its
own) owns ONE pub/sub connection, subscribes to the channels that local streams watch,
and wakes each stream's `Waiter` when a message arrives on its channel. A stream never
reads the message itself: a wake-up only tells it to read the event log after its last
id (api/sse.py), so a message needs no parsing here.

The hub's thread is the only user of the connection (redis-py's PubSub is not safe
across threads): `register` queues a subscribe, the thread sends it within
`POLL_SECONDS` and confirms it when Redis answers, and `register` waits for that
confirmation so a stream is subscribed BEFORE it replays the log (no gap). Channels
nobody watches any more are unsubscribed by a sweep, never while a subscribe is in
flight.

When Redis is down the hub reconnects with backoff (up to `MAX_BACKOFF_SECONDS`) and
`connected` is False, so streams poll the log as they did before; after a reconnect
every channel is subscribed again and every waiter is woken once, to read what it may
have missed. The same thread runs periodic `tasks` (api/streams.py renews the
per-key stream leases and ends the streams of revoked keys there).
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import structlog

log = structlog.get_logger(__name__)
POLL_SECONDS = 0.05  # how long the thread blocks on Redis before it looks at new subscriptions
MAX_BACKOFF_SECONDS = 5.0
CONFIRM_SECONDS = 2.0  # a register waits at most this long for Redis to confirm its subscribe
SWEEP_SECONDS = 10.0
POLL_BUDGET = 1000.0  # log reads per second of all the streams of a process while Redis is down
HUB_CHANNEL = "agentexec.fanout.hub"  # always subscribed, so the connection is in pub/sub mode


class Waiter:
    """What one stream blocks on: woken by a message on its channel, a reconnect or a shutdown."""

    __slots__ = ("_event", "channel", "ended", "hub", "woken_at")

    def __init__(self, channel: str, hub: Hub):
        self._event = threading.Event()
        self.channel = channel
        self.hub = hub
        self.ended: str | None = None  # set (then woken) when the stream must end, with why
        self.woken_at = 0.0  # monotonic time of the latest wake-up

    def wake(self) -> None:
        """Make the stream's current (or next) `wait` return True."""
        self.woken_at = time.monotonic()
        self._event.set()

    def end(self, reason: str) -> None:
        """Ask the stream to end at its next wake-up (its key was revoked, its client left)."""
        self.ended = reason
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout`; True when woken. The flag is cleared before the caller reads the
        log, so a message published after that read wakes the next wait."""
        if self._event.wait(timeout):
            self._event.clear()
            return True
        return False


@dataclass
class _Channel:
    waiters: set[Waiter] = field(default_factory=set)
    confirmed: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Task:
    every: float
    run: Callable[[], None]
    due: float = 0.0


class Hub:
    """The process's single pub/sub connection and the waiters of each channel."""

    def __init__(self, new_pubsub: Callable[[], Any]):
        self._new_pubsub = new_pubsub
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._commands: list[tuple[str, str]] = []  # ("subscribe" | "unsubscribe", channel)
        self._tasks: list[_Task] = []
        self._pubsub: Any = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.connected = False
        self.reconnects = 0
        self.size = 0  # waiters registered now
        self._tried = threading.Event()  # set once the first connection attempt is over
        self._failing = False  # an outage is under way and was logged (once: not every retry)

    # ------------------------------------------------------------ streams' side

    def register(self, channel: str) -> Waiter:
        """A waiter for `channel`; subscribed (and confirmed by Redis) when the hub is connected."""
        waiter = Waiter(channel, self)
        with self._lock:
            entry = self._channels.get(channel)
            if entry is None:
                entry = self._channels[channel] = _Channel()
                self._commands.append(("subscribe", channel))
            entry.waiters.add(waiter)
            self.size += 1
        self._start()
        self._tried.wait(CONFIRM_SECONDS)
        if self.connected:
            entry.confirmed.wait(CONFIRM_SECONDS)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        """Forget a waiter; its channel is unsubscribed by the next sweep if nobody else watches it."""
        with self._lock:
            entry = self._channels.get(waiter.channel)
            if entry is not None and waiter in entry.waiters:
                entry.waiters.discard(waiter)
                self.size -= 1

    def live(self, waiter: Waiter) -> bool:
        """True when a message for the waiter's channel would wake it (else: poll the log)."""
        if not self.connected:
            return False
        entry = self._channels.get(waiter.channel)
        return entry is not None and entry.confirmed.is_set()

    def poll_seconds(self, least: float) -> float:
        """How often a stream reads the log while Redis is down: `least`, or slower when this
        process holds so many streams that they would read more than POLL_BUDGET times a second."""
        return max(least, self.size / POLL_BUDGET)

    def wake_all(self) -> None:
        """Wake every waiter (a shutdown, a reconnect): each reads the log once."""
        for waiter in self.waiters():
            waiter.wake()

    def waiters(self) -> list[Waiter]:
        """Every waiter of this process."""
        with self._lock:
            return [w for entry in self._channels.values() for w in entry.waiters]

    def add_task(self, every: float, run: Callable[[], None]) -> None:
        """Run `run` every `every` seconds on the hub's thread (errors are logged, never raised)."""
        with self._lock:
            self._tasks.append(_Task(every, run, time.monotonic() + every))
        self._start()

    def stop(self) -> None:
        """End the thread and close the connection (tests; a process exit does not need it)."""
        self._stopped = True
        if self._thread is not None:
            self._thread.join(5)

    # ------------------------------------------------------------ the hub's thread

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="agentexec-fanout", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        backoff, next_try = 0.1, 0.0
        while not self._stopped:
            if self._pubsub is None and time.monotonic() >= next_try:
                if self._connect():
                    backoff = 0.1
                else:
                    next_try = time.monotonic() + backoff
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                self._tried.set()
            if self._pubsub is None:
                time.sleep(min(max(next_try - time.monotonic(), 0.01), POLL_SECONDS * 4))
            else:
                try:
                    self._send_commands()
                    self._read(POLL_SECONDS)
                except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
                    self._lost(exc)
            self._run_tasks()
        self._close()

    def _connect(self) -> bool:
        try:
            pubsub = self._new_pubsub()
            with self._lock:
                channels = list(self._channels)
                for entry in self._channels.values():
                    entry.confirmed.clear()
                self._commands = [c for c in self._commands if c[0] == "subscribe" and c[1] not in channels]
            pubsub.subscribe(HUB_CHANNEL, *channels)
        except Exception as exc:  # noqa: BLE001 - not only Redis errors: the thread must not die
            if not self._failing:
                log.warning("event fan-out cannot reach Redis; streams poll the log", error=str(exc))
            else:
                log.debug("event fan-out still cannot reach Redis", error=str(exc))
            self._failing = True
            return False
        self._pubsub, self.connected, self._failing = pubsub, True, False
        if self.reconnects:
            log.info("event fan-out reconnected to Redis", channels=len(channels))
        self.reconnects += 1
        return True

    def _lost(self, exc: BaseException) -> None:
        log.warning("event fan-out lost Redis; streams poll the log until it is back", error=str(exc))
        self._failing = True
        self._close()
        with self._lock:
            for entry in self._channels.values():
                entry.confirmed.clear()
        self.wake_all()  # each stream switches to polling now, not at its next timeout

    def _close(self) -> None:
        pubsub, self._pubsub, self.connected = self._pubsub, None, False
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis.RedisError, OSError):
                log.debug("closing the fan-out connection failed")

    def _send_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for i, (command, channel) in enumerate(commands):
            try:
                getattr(self._pubsub, command)(channel)
            except BaseException:
                with self._lock:  # resent after the reconnect (which subscribes every channel)
                    self._commands = commands[i:] + self._commands
                raise

    def _read(self, timeout: float) -> None:
        message = self._pubsub.get_message(timeout=timeout)
        woken: set[str] = set()
        while message is not None:
            kind, channel = message["type"], message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            with self._lock:
                entry = self._channels.get(channel)
                if entry is not None and kind == "subscribe":
                    entry.confirmed.set()
                    if self.reconnects > 1:
                        woken.add(channel)  # a reconnect: read what was published while down
                elif entry is not None and kind in ("message", "pmessage"):
                    woken.add(channel)
                waiters = [w for ch in woken for w in self._channels[ch].waiters] if woken else []
                woken.clear()
            for waiter in waiters:
                waiter.wake()
            message = self._pubsub.get_message(timeout=0)

    def _sweep(self) -> None:
        with self._lock:
            idle = [c for c, e in self._channels.items() if not e.waiters and e.confirmed.is_set()]
            for channel in idle:
                del self._channels[channel]
                self._commands.append(("unsubscribe", channel))

    def _run_tasks(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [t for t in self._tasks if t.due <= now]
            for task in due:
                task.due = now + task.every
        for task in due:
            try:
                task.run()
            except Exception:
                log.exception("a fan-out task failed")


_hubs: dict[tuple[Any, ...], Hub] = {}
_hubs_pid = 0
_hubs_lock = threading.Lock()


def hub_for(client: redis.Redis) -> Hub:
    """This process's hub for the Redis server of `client`, created on first use (after a fork,
    a new one: a connection and a thread are not inherited)."""
    global _hubs_pid
    kwargs = dict(client.connection_pool.connection_kwargs)
    where = tuple(kwargs.get(k) for k in ("host", "port", "path", "db", "username"))
    hub = _hubs.get(where)
    if hub is not None and _hubs_pid == os.getpid():
        return hub
    with _hubs_lock:
        if _hubs_pid != os.getpid():
            _hubs.clear()
            _hubs_pid = os.getpid()
        hub = _hubs.get(where)
        if hub is None:
            # The hub's own connection: no health-check PING from inside a read (the thread owns
            # the socket), a read timeout above POLL_SECONDS, keepalive to notice a dead peer.
            kwargs.update(health_check_interval=0, socket_timeout=10.0, socket_keepalive=True)
            own = redis.Redis(connection_pool=redis.ConnectionPool(max_connections=2, **kwargs))
            hub = _hubs[where] = Hub(lambda: own.pubsub(ignore_subscribe_messages=False))
            hub.add_task(SWEEP_SECONDS, hub._sweep)
    return hub


def wake_all() -> None:
    """Wake every waiter of this process (a shutdown: each stream sends its last frame now)."""
    if _hubs_pid == os.getpid():
        for hub in list(_hubs.values()):
            hub.wake_all()


# ---------------------------------------------------------------- shared reads
#
# A message on a channel wakes every local stream of that execution at once, and each would
# read the same rows after the same id: ten watchers, ten identical queries per event (the
# sse_watchers bench: p50 ~300 ms at 600 frames a second). A stream woken at time T needs the
# rows committed before the publish that woke it, so it may take the result of an identical
# read that STARTED at or after T instead of its own. Reads of a stream that was not woken (its
# first replay, a resync, polling) never share.

T = TypeVar("T")
_woken_at: contextvars.ContextVar[float | None] = contextvars.ContextVar("agentexec_woken_at", default=None)


@dataclass
class _Flight:
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    failed: bool = False


_flights: dict[Any, _Flight] = {}
_flights_lock = threading.Lock()


def reading_after_wake(woken_at: float | None) -> None:
    """The stream on this thread (greenlet) reads next because it was woken at `woken_at`
    (None: it was not woken, its reads are its own)."""
    _woken_at.set(woken_at)


def shared_read(key: Any, read: Callable[[], T]) -> T:
    """`read()`, or the result of the same read (same `key`) already in flight when that read
    started after this stream was woken (see above)."""
    since = _woken_at.get()
    if since is None:
        return read()
    with _flights_lock:
        flight = _flights.get(key)
        joined = flight is not None and flight.started >= since
        if not joined:
            flight = _flights[key] = _Flight(time.monotonic())
    assert flight is not None
    if joined:
        if flight.done.wait(CONFIRM_SECONDS * 5) and not flight.failed:
            result: T = flight.result
            return result
        return read()
    try:
        flight.result = read()
        return flight.result  # type: ignore[no-any-return]
    except BaseException:
        flight.failed = True
        raise
    finally:
        flight.done.set()
        with _flights_lock:
            if _flights.get(key) is flight:
                del _flights[key]
