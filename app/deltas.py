"""Output deltas: the model's text as it streams, kept in one capped Redis stream per execution.

Why not PostgreSQL: a delta is a few characters, and a row per token (or per 50 ms of a
thousand running executions) would make the log the hottest table of the database for
data that `result` holds whole once the step ends. So deltas live in Redis: one stream
per execution (`XADD MAXLEN ~ DELTA_STREAM_MAXLEN`), kept `DELTA_RETENTION_SECONDS`
after its last write, and again from the execution's end: the publish of its
`agent.execution.completed` event (by whichever process ends it: a run, the API, the
reaper) restarts the clock in the same script.

Ids. A delta's SSE id is `E.k`: E is the id of a logged (PostgreSQL) event of the same
execution and k counts the deltas placed after it; a logged event keeps its plain id
`E`, which sorts before `E.0`. The Redis stream entry id IS `E-k`. Which E a delta gets
is decided inside Redis, atomically with its append: the largest of the event id the
runner read before the model call (`floor`), the execution's *fence*, and the last
entry's E. Every reader raises the fence to the newest logged event it is about to send
(`DeltaLog.read`, one script with the read). So once any client was sent event E, no
delta can ever be placed before E: every delta before E was already in the stream when
that client read it. That is what makes a replay equal to what a live client saw,
whatever the interleaving of an API-written event (a cancel) with the deltas.

Entries of an attempt older than the newest one that appended are refused (a worker that
lost its lease cannot mix its text into the new attempt's). `index` counts the deltas of
the execution across attempts (HINCRBY on the execution's meta hash). The writer passes the
last delta it appended, so a stream Redis lost meanwhile goes on after it (ids and index
keep growing) instead of starting again at `E.0` and index 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from app.events import DELTA_KEY_PREFIX, OUTPUT_DELTA, EventBus, execution_channel

log = structlog.get_logger(__name__)

KEY_PREFIX = DELTA_KEY_PREFIX
# KEYS: stream, meta. ARGV: floor, attempt, maxlen, ttl, channel, message (JSON, without id/index),
# then the E, k and index of the last delta this writer appended (-1 -1 -1: none). With them a
# stream Redis lost (a flush, a restart without persistence) goes on after what clients were
# sent instead of giving out `E.0` and index 0 again.
_APPEND = """
local attempt = tonumber(ARGV[2])
if attempt < tonumber(redis.call('HGET', KEYS[2], 'attempt') or '0') then return false end
local mine_e, mine_k = tonumber(ARGV[7]), tonumber(ARGV[8])
local e = math.max(tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[2], 'fence') or '0'), mine_e)
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local last_k = -1
if last then
  local last_e = tonumber(string.match(last[1], '^(%d+)'))
  if last_e > e then e = last_e end
  if last_e == e then last_k = tonumber(string.match(last[1], '-(%d+)$')) end
end
if e == mine_e and mine_k > last_k then last_k = mine_k end
local index = redis.call('HINCRBY', KEYS[2], 'index', 1) - 1
if index <= tonumber(ARGV[9]) then
  index = tonumber(ARGV[9]) + 1
  redis.call('HSET', KEYS[2], 'index', index + 1)
end
local ms = string.format('%.0f', e)
local at = ms .. '-' .. (last_k + 1)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], at, 'i', index, 'm', ARGV[6])
redis.call('HSET', KEYS[2], 'fence', ms, 'attempt', attempt)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local msg = cjson.decode(ARGV[6])
msg['id'] = (string.gsub(id, '-', '.'))
msg['payload']['index'] = index
redis.call('PUBLISH', ARGV[5], cjson.encode(msg))
return {id, index}
"""
# KEYS: stream, meta. ARGV: fence (0: none), start, count, ttl.
_READ = """
local fence = tonumber(ARGV[1])
if fence > tonumber(redis.call('HGET', KEYS[2], 'fence') or '0') then
  redis.call('HSET', KEYS[2], 'fence', fence)
  if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
end
return redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', ARGV[3])
"""


def stream_key(execution_id: Any) -> str:
    """The Redis stream of an execution's deltas."""
    return f"{KEY_PREFIX}{execution_id}"


