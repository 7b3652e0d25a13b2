"""What every part of the repository shares: the session factory and its units of work."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.execution.unit_of_work import UnitOfWork


def unique_violation(exc: IntegrityError) -> bool:
    """True when the failure is a unique index refusing a duplicate."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == "23505"


class RepositoryBase:
    """Holds the session factory; each call runs in the caller's unit of work or in its own."""

    def __init__(self, session_factory: sessionmaker[Session]):
        self.session_factory = session_factory

    def unit_of_work(
        self,
        *,
        autocommit: bool = False,
        operation: str = "database call",
        execution_id: uuid.UUID | None = None,
    ) -> UnitOfWork:
        """A new unit of work on this repository's database."""
        return UnitOfWork(
            self.session_factory, autocommit=autocommit, operation=operation, execution_id=execution_id
        )

    @contextmanager
    def _work(
        self,
        uow: UnitOfWork | None,
        operation: str,
        execution_id: uuid.UUID | None = None,
        *,
        autocommit: bool = True,
    ) -> Iterator[UnitOfWork]:
        """The caller's unit of work as it is, or a new one (autocommit unless told otherwise)."""
        if uow is not None:
            yield uow
            return
        with self.unit_of_work(autocommit=autocommit, operation=operation, execution_id=execution_id) as own:
            yield own
