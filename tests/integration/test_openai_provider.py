"""The openai provider against a local OpenAI-compatible server (pytest-httpserver)."""

from __future__ import annotations

import json

import pytest

from app.config import Settings
from app.schemas import AgentCreate, ExecutionCreate


@pytest.fixture
def openai_service(settings, session_factory, clean_db, dispatcher, httpserver):  # type: ignore[no-untyped-def]
    from app.bootstrap import build_service

    local = Settings(
        **(
            settings.model_dump()
            | {"model_base_url": httpserver.url_for("/v1"), "model_api_key": "test-key", "model_timeout": 5}
        )
    )
    return build_service(background_tasks=dispatcher, settings=local, session_factory=session_factory)


def _submit(svc, stream: bool, max_retries: int = 0):  # type: ignore[no-untyped-def]
    agent = svc.create_agent(
        AgentCreate(
            name=f"oa-{stream}-{max_retries}",
            model="tiny-llm",
            system_prompt="You are terse.",
            parameters={"provider": "openai", "stream": stream},
        )
    )
    ex, _ = svc.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "Say hi"}, max_retries=max_retries)
    )
    return ex


def _completion(text: str) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "tiny-llm",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }


def _sse(chunks: list[str]) -> str:
    lines = []
    for i, piece in enumerate(chunks):
        body = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "tiny-llm",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": piece},
                    "finish_reason": "stop" if i == len(chunks) - 1 else None,
                }
            ],
        }
        lines.append(f"data: {json.dumps(body)}\n\n")
    usage = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "tiny-llm",
        "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    lines.append(f"data: {json.dumps(usage)}\n\n")
    lines.append("data: [DONE]\n\n")
    return "".join(lines)


def test_a_plain_response_becomes_the_result(openai_service, httpserver):  # type: ignore[no-untyped-def]
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_json(_completion("Hi!"))
    ex = _submit(openai_service, stream=False)
    assert openai_service.task_runner.run(ex.id, 1, "w") == "COMPLETED"
    done = openai_service.get_execution(ex.id)
    assert done.result["output"] == "Hi!"
    assert done.result["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "total_tokens": 9,
        "model_calls": 1,
    }
    sent = json.loads(httpserver.log[0][0].data)
    assert sent["model"] == "tiny-llm"
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi"},
    ]
    assert httpserver.log[0][0].headers["Authorization"] == "Bearer test-key"


def test_a_streamed_response_is_assembled_from_its_chunks(openai_service, httpserver):  # type: ignore[no-untyped-def]
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_data(
        _sse(["Hel", "lo", " there"]), content_type="text/event-stream"
    )
    ex = _submit(openai_service, stream=True)
    assert openai_service.task_runner.run(ex.id, 1, "w") == "COMPLETED"
    done = openai_service.get_execution(ex.id)
    assert done.result["output"] == "Hello there"
    assert done.result["usage"]["total_tokens"] == 10
    assert json.loads(httpserver.log[0][0].data)["stream"] is True


def test_a_429_is_retried_as_a_new_attempt(openai_service, httpserver, dispatcher):  # type: ignore[no-untyped-def]
    httpserver.expect_ordered_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "slow down"}}, status=429
    )
    httpserver.expect_ordered_request("/v1/chat/completions").respond_with_data(
        _sse(["ok"]), content_type="text/event-stream"
    )
    ex = _submit(openai_service, stream=True, max_retries=2)
    assert openai_service.task_runner.run(ex.id, 1, "w") == "QUEUED"
    assert dispatcher.started[-1][:2] == (ex.id, 2)
    assert openai_service.task_runner.run(ex.id, 2, "w") == "COMPLETED"
    assert openai_service.get_execution(ex.id).result["output"] == "ok"


def test_a_400_fails_without_retry(openai_service, httpserver):  # type: ignore[no-untyped-def]
    httpserver.expect_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "bad model"}}, status=400
    )
    ex = _submit(openai_service, stream=True, max_retries=3)
    assert openai_service.task_runner.run(ex.id, 1, "w") == "FAILED"
    done = openai_service.get_execution(ex.id)
    assert done.error_message.startswith("model service answered 400")
    assert done.attempt == 1


# ------------------------------------------------------------- function calling (#14)

LOOKUP = {
    "name": "lookup",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    "kind": "client",
}


def _tool_call_completion() -> dict:
    """A recorded shape of a non-streamed answer asking for a function call."""
    return {
        "id": "c2",
        "object": "chat.completion",
        "created": 1,
        "model": "tiny-llm",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_abc",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "Paris"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }


def _tool_call_sse() -> str:
    """A recorded shape of a streamed function call: id and name first, the arguments in pieces."""
    deltas = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": ""},
                }
            ],
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]
    lines = []
    for i, delta in enumerate(deltas):
        body = {
            "id": "c2",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "tiny-llm",
            "choices": [{"index": 0, "delta": delta, "finish_reason": "tool_calls" if i == 2 else None}],
        }
        lines.append(f"data: {json.dumps(body)}\n\n")
    usage = {
        "id": "c2",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "tiny-llm",
        "choices": [],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }
    return "".join(lines) + f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n"


@pytest.mark.parametrize("stream", [False, True], ids=["not streamed", "streamed"])
def test_an_agent_turn_calls_functions_and_the_tool_output_goes_back_to_the_model(  # type: ignore[no-untyped-def]
    openai_service, httpserver, stream
):
    from app.schemas import ToolOutputsSubmit

    first = httpserver.expect_ordered_request("/v1/chat/completions", method="POST")
    if stream:
        first.respond_with_data(_tool_call_sse(), content_type="text/event-stream")
        httpserver.expect_ordered_request("/v1/chat/completions").respond_with_data(
            _sse(["Sunny ", "in Paris"]), content_type="text/event-stream"
        )
    else:
        first.respond_with_json(_tool_call_completion())
        httpserver.expect_ordered_request("/v1/chat/completions").respond_with_json(
            _completion("Sunny in Paris")
        )
    svc = openai_service
    agent = svc.create_agent(
        AgentCreate(
            name=f"fc-{stream}",
            model="tiny-llm",
            system_prompt="You are terse.",
            parameters={"provider": "openai", "stream": stream},
            tools=[LOOKUP],  # type: ignore[list-item]
        )
    )
    ex, _ = svc.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"type": "agent", "input": "Weather in Paris?"})
    )
    assert svc.task_runner.run(ex.id, 1, "w") == "REQUIRES_ACTION"
    waiting = svc.get_execution(ex.id)
    assert waiting.required_action["tool_calls"] == [
        {"id": "call_abc", "name": "lookup", "arguments": {"q": "Paris"}}
    ]

    queued = svc.submit_tool_outputs(
        ex.id, ToolOutputsSubmit(tool_outputs=[{"tool_call_id": "call_abc", "output": "21 C, sunny"}])
    )
    assert (queued.state, queued.attempt) == ("QUEUED", 2)
    assert svc.task_runner.run(ex.id, 2, "w") == "COMPLETED"
    done = svc.get_execution(ex.id)
    assert done.result["output"] == "Sunny in Paris"
    assert done.result["usage"]["model_calls"] == 2 and done.total_tokens == 25 + (9 if not stream else 10)

    asked = json.loads(httpserver.log[0][0].data)
    assert asked["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Weather of a city",
                "parameters": LOOKUP["parameters"],
            },
        }
    ]
    assert asked["stream"] is stream
    answered = json.loads(httpserver.log[1][0].data)
    assert answered["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "21 C, sunny"},
    ]