def meta_key(execution_id: Any) -> str:
    """The execution's fence, newest attempt and delta count."""
    return f"{KEY_PREFIX}{execution_id}:meta"


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in an execution's events: after logged event `event`, or after its delta `seq`.

    `seq` -1 is the logged event itself (it sorts before its deltas `event.0`, `event.1`...).
    """

    event: int = 0
    seq: int = -1

    @classmethod
    def parse(cls, text: str | int | None) -> Cursor | None:
        """`"E"` or `"E.k"` (an SSE id) as a cursor; None when it is not one."""
        if text is None:
            return None
        head, dot, tail = str(text).strip().partition(".")
        if not head.isdigit() or (dot and not tail.isdigit()) or len(head) > 19 or len(tail) > 19:
            return None
        return cls(int(head), int(tail) if dot else -1)

    def __str__(self) -> str:
        return str(self.event) if self.seq < 0 else f"{self.event}.{self.seq}"

    @property
    def stream_start(self) -> str:
        """The XRANGE start of the deltas after this cursor."""
        return f"{self.event}-0" if self.seq < 0 else f"({self.event}-{self.seq}"


@dataclass(frozen=True)
class Appended:
    """Where an appended delta went: its cursor (`E.k`) and its index."""

    cursor: Cursor
    index: int


@dataclass(frozen=True)
class Delta:
    """One stored delta: its cursor and its message (as published and as sent over SSE)."""

    cursor: Cursor
    message: dict[str, Any]


def _delta(entry_id: bytes | str, fields: dict[Any, Any]) -> Delta:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    head, _, tail = text.partition("-")
    cursor = Cursor(int(head), int(tail))
    get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    message = json.loads(get["m"])
    message["id"] = str(cursor)
    message["payload"]["index"] = int(get["i"])
    return Delta(cursor, message)


class DeltaLog:
    """Appends deltas (the runner) and reads them with the fence raised (every reader).

    A Redis failure never reaches the caller: an append is dropped (the step's output is
    stored whole all the same) and after it appends are skipped for `backoff_seconds`,
    so a dead Redis does not slow the model call down; a read raises DeltasUnavailable.
    """

    def __init__(self, bus: EventBus, *, retention_seconds: int, maxlen: int, backoff_seconds: float = 1.0):
        self.bus = bus
        self.retention_seconds = retention_seconds
        self.maxlen = maxlen
        self.backoff = backoff_seconds
        self._down_until = 0.0
        self._scripts: dict[str, Any] = {}
        bus.delta_retention_seconds = retention_seconds  # an end, from any process, restarts it

    def _script(self, name: str, body: str) -> Any:
        if name not in self._scripts:
            self._scripts[name] = self.bus.client.register_script(body)
        return self._scripts[name]

    def append(
        self,
        execution_id: Any,
        attempt: int,
        floor: int,
        message: dict[str, Any],
        after: Appended | None = None,
    ) -> Appended | None:
        """Store and publish one delta after `after` (the last this writer appended, if any);
        where it went (`E.k` and index), or None when refused or Redis failed."""
        if time.monotonic() < self._down_until:
            return None
        keys = [stream_key(execution_id), meta_key(execution_id)]
        args = [floor, attempt, self.maxlen, self.retention_seconds, execution_channel(execution_id)]
        mine = [after.cursor.event, after.cursor.seq, after.index] if after is not None else [-1, -1, -1]
        try:
            entry = self._script("append", _APPEND)(
                keys=keys, args=[*args, json.dumps(message, default=str), *mine]
            )
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.backoff
            log.warning(
                "output delta dropped: Redis unavailable", execution_id=str(execution_id), error=str(exc)
            )
            return None
        if entry is None:
            return None
        text, index = entry
        cursor = Cursor.parse((text.decode() if isinstance(text, bytes) else str(text)).replace("-", "."))
        assert cursor is not None  # Redis stream ids are always E-k
        return Appended(cursor, int(index))

    def read(self, execution_id: Any, after: Cursor, fence: int, count: int) -> list[Delta]:
        """Up to `count` deltas after `after`, the fence raised to `fence` first (same script)."""
        keys = [stream_key(execution_id), meta_key(execution_id)]
        try:
            entries = self._script("read", _READ)(
                keys=keys, args=[fence, after.stream_start, count, self.retention_seconds]
            )
        except (redis.RedisError, OSError) as exc:
            raise DeltasUnavailable(str(exc)) from exc
        return [
            _delta(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))
            for entry_id, fields in entries
        ]

    def keep(self, execution_id: Any) -> None:
        """Restart the retention clock (the execution ended): deltas stay that long from now."""
        try:
            pipe = self.bus.client.pipeline(transaction=False)
            pipe.expire(stream_key(execution_id), self.retention_seconds)
            pipe.expire(meta_key(execution_id), self.retention_seconds)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.info(
                "could not refresh the deltas' retention", execution_id=str(execution_id), error=str(exc)
            )


class DeltasUnavailable(Exception):
    """Redis did not answer a read of the deltas."""


class Coalescer:
    """Buffers streamed text: passes it on at most every `interval` seconds, or once
    `max_chars` characters piled up, and whatever is left on `flush()`."""

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        interval: float = 0.05,
        max_chars: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.emit = emit
        self.interval = interval
        self.max_chars = max_chars
        self.clock = clock
        self._parts: list[str] = []
        self._size = 0
        self._last: float | None = None
        self.received = 0  # characters taken

    def write(self, text: str) -> None:
        """Take one chunk; emits the buffer when it is big enough or the interval has passed."""
        if not text:
            return
        self.received += len(text)
        self._parts.append(text)
        self._size += len(text)
        if self._size >= self.max_chars or self._last is None or self.clock() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Emit whatever is buffered (nothing when empty)."""
        if not self._parts:
            return
        text = "".join(self._parts)
        self._parts, self._size = [], 0
        self._last = self.clock()
        self.emit(text)


__all__ = ["OUTPUT_DELTA", "Coalescer", "Cursor", "Delta", "DeltaLog", "DeltasUnavailable"]
