"""Agent tools: which http tools may exist (the outbound guard), and one signed, retried call.

http tools reach ONLY hosts in TOOL_ALLOWED_HOSTS (an allow-list without the public default of
webhooks), checked at agent creation and again, after DNS resolution, before every call. The
call reuses app/outbound.py, the webhooks' guard, pinned POST and Standard Webhooks signer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from app import outbound
from app.config import Settings
from app.errors import UnprocessableError
from app.schemas import AgentTool

Resolver = Callable[[str, int], list[str]]


def tool_allow_list(settings: Settings) -> outbound.AllowList:
    """TOOL_ALLOWED_HOSTS as an allow-list that admits nothing else (empty: no http tool)."""
    return outbound.AllowList.parse(settings.tool_allowed_hosts, public=False)


def check_tools(
    tools: Iterable[AgentTool], settings: Settings, resolver: Resolver = outbound.system_resolver
) -> None:
    """Refuse (UnprocessableError, 422) an http tool whose url the outbound guard refuses."""
    allow = tool_allow_list(settings)
    for tool in tools:
        if tool.kind == "http" and tool.url is not None:
            try:
                outbound.check_url(tool.url, allow, resolver)
            except outbound.OutboundRefused as exc:
                raise UnprocessableError(
                    f"tool {tool.name!r}: {exc} (http tools reach only hosts in TOOL_ALLOWED_HOSTS)"
                ) from exc


@dataclass(frozen=True)
class ToolCallResult:
    """What an http tool call gives the model: its answer, or an error text."""

    output: str
    error: bool
    attempts: int


def call_http_tool(
    url: str,
    payload: dict[str, Any],
    *,
    idempotency_key: str,
    secret: str | None,
    settings: Settings,
    sleep: Callable[[float], None] = time.sleep,
    resolver: Resolver = outbound.system_resolver,
) -> ToolCallResult:
    """POST the call to the tool's url; its answer (at most TOOL_MAX_RESPONSE_BYTES) is the output.

    5xx, 429 and connection errors are retried TOOL_RETRIES times with doubling backoff, each
    retry with the same Idempotency-Key and webhook-id, so the tool's server can deduplicate.
    A 4xx, a too large answer, a refused address or exhausted retries become an error result
    the model reads (the execution goes on). Signed when the tenant has a tool secret.
    """
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    allow = tool_allow_list(settings)
    problem = ""
    attempts = 0
    for attempt in range(settings.tool_retries + 1):
        if attempt:
            sleep(settings.tool_retry_base * 2 ** (attempt - 1))
        attempts += 1
        try:
            target = outbound.check_url(url, allow, resolver)
        except outbound.OutboundRefused as exc:
            return ToolCallResult(f"error: the tool's url is refused: {exc}", True, attempts)
        headers = {"idempotency-key": idempotency_key}
        if secret:
            headers |= outbound.signed_headers(secret, idempotency_key, body)
        try:
            answer = outbound.post(
                target,
                body,
                headers,
                timeout=settings.tool_timeout_seconds,
                max_response_bytes=settings.tool_max_response_bytes,
            )
        except httpx.HTTPError as exc:
            problem = f"the tool could not be reached: {type(exc).__name__}: {exc}"
            continue
        if answer.status_code >= 500 or answer.status_code == 429:
            problem = f"the tool answered {answer.status_code}"
            continue
        if answer.truncated:
            cap = settings.tool_max_response_bytes
            return ToolCallResult(f"error: the tool's answer is larger than {cap} bytes", True, attempts)
        text = answer.body.decode("utf-8", "replace")
        if answer.ok:
            return ToolCallResult(text, False, attempts)
        return ToolCallResult(f"error: the tool answered {answer.status_code}: {text[:2000]}", True, attempts)
    return ToolCallResult(f"error: {problem} (after {attempts} attempts)", True, attempts)
