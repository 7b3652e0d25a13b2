"""CommandBus and the model-service providers behind `model.generate`.

Providers: `simulated` (built in, deterministic, with knobs for latency and failures)
and `openai` (any OpenAI-compatible endpoint through the official SDK, streamed).
Every provider failure is a ModelOrchestrationError marked retryable or not.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.agent_turns import (
    StreamedToolCalls,
    openai_messages,
    openai_tool_calls,
    openai_tools,
    simulated_turn,
)
from app.config import Settings
from app.errors import ModelOrchestrationError

MODEL_GENERATE = "model.generate"


@dataclass
class ModelRequest:
    """One model call: the prompt, the agent's model settings and simulation knobs."""

    prompt: str
    system_prompt: str = ""
    model: str = "simulated-1"
    provider: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    simulate: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    model_calls_before: int = 0
    # Called between streamed chunks; raises to stop (cancel, timeout).
    checkpoint: Callable[[], None] = lambda: None
    # Interruptible sleep for simulated latency.
    sleep: Callable[[float], None] = time.sleep
    # Called with each piece of text as the model streams it (None: nobody listens). The
    # pieces, joined, are the returned output.
    on_delta: Callable[[str], None] | None = None
    # An `agent` task's turn (app/agent_turns.py): the conversation replaces `prompt`, the
    # tools are offered, and the answer carries `tool_calls`. None for every other task.
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


class ModelProvider(Protocol):
    """Generates a completion for a ModelRequest."""

    def generate(self, request: ModelRequest) -> dict[str, Any]: ...


def _words(text: str) -> int:
    return len(text.split())


def split_text(text: str, pieces: int) -> list[str]:
    """`text` cut into `pieces` consecutive parts of nearly equal length (some empty when short)."""
    size, extra = divmod(len(text), pieces)
    parts, start = [], 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts


