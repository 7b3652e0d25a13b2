"""UnitOfWork: one transaction, and the one place where database failures become DatabaseError.

Every repository call runs in a unit of work: its own (the usual case) or the caller's
(several writes that must commit together). A unit of work either commits at the end
(`autocommit=False`: BEGIN ... COMMIT) or lets each statement commit by itself
(`autocommit=True`: for reads and for the one-statement writes of the transition
writer, which need no BEGIN and COMMIT round trips). On failure it rolls back, logs
the failure once with the operation and the execution id, and raises
DatabaseUnavailableError (PostgreSQL cannot be reached: the same call may succeed
later) or DatabaseError, as the seed asks.

An autocommit unit opens no ORM Session unless one is asked for: most of them (every write
of the transition writer, the raw-SQL reads) only need the connection, and a Session cost
~3 times a plain pooled Connection in CPU on every call of the hot path.
"""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any

import psycopg
import structlog
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db import note_disconnect
from app.errors import DatabaseError, DatabaseUnavailableError

log = structlog.get_logger(__name__)
_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


# Server unreachable or the connection dropped: through SQLAlchemy, or straight from psycopg
# (the transition writer runs its statements on the driver itself).
_UNAVAILABLE = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


def wrap_database_error(
    exc: SQLAlchemyError | psycopg.Error, operation: str, execution_id: Any = None
) -> DatabaseError:
    """The DatabaseError for a database failure, logged once with the operation and execution id."""
    where = {"operation": operation, "execution_id": None if execution_id is None else str(execution_id)}
    if isinstance(exc, _UNAVAILABLE):
        log.error("database unavailable", **where)
        return DatabaseUnavailableError(f"database unavailable during {operation}")
    cause = getattr(exc, "orig", None) or exc
    log.error("database operation failed", error=str(cause).splitlines()[0] if str(cause) else "", **where)
    return DatabaseError(f"{operation} failed: {type(exc).__name__}")


class UnitOfWork:
    """A session in one transaction (or in autocommit), committed or rolled back at the end."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        autocommit: bool = False,
        operation: str = "database call",
        execution_id: uuid.UUID | None = None,
    ):
        self.session_factory = session_factory
        self.autocommit = autocommit
        self.operation = operation
        self.execution_id = execution_id
        self._session: Session | None = None
        self._connection: Connection | None = None  # autocommit: the connection, session or not
        self._open = False

    @property
    def session(self) -> Session:
        """The session of this unit of work (inside the `with` block); an autocommit unit
        opens it on first use, on the unit's connection."""
        if self._session is None:
            if not self._open:
                raise RuntimeError("the unit of work is not open")
            self._session = self.session_factory(bind=self.connection)
        return self._session

    @property
    def connection(self) -> Connection:
        """The unit's connection (the transition writer runs its SQL on it)."""
        if self._connection is not None:
            return self._connection
        return self.session.connection()

    def __enter__(self) -> UnitOfWork:
        if not self.autocommit:
            self._session = self.session_factory()
            self._open = True
            return self
        engine = getattr(self.session_factory, "kw", {}).get("bind")
        try:
            if isinstance(engine, Engine):
                self._connection = engine.connect().execution_options(**_AUTOCOMMIT)
            else:  # a factory bound otherwise: its own session, in autocommit
                self._session = self.session_factory()
                self._connection = self._session.connection(execution_options=_AUTOCOMMIT)
        except SQLAlchemyError as failure:
            self._close()
            raise wrap_database_error(failure, self.operation, self.execution_id) from failure
        self._open = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            # The transition writer runs its statements on the driver itself, so a server that
            # dropped the connection (a restart, pg_terminate_backend) shows up as psycopg's
            # error, not SQLAlchemy's: drop the connection from the pool and say unavailable.
            self._invalidate()
            self._close()
            raise wrap_database_error(exc, self.operation, self.execution_id) from exc
        session = self._session
        try:
            if session is not None and exc is None and not self.autocommit:
                session.commit()
            elif session is not None and exc is not None:
                session.rollback()
        except SQLAlchemyError as failure:
            self._close()
            raise wrap_database_error(failure, self.operation, self.execution_id) from failure
        except BaseException:
            self._close()
            raise
        self._close()
        if isinstance(exc, SQLAlchemyError):
            raise wrap_database_error(exc, self.operation, self.execution_id) from exc

    def _invalidate(self) -> None:
        """Discard the unit's connection instead of returning it to the pool, and have the
        pool ping the others (the server may have dropped them all: a restart)."""
        try:
            connection = self._connection
            if connection is None and self._session is not None:
                connection = self._session.connection()
            if connection is not None:
                connection.invalidate()
                note_disconnect(connection.engine)
        except SQLAlchemyError:
            log.debug("invalidating a broken connection failed")

    def _close(self) -> None:
        try:
            if self._session is not None:
                self._session.close()
            if self._connection is not None:
                self._connection.close()
        except SQLAlchemyError:
            log.debug("closing a broken session failed")
        self._session = None
        self._connection = None
        self._open = False

    def commit(self) -> None:
        """Commit now (the work may go on in a new transaction)."""
        self.session.commit()
