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
