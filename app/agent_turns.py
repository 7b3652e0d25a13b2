"""One model turn of an `agent` task: the conversation so far and the tools in, a final answer
or tool calls out. Provider-neutral message shapes, and the simulated provider's turn.

Messages are stored in the execution's `context.agent.messages` and read by every provider:
    {"role": "user", "content": str}
    {"role": "assistant", "content": str, "tool_calls": [{"id", "name", "arguments": dict}]}
    {"role": "tool", "tool_call_id": str, "name": str, "content": str}
A turn's answer is the usual model answer (output, model, finish_reason, usage) plus
`tool_calls` (empty for a final answer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any


def _words(text: str) -> int:
    return len(text.split())


def turn_index(messages: list[dict[str, Any]]) -> int:
    """How many model turns the conversation already holds (its assistant messages)."""
    return sum(1 for m in messages if m.get("role") == "assistant")


def simulated_turn(
    messages: list[dict[str, Any]],
    simulate: dict[str, Any],
    model: str,
    system_prompt: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    checkpoint: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """The simulated model's turn: `simulate.tool_calls[i]` for turn i (0-based); a turn with
    none, or past the list, answers with a deterministic text that quotes every tool output,
    so tests can check the outputs reached the model. Each turn takes `latency_ms`, in
    `chunks` interruptible pieces (cancel and deadlines are checked between them)."""
    latency = int(simulate.get("latency_ms", 0)) / 1000.0
    chunks = max(1, int(simulate.get("chunks", 10)))
    checkpoint()
    for _ in range(chunks if latency > 0 else 0):
        sleep(latency / chunks)
        checkpoint()
    turn = turn_index(messages)
    plan = simulate.get("tool_calls") or []
    asked = plan[turn] if turn < len(plan) else []
    prompt_tokens = _words(system_prompt) + sum(_words(str(m.get("content") or "")) for m in messages)
    if asked:
        calls = [
            {"id": f"call_{turn + 1}_{j}", "name": c["name"], "arguments": dict(c.get("arguments") or {})}
            for j, c in enumerate(asked)
        ]
        output, finish_reason = "", "tool_calls"
    else:
        calls = []
        question = next((str(m.get("content") or "") for m in messages if m.get("role") == "user"), "")
        results = [f"{m.get('name')}={m.get('content')}" for m in messages if m.get("role") == "tool"]
        output = f"[{model}] answer to: {' '.join(question.split()[:50])}"
        if results:
            output += " | tool outputs: " + "; ".join(results)
        finish_reason = "stop"
    completion_tokens = max(1, _words(output) + 3 * len(calls))
    return {
        "output": output,
        "tool_calls": calls,
        "model": model,
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# ------------------------------------------------------------------ openai


def openai_messages(system_prompt: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation in OpenAI chat-completions shapes (function calling)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            out.append(
                {
                    "role": "assistant",
                    "content": m.get("content") or None,
                    "tool_calls": [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {
                                "name": c["name"],
                                "arguments": json.dumps(c.get("arguments") or {}),
                            },
                        }
                        for c in m["tool_calls"]
                    ],
                }
            )
        elif role == "tool":
            out.append(
                {"role": "tool", "tool_call_id": m["tool_call_id"], "content": str(m.get("content") or "")}
            )
        else:
            out.append({"role": role, "content": str(m.get("content") or "")})
    return out


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The agent's tools as OpenAI `tools` (functions)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t.get("description") or "",
                "parameters": t.get("parameters") or {"type": "object", "properties": {}},
            },
        }
        for t in tools
    ]


def parse_arguments(text: str | None) -> dict[str, Any]:
    """A tool call's JSON arguments as a dict ({"_raw": text} when the model wrote no JSON object)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


def openai_tool_calls(message: Any) -> list[dict[str, Any]]:
    """The tool calls of a non-streamed answer's message."""
    return [
        {"id": c.id, "name": c.function.name, "arguments": parse_arguments(c.function.arguments)}
        for c in getattr(message, "tool_calls", None) or []
        if getattr(c, "function", None) is not None
    ]


class StreamedToolCalls:
    """Tool calls assembled from streamed deltas: id and name come first, arguments in pieces."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Any) -> None:
        """Take one chunk's `delta.tool_calls`."""
        for d in deltas or []:
            call = self._calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            if d.id:
                call["id"] = d.id
            function = getattr(d, "function", None)
            if function is not None:
                call["name"] += function.name or ""
                call["arguments"] += function.arguments or ""

    def calls(self) -> list[dict[str, Any]]:
        """The assembled calls, in the model's order."""
        return [
            {"id": c["id"], "name": c["name"], "arguments": parse_arguments(c["arguments"])}
            for _, c in sorted(self._calls.items())
        ]
