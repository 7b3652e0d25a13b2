"""Engine and session factory: created lazily, never at import time, disposed after fork.

A pooled connection is pinged before use only when it sat idle in the pool for more
than PING_AFTER_IDLE seconds: a connection returned a moment ago is alive, and pinging
it would add a round trip to every operation. After a PostgreSQL restart (which takes
longer than that) every pooled connection has been idle long enough to be pinged and
replaced; a connection that breaks mid-use is invalidated with the whole pool as usual.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

PING_AFTER_IDLE = 1.0

_engines: dict[tuple[str, int, int], Engine] = {}
_lock = threading.Lock()


def get_engine(url: str, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """One engine per database URL and pool size in this process (disposed after a fork)."""
    key = (url, pool_size, max_overflow)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_recycle=1800,
                connect_args={"connect_timeout": 5},
            )
            _ping_idle_connections(engine)
            _engines[key] = engine
        return engine


def _ping_idle_connections(engine: Engine) -> None:
    """pool_pre_ping, but only for connections idle longer than PING_AFTER_IDLE."""

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool replaces the connection and tries again
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc

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
