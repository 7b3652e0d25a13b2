"""Engine and session factory: created lazily, never at import time, disposed after fork."""

from __future__ import annotations

import os
import threading

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(url: str, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """One engine per database URL in this process."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_pre_ping=True,
                pool_recycle=1800,
                connect_args={"connect_timeout": 5},
            )
            _engines[url] = engine
        return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded rows usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def dispose_all() -> None:
    """Drop pooled connections; a forked child must never reuse its parent's sockets."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)


os.register_at_fork(after_in_child=dispose_all)
