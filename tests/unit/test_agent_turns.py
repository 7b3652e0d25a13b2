"""Pure parts of the agent task (#14): the simulated model's turns, the conversation helpers,
OpenAI shapes, and the http tools' allow-list check (with a fake resolver)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from app.agent_turns import StreamedToolCalls, openai_messages, parse_arguments, simulated_turn
from app.config import Settings
from app.errors import UnprocessableError
from app.execution.agent_loop import new_conversation, turn_progress, unanswered_calls
from app.execution.tools import check_tools
from app.schemas import AgentTool

ASK = {"tool_calls": [[{"name": "lookup", "arguments": {"q": "x"}}, {"name": "lookup"}], []]}


def test_the_simulated_model_asks_for_the_listed_calls_then_answers_quoting_every_output():
    messages = new_conversation("what is x?")["messages"]
    first = simulated_turn(messages, ASK, "sim-1", "")
    assert first["tool_calls"] == [
        {"id": "call_1_0", "name": "lookup", "arguments": {"q": "x"}},
        {"id": "call_1_1", "name": "lookup", "arguments": {}},
    ]
    assert first["finish_reason"] == "tool_calls" and first["usage"]["total_tokens"] > 0
    messages += [
        {"role": "assistant", "content": "", "tool_calls": first["tool_calls"]},
        {"role": "tool", "tool_call_id": "call_1_0", "name": "lookup", "content": "ten"},
        {"role": "tool", "tool_call_id": "call_1_1", "name": "lookup", "content": "eleven"},
    ]
    final = simulated_turn(messages, ASK, "sim-1", "")
    assert final["tool_calls"] == [] and final["finish_reason"] == "stop"
    assert final["output"] == "[sim-1] answer to: what is x? | tool outputs: lookup=ten; lookup=eleven"
    assert simulated_turn(messages, ASK, "sim-1", "") == final  # deterministic


def test_the_unanswered_calls_are_those_of_the_last_turn_without_a_result():
    calls = [{"id": "a", "name": "t"}, {"id": "b", "name": "t"}]
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": calls}]
    assert unanswered_calls(messages) == calls
    messages.append({"role": "tool", "tool_call_id": "a", "name": "t", "content": "1"})
    assert unanswered_calls(messages) == [calls[1]]
    assert unanswered_calls([{"role": "user", "content": "q"}]) == []


def test_turn_progress_grows_after_the_input_step_and_stays_below_100():
    values = [turn_progress(i, 8) for i in range(1, 9)]
    assert values == sorted(values) and values[0] > 100 / 3 and values[-1] < 100


def test_openai_shapes_carry_the_calls_as_json_strings_and_the_results_as_tool_messages():
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "t", "arguments": {"a": 1}}]},
        {"role": "tool", "tool_call_id": "c", "name": "t", "content": "r"},
    ]
    assert openai_messages("sys", messages) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "t", "arguments": '{"a": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "r"},
    ]
    assert parse_arguments("not json") == {"_raw": "not json"} and parse_arguments(None) == {}


def test_streamed_tool_calls_are_assembled_by_index():
    calls = StreamedToolCalls()
    calls.add([NS(index=0, id="c0", function=NS(name="look", arguments='{"q"'))])
    calls.add([NS(index=1, id="c1", function=NS(name="other", arguments="{}"))])
    calls.add([NS(index=0, id=None, function=NS(name="up", arguments=': "x"}'))])
    assert calls.calls() == [
        {"id": "c0", "name": "lookup", "arguments": {"q": "x"}},
        {"id": "c1", "name": "other", "arguments": {}},
    ]


def _http(url: str) -> AgentTool:
    return AgentTool(name="t", kind="http", url=url)


@pytest.mark.parametrize(
    ("url", "allowed", "resolves_to"),
    [
        ("http://169.254.169.254/latest", "", ["169.254.169.254"]),
        ("http://10.0.0.1/x", "127.0.0.1", ["10.0.0.1"]),
        ("http://localhost/x", "127.0.0.1", ["127.0.0.1"]),  # the name is not listed, only the address
        ("https://evil.example/x", "127.0.0.1", ["127.0.0.1"]),  # DNS pointing at a listed address
        ("https://example.com/x", "", ["93.184.216.34"]),  # public, but the list is empty
    ],
)
def test_an_http_tool_is_refused_unless_its_host_is_allow_listed(url, allowed, resolves_to):
    settings = Settings(tool_allowed_hosts=allowed)
    with pytest.raises(UnprocessableError):
        check_tools([_http(url)], settings, resolver=lambda host, port: resolves_to)


def test_an_allow_listed_http_tool_and_any_client_tool_pass():
    settings = Settings(tool_allowed_hosts="tools.internal, 127.0.0.1")
    check_tools(
        [_http("https://tools.internal/x"), _http("http://127.0.0.1:9/x"), AgentTool(name="c")],
        settings,
        resolver=lambda host, port: ["10.1.2.3"] if host == "tools.internal" else ["127.0.0.1"],
    )
