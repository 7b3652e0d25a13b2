"""The input of the webhook routes (domain models: the API only adds examples)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app import events

DEFAULT_EVENTS = [events.COMPLETED]
MAX_URL = 2048


def _event_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    known = set(events.EVENT_TYPES)
    unknown = [v for v in value if v not in known]
    if unknown:
        raise ValueError(f"unknown event type(s) {unknown}; known: {sorted(known)}")
    return list(dict.fromkeys(value))  # duplicates dropped, order kept


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http or https URL with a host")
    return value


class WebhookCreate(BaseModel):
    """POST /v1/webhooks."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL, description="http(s) URL the events are POSTed to")
    events: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        min_length=1,
        max_length=len(events.EVENT_TYPES),
        description="event types to send (default: agent.execution.completed only)",
    )
    description: str | None = Field(None, max_length=1000)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return _http_url(v)

    @field_validator("events")
    @classmethod
    def _check_events(cls, v: list[str] | None) -> list[str] | None:
        return _event_types(v)


class WebhookUpdate(BaseModel):
    """PATCH /v1/webhooks/{id}: any subset of the fields (null leaves a field as it is)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=MAX_URL)
    events: list[str] | None = Field(None, min_length=1, max_length=len(events.EVENT_TYPES))
    description: str | None = Field(None, max_length=1000)
    enabled: bool | None = Field(
        None, description="false stops deliveries; true resumes them and resets consecutive_failures"
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return _http_url(v)

    @field_validator("events")
    @classmethod
    def _check_events(cls, v: list[str] | None) -> list[str] | None:
        return _event_types(v)
