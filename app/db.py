"""Engine and session factory: created lazily, never at import time, disposed after fork.

A pooled connection is pinged before use only when it sat idle in the pool for more
than PING_AFTER_IDLE seconds: a connection returned a moment ago is alive, and pinging
it would add a round trip to every operation. After a PostgreSQL restart (which takes
longer than that) every pooled connection has been idle long enough to be pinged and
replaced; a connection that breaks mid-use is invalidated with the whole pool as usual.
The ping runs in autocommit, so it also works through PgBouncer in transaction mode.

`prepared_statements=False` connects with psycopg's `prepare_threshold=None`: no statement
is ever prepared on the server (the transition writer reads the same setting from the
connection). PgBouncer in transaction mode hands each transaction to any server
connection, where a statement prepared on another one does not exist (docs/deploy.md).

At its first connection an engine reads PostgreSQL's connection limit once and logs a
warning when this process alone could take every connection (pool_size + max_overflow
above max_connections - superuser_reserved_connections). Behind PgBouncer the process
connects to PgBouncer, not to PostgreSQL, so the check is skipped there.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import structlog
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

log = structlog.get_logger(__name__)

PING_AFTER_IDLE = 1.0

# A PostgreSQL host that vanishes (a partition, a pulled cable) answers nothing: without these
# a query on an open connection waits for the kernel's TCP timeout (~15 min). With them, data
# unacknowledged for 10 s or an idle peer silent for ~11 s fails the connection instead.
DEAD_PEER_DETECTION = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}

_engines: dict[tuple[str, int, int, bool], Engine] = {}
_lock = threading.Lock()


def get_engine(
    url: str, pool_size: int = 10, max_overflow: int = 20, prepared_statements: bool = True
) -> Engine:
    """One engine per database URL, pool size and prepare mode in this process (disposed after a fork)."""
    key = (url, pool_size, max_overflow, prepared_statements)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            connect_args: dict[str, Any] = {"connect_timeout": 5, **DEAD_PEER_DETECTION}
            if not prepared_statements:
                connect_args["prepare_threshold"] = None
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_recycle=1800,
                connect_args=connect_args,
            )
            _ping_idle_connections(engine)
            if prepared_statements:
                _check_connection_budget(engine, pool_size + max_overflow)
            _engines[key] = engine
        return engine


def connection_budget(dbapi_connection: Any) -> int:
    """Connections PostgreSQL gives ordinary roles: max_connections - superuser_reserved_connections."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
        )
        (available,) = cursor.fetchone()
    dbapi_connection.rollback()  # leave the connection idle, as the pool expects
    return int(available)


def _check_connection_budget(engine: Engine, per_process: int) -> None:
    """At the engine's first connection: warn when this process alone could exhaust PostgreSQL."""

    def first_connect(dbapi_connection: Any, record: Any) -> None:
        try:
            available = connection_budget(dbapi_connection)
        except Exception as exc:  # a warning must never stop the process from connecting
            log.debug("connection budget not checked", error=str(exc))
            return
        if per_process >= available:
            log.warning(
                "this process alone can open more database connections than PostgreSQL allows",
                process_max_connections=per_process,
                postgres_available_connections=available,
                fix="lower DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW, raise max_connections, "
                "or put PgBouncer in front (docs/deploy.md)",
            )

    event.listen(engine, "first_connect", first_connect)


# When a statement sent to the driver itself (the transition writer) found its connection
# dropped, by engine: every connection opened before then is pinged at its next checkout.
_disconnected_at: dict[int, float] = {}


def note_disconnect(engine: Engine) -> None:
    """A connection of `engine` was found dropped outside SQLAlchemy (which would otherwise
    have invalidated the pool): ping the others opened before now at their next checkout,
    so a restarted server costs each of them a ping, not a failed write."""
    _disconnected_at[id(engine)] = time.monotonic()


def _ping_idle_connections(engine: Engine) -> None:
    """pool_pre_ping, but only for connections idle longer than PING_AFTER_IDLE, or opened
    before a disconnect `note_disconnect` was told of."""

    def connect(dbapi_connection: Any, record: Any) -> None:
        record.info["opened_at"] = time.monotonic()

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        now = time.monotonic()
        since = record.info.get("idle_since")
        suspect = record.info.get("opened_at", 0.0) < _disconnected_at.get(id(engine), -1.0)
        if not suspect and (since is None or now - since < PING_AFTER_IDLE):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool replaces the connection and tries again
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc
        record.info["opened_at"] = now  # alive after the disconnect: no more pings for it

    event.listen(engine, "connect", connect)
    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded rows usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def dispose_all() -> None:
    """Drop pooled connections; a forked child must never reuse its parent's sockets."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)


os.register_at_fork(after_in_child=dispose_all)
