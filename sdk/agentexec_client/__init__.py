"""agentexec-client: the Python client of the agentexec HTTP API.

    from agentexec_client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as client:
        execution = client.executions.create("summarizer", input="...")
        print(client.executions.wait(execution.id, timeout=60).output)

Its version is the API's (`info.version` of /openapi.json).
"""

from agentexec_client.async_client import AsyncClient
from agentexec_client.client import Client
from agentexec_client.errors import (
    AgentexecError,
    Conflict,
    ConnectionFailed,
    NotFound,
    ProblemError,
    RateLimited,
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
    Execution,
    ExecutionCreate,
    ExecutionPage,
    ExecutionParameters,
    ExecutionState,
    FieldError,
    History,
    HistoryItem,
    PipelineStep,
    Problem,
    Progress,
    SimulateOptions,
)
from agentexec_client.version import __version__

__all__ = [
    "FINAL_STATES",
    "Agent",
    "AgentCreate",
    "AgentPage",
    "AgentUpdate",
    "AgentexecError",
    "AnyEvent",
    "AsyncClient",
    "Client",
    "CompletedEvent",
    "CompletedPayload",
    "Conflict",
    "ConnectionFailed",
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
    "Unauthorized",
    "ValidationFailed",
    "WaitTimeout",
    "__version__",
    "parse_event",
]
