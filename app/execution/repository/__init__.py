"""ExecutionRepository: every SQL statement of agentexec lives in this package or in the writer.

Each method runs in the caller's unit of work when one is given (several writes that
commit together), or in one of its own otherwise; reads and one-statement writes run in
autocommit (no BEGIN and COMMIT round trips). Writes of an execution go through the
transition writer (`app.execution.writer`): the row, its history and its events in ONE
statement. Database failures become DatabaseError in the unit of work, logged once.
"""

from __future__ import annotations

from app.execution.repository.agents import AgentRows
from app.execution.repository.executions import EXACT_COUNT_UP_TO, ExecutionRows
from app.execution.repository.limits import LimitRows
from app.execution.repository.operations import REAPER_LOCK_KEY, OperationRows
from app.execution.repository.schedules import ScheduleRows
from app.execution.repository.tools import ToolRows


class ExecutionRepository(ExecutionRows, AgentRows, OperationRows, LimitRows, ScheduleRows, ToolRows):
    """Handles all database operations for executions, agents, API keys, operations, limits,
    schedules and agent tools."""


__all__ = ["EXACT_COUNT_UP_TO", "REAPER_LOCK_KEY", "ExecutionRepository"]
