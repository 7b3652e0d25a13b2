"""Typed settings read from the environment (12-factor), with localhost defaults."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of agentexec, named as its environment variable."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/agentexec"
    database_pool_size: int = 10
    database_max_overflow: int = 20
    # False through PgBouncer in transaction mode: no server-side prepared statements (docs/deploy.md).
    database_prepared_statements: bool = True
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str = ""

    # Workers and recovery.
    heartbeat_interval: float = Field(5.0, gt=0)
    lease_timeout: float = Field(30.0, gt=0)
    redeliver_after: float = Field(60.0, gt=0)
    reaper_interval: float = Field(5.0, gt=0)
    default_timeout_seconds: int = Field(3600, gt=0)
    max_timeout_seconds: int = Field(86400, gt=0)
    default_max_retries: int = Field(3, ge=0)
    retry_backoff_base: float = Field(1.0, ge=0)
    retry_backoff_cap: float = Field(30.0, ge=0)
    default_queue: str = "executions"
    # Queues the API accepts (comma-separated), besides the default queue: those your workers read.
    execution_queues: str = ""
    worker_pool: str = "threads"
    worker_concurrency: int = Field(32, gt=0)
    # On a warm shutdown (SIGTERM) running executions get this long to reach a step boundary,
    # then are handed back mid-call: requeued with a new attempt for another worker.
    worker_shutdown_grace: float = Field(10.0, ge=0)
    # Flow control: at most this many executions of one tenant RUNNING or PAUSING at once
    # (0: no limit); `agentexec tenants set-limit TENANT N` overrides it per tenant.
    tenant_max_concurrency: int = Field(0, ge=0)
    # Retention: finished executions older than this many days are deleted with their history
    # and events by a beat job every RETENTION_INTERVAL seconds (0 keeps everything).
    retention_days: int = Field(30, ge=0)
    retention_interval: float = Field(3600.0, gt=0)
    # Schedules: beat runs the schedule tick this often (delayed starts and cron schedules are
    # due at most this late); a tenant may have at most this many schedules.
    schedule_tick_interval: float = Field(1.0, gt=0)
    schedules_max_per_tenant: int = Field(100, ge=0)

    # Model service.
    model_provider: str = "simulated"
    model_base_url: str = "http://127.0.0.1:11434/v1"
    model_api_key: str = "not-needed"
    model_name: str = "gpt-4o-mini"
    model_timeout: float = Field(60.0, gt=0)

    # HTTP API.
    max_request_bytes: int = Field(1024 * 1024, gt=0)
    sse_heartbeat_seconds: float = Field(15.0, gt=0)
    # Open SSE streams per API key, across web processes (api/streams.py); over it: 429.
    max_streams_per_key: int = Field(100, ge=0)
    # A stream whose client reads nothing for this long (its socket buffers full) is dropped.
    sse_send_timeout_seconds: float = Field(30.0, gt=0)
    auth_enabled: bool = True
    rate_limit: int = Field(600, ge=0)
    rate_limit_window: int = Field(60, ge=1)
    cors_origins: str = ""
    # Reverse proxies whose X-Forwarded-For is believed (comma-separated addresses or networks).
    trusted_proxies: str = ""
    # When set, /metrics needs `Authorization: Bearer <METRICS_TOKEN>` (from anywhere); when
    # empty, it is open to loopback clients only and needs an API key from anywhere else.
    metrics_token: str = ""
    # Signs the /console session cookie. Empty: one random secret per deployment, made on first
    # use and kept in Redis (every web process shares it; sessions survive restarts).
    console_secret_key: str = ""
    # Output deltas (agent.execution.output.delta) live in one capped Redis stream per execution,
    # replayable this long after the execution ends (then `result` holds the whole output).
    delta_retention_seconds: int = Field(3600, gt=0)
    delta_stream_maxlen: int = Field(10_000, gt=0)

    # Webhooks (docs/webhooks.md): beat runs the dispatcher every WEBHOOK_POLL_INTERVAL seconds;
    # a failed attempt is retried after WEBHOOK_RETRY_BASE seconds, doubling, until
    # WEBHOOK_RETRY_WINDOW seconds after the first attempt; an endpoint whose last
    # WEBHOOK_DISABLE_AFTER deliveries all failed is disabled. Non-public addresses are refused
    # unless listed in WEBHOOK_ALLOWED_HOSTS (comma-separated host names, `*.suffix`, IPs, CIDRs).
    webhook_poll_interval: float = Field(1.0, gt=0)
    webhook_retry_base: float = Field(5.0, gt=0)
    webhook_retry_window: float = Field(86400.0, gt=0)
    webhook_disable_after: int = Field(50, ge=1)
    webhook_allowed_hosts: str = ""
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_max_response_bytes: int = Field(64 * 1024, ge=0)
    webhook_max_per_tenant: int = Field(20, ge=1)
    # Attempts in flight at once across the workers, and for one endpoint: a slow or dead
    # receiver holds at most this many worker threads (keep it under WORKER_CONCURRENCY).
    webhook_max_in_flight: int = Field(8, ge=1)
    webhook_max_in_flight_per_endpoint: int = Field(4, ge=1)

    # Agents with tools (docs/agents.md): a wait for tool outputs (REQUIRES_ACTION) expires after
    # ACTION_TIMEOUT_SECONDS unless the create says otherwise. http tools reach ONLY hosts listed
    # in TOOL_ALLOWED_HOSTS (empty: no http tool can be created); a call is retried TOOL_RETRIES
    # times on 5xx, 429 and connection errors, TOOL_RETRY_BASE seconds apart, doubling.
    action_timeout_seconds: int = Field(86400, gt=0)
    tool_allowed_hosts: str = ""
    tool_timeout_seconds: float = Field(10.0, gt=0)
    tool_max_response_bytes: int = Field(64 * 1024, gt=0)
    tool_retries: int = Field(3, ge=0, le=10)
    tool_retry_base: float = Field(0.5, ge=0)

    # Logs.
    log_format: str = "console"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _broker_defaults_to_redis(self) -> Settings:
        if not self.celery_broker_url:
            self.celery_broker_url = self.redis_url
        return self

    @property
    def accepted_queues(self) -> frozenset[str]:
        """The default queue and every queue named in EXECUTION_QUEUES."""
        listed = {q.strip() for q in self.execution_queues.split(",") if q.strip()}
        return frozenset(listed | {self.default_queue})

    @property
    def event_channel_prefix(self) -> str:
        return "agent.execution.events."


def get_settings() -> Settings:
    """Settings read from the environment now (the composition root keeps the process's own)."""
    return Settings()