class SimulatedProvider:
    """Deterministic output derived from the prompt; latency streamed in chunks; failures on demand.

    `simulate.latency_ms` per model call, split into `simulate.chunks` chunks (default 10),
    each followed by its piece of the output to `on_delta`;
    `simulate.fail_times` retryable failures (the first N attempts fail);
    `simulate.fail_permanently` a non-retryable failure.
    """

    def generate(self, request: ModelRequest) -> dict[str, Any]:
        sim = request.simulate or {}
        if sim.get("fail_permanently"):
            raise ModelOrchestrationError("simulated permanent model failure", retryable=False)
        if request.attempt <= int(sim.get("fail_times", 0)):
            raise ModelOrchestrationError(
                f"simulated transient model failure (attempt {request.attempt})", retryable=True
            )
        if request.messages is not None:
            return simulated_turn(
                request.messages,
                sim,
                request.model,
                request.system_prompt,
                sleep=request.sleep,
                checkpoint=request.checkpoint,
            )
        digest = hashlib.sha256((request.system_prompt + "\x00" + request.prompt).encode()).hexdigest()
        words = request.prompt.split()
        output = f"[{request.model}] {' '.join(words[:50])}".rstrip() + f" #{digest[:12]}"
        latency = int(sim.get("latency_ms", 0)) / 1000.0
        chunks = max(1, int(sim.get("chunks", 10)))
        request.checkpoint()
        pieces = split_text(output, chunks) if request.on_delta is not None else None
        for i in range(chunks if latency > 0 or pieces else 0):
            if latency > 0:
                request.sleep(latency / chunks)
                request.checkpoint()
            if pieces is not None and request.on_delta is not None:
                request.on_delta(pieces[i])
        prompt_tokens = _words(request.system_prompt) + _words(request.prompt)
        completion_tokens = _words(output)
        return {
            "output": output,
            "model": request.model,
            "finish_reason": "stop",
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class OpenAIProvider:
    """Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM)."""

    def __init__(self, base_url: str, api_key: str, timeout: float):
        self.base_url = base_url
        self.api_key = api_key
        self.timeout = timeout
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=0
            )
        return self._client

    def generate(self, request: ModelRequest) -> dict[str, Any]:
        import openai

        messages = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        extra = {k: v for k, v in request.parameters.items() if k in ("temperature", "max_tokens", "top_p")}
        if request.messages is not None:  # an agent's turn: its conversation, its tools
            messages = openai_messages(request.system_prompt, request.messages)
            if request.tools:
                extra["tools"] = openai_tools(request.tools)
        tool_calls = StreamedToolCalls()
        stream = bool(request.parameters.get("stream", True))
        try:
            request.checkpoint()
            if not stream:
                resp = self.client.chat.completions.create(
                    model=request.model, messages=messages, stream=False, **extra
                )
                choice = resp.choices[0]
                output = choice.message.content or ""
                answer = self._result(request, output, choice.finish_reason, resp.usage, resp.model)
                return answer | {"tool_calls": openai_tool_calls(choice.message)}
            parts: list[str] = []
            finish_reason, usage, model = None, None, request.model
            response = self.client.chat.completions.create(
                model=request.model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            )
            try:
                for chunk in response:
                    request.checkpoint()
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices or []:
                        if choice.delta and choice.delta.content:
                            parts.append(choice.delta.content)
                            if request.on_delta is not None:
                                request.on_delta(choice.delta.content)
                        if choice.delta and choice.delta.tool_calls:
                            tool_calls.add(choice.delta.tool_calls)
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
            finally:
                response.close()
            answer = self._result(request, "".join(parts), finish_reason, usage, model)
            return answer | {"tool_calls": tool_calls.calls()}
        except (openai.RateLimitError, openai.InternalServerError) as exc:
            raise ModelOrchestrationError(f"model service answered {exc.status_code}", True) from exc
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise ModelOrchestrationError(f"model service unreachable: {exc}", True) from exc
        except openai.APIStatusError as exc:
            retry = exc.status_code >= 500 or exc.status_code in (408, 409, 429)
            raise ModelOrchestrationError(
                f"model service answered {exc.status_code}: {_short(exc.message)}", retry
            ) from exc
        except openai.OpenAIError as exc:
            raise ModelOrchestrationError(f"model service error: {exc}", False) from exc

    @staticmethod
    def _result(request: ModelRequest, output: str, finish_reason: Any, usage: Any, model: Any) -> dict:
        if usage is not None:
            prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        else:
            prompt_tokens = _words(request.system_prompt) + _words(request.prompt)
            completion_tokens = _words(output)
        return {
            "output": output,
            "model": model or request.model,
            "finish_reason": finish_reason or "stop",
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class CommandBus:
    """Handlers registered by command name; `dispatch` calls the one for the name."""

    def __init__(self) -> None:
        self._handlers: dict[str, Callable[[Any], Any]] = {}

    def register(self, name: str, handler: Callable[[Any], Any]) -> None:
        """Register (or replace) the handler of a command."""
        self._handlers[name] = handler

    def dispatch(self, name: str, payload: Any) -> Any:
        """Run the command's handler with the payload."""
        try:
            handler = self._handlers[name]
        except KeyError:
            raise LookupError(f"no handler registered for command {name!r}") from None
        return handler(payload)


class ModelRouter:
    """The `model.generate` handler: routes a request to its provider."""

    def __init__(self, providers: dict[str, ModelProvider], default: str):
        self.providers = providers
        self.default = default

    def __call__(self, request: ModelRequest) -> dict[str, Any]:
        name = request.provider or self.default
        provider = self.providers.get(name)
        if provider is None:
            raise ModelOrchestrationError(f"unknown model provider {name!r}", retryable=False)
        return provider.generate(request)


def build_command_bus(settings: Settings, providers: dict[str, ModelProvider] | None = None) -> CommandBus:
    """The CommandBus with `model.generate` wired to the simulated and openai providers."""
    all_providers: dict[str, ModelProvider] = {
        "simulated": SimulatedProvider(),
        "openai": OpenAIProvider(settings.model_base_url, settings.model_api_key, settings.model_timeout),
    }
    all_providers.update(providers or {})
    bus = CommandBus()
    bus.register(MODEL_GENERATE, ModelRouter(all_providers, settings.model_provider))
    return bus
