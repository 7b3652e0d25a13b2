"""agentexec-client: the Python client of the agentexec HTTP API.

    from agentexec_client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as client:
        execution = client.executions.create("summarizer", input="...")
        print(client.executions.wait(execution.id, timeout=60).output)

Its version is the API's (`info.version` of /openapi.json).
"""

from agentexec_client._calls import NOT_GIVEN, NotGiven
from agentexec_client.async_client import AsyncClient
from agentexec_client.client import Client
from agentexec_client.errors import (
    AgentexecError,
    BudgetExceeded,
    Conflict,
    ConnectionFailed,
    NotFound,
    ProblemError,
    RateLimited,
    TaskBusy,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from agentexec_client.events import (
    AnyEvent,
    CompletedEvent,
    CompletedPayload,
    Event,
    EventType,
    ProgressEvent,
    ProgressPayload,
    StateChangedEvent,
    StateChangedPayload,
    parse_event,
)
from agentexec_client.models import (
    FINAL_STATES,
    Agent,
    AgentCreate,
    AgentPage,
    AgentUpdate,
    ErrorCode,
    Execution,
    ExecutionCreate,
    ExecutionPage,
    ExecutionParameters,
    ExecutionState,
    FieldError,
    History,
    HistoryItem,
    OnConflict,
    PipelineStep,
    Problem,
    Progress,
    SimulateOptions,
    Usage,
    UsageGroup,
    UsageItem,
    UsageReport,
    WaitingReason,
)
from agentexec_client.version import __version__

__all__ = [
    "FINAL_STATES",
    "NOT_GIVEN",
    "Agent",
    "AgentCreate",
    "AgentPage",
    "AgentUpdate",
    "AgentexecError",
    "AnyEvent",
    "AsyncClient",
    "BudgetExceeded",
    "Client",
    "CompletedEvent",
    "CompletedPayload",
    "Conflict",
    "ConnectionFailed",
    "ErrorCode",
    "Event",
    "EventType",
    "Execution",
    "ExecutionCreate",
    "ExecutionPage",
    "ExecutionParameters",
    "ExecutionState",
    "FieldError",
    "History",
    "HistoryItem",
    "NotFound",
    "NotGiven",
    "OnConflict",
    "PipelineStep",
    "Problem",
    "ProblemError",
    "Progress",
    "ProgressEvent",
    "ProgressPayload",
    "RateLimited",
    "SimulateOptions",
    "StateChangedEvent",
    "StateChangedPayload",
    "TaskBusy",
    "Unauthorized",
    "Usage",
    "UsageGroup",
    "UsageItem",
    "UsageReport",
    "ValidationFailed",
    "WaitTimeout",
    "WaitingReason",
    "__version__",
    "parse_event",
]
