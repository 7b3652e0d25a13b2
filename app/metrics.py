"""Prometheus metrics of agentexec: what they are and where their numbers come from.

Two sources, chosen so that the numbers are right however many processes serve:

- API figures (request count and latency by route and status) are measured in the web
  processes, in prometheus-client's multiprocess mode: each gunicorn worker writes its
  own file in PROMETHEUS_MULTIPROC_DIR and a scrape of any worker sums them all.
- Execution figures are computed from PostgreSQL at scrape time (ExecutionStatsCollector):
  executions by state, transitions by (from, to) from the state history, durations,
  queue waits, model calls and tokens from the stored rows. PostgreSQL is the truth
  and every worker writes there, so this needs no metrics endpoint on the workers
  (wherever they run, prefork or threads), nothing is lost when a worker dies, and
  two API processes report the same numbers. The histograms and counters cover every
  row in the tables, so they only grow like Prometheus expects (deleting executions
  looks like a counter reset); a scrape runs a few aggregate queries, cached for
  `cache_seconds`.

This module has no Flask in it; `api/` serves `render()` at /metrics.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from app.execution.repository.stats import DURATION_BUCKETS, MODEL_BUCKETS
from app.schemas import ExecutionState

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_OWNER_ENV = "AGENTEXEC_METRICS_DIR_OWNER"
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# ----------------------------------------------------------- multiprocess mode


def _start_time(pid: int) -> str:
    """The start time of a process (so a reused pid names another directory), or '' if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _running(pid: int, started: str) -> bool:
    """True while the process that named a directory still runs (same pid, same start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _start_time(pid) == started


def _server_pid() -> int:
    """The process whose lifetime the metrics share: the gunicorn master for its workers, else this one."""
    parent = os.getppid()
    try:
        cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
        if b"gunicorn" in cmdline:
            return parent
    except OSError:
        if "gunicorn" in sys.modules:
            return parent
    return os.getpid()


def prepare_multiprocess_dir() -> str:
    """Make sure PROMETHEUS_MULTIPROC_DIR names a directory, and multiprocess mode is on.

    A directory set by the operator is used as it is (the operator wipes it before each
    start, as the prometheus-client docs advise). Unset, the default is a fresh
    directory per server start: `<tmp>/agentexec-prometheus/<pid>-<start time>` of the
    gunicorn master (its workers share it) or of this process; directories of servers
    no longer running are removed.
    """
    configured = os.environ.get(MULTIPROC_ENV)
    owner_pid = _server_pid()
    owner = f"{owner_pid}-{_start_time(owner_pid)}"
    if configured and os.environ.get(_OWNER_ENV) in (None, owner):
        os.makedirs(configured, exist_ok=True)
        path = configured
    else:  # unset, or inherited from the process that started this one: not ours to share
        base = Path(tempfile.gettempdir()) / "agentexec-prometheus"
        base.mkdir(parents=True, exist_ok=True)
        for old in base.iterdir():
            pid, _, started = old.name.partition("-")
            if old.name != owner and pid.isdigit() and not _running(int(pid), started):
                shutil.rmtree(old, ignore_errors=True)
        target = base / owner
        target.mkdir(exist_ok=True)
        path = str(target)
        os.environ[MULTIPROC_ENV] = path
        os.environ[_OWNER_ENV] = owner
    _enable_multiprocess_values()
    return path


def _enable_multiprocess_values() -> None:
    # prometheus-client picks its value class when first imported; metrics created after
    # this call write to the directory even if it was imported before the variable was set.
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()


# --------------------------------------------------------------- API figures


@dataclass(frozen=True)
class ApiMetrics:
    """Request count and latency of the HTTP API, by method, route and status."""

    requests: Counter
    latency: Histogram
    rate_limit_failed_open: Counter

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)


def api_metrics() -> ApiMetrics:
    """The API metrics of a web process (the app factory makes them once, after
    `prepare_multiprocess_dir`)."""
    labels = ("method", "route", "status")
    return ApiMetrics(
        requests=Counter("agentexec_http_requests", "HTTP requests answered.", labels, registry=None),
        latency=Histogram(
            "agentexec_http_request_duration_seconds",
            "HTTP request latency.",
            labels,
            buckets=HTTP_BUCKETS,
            registry=None,
        ),
        rate_limit_failed_open=Counter(
            "agentexec_rate_limit_failed_open",
            "Requests let through unchecked because the rate limiter's Redis was unreachable.",
            registry=None,
        ),
    )


# --------------------------------------------------------- execution figures


def _histogram(
    name: str, doc: str, label: str | None, rows: Iterable[Any], buckets: Sequence[float]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label] if label else [])
    rows = list(rows)
    if not rows and label is None:
        rows = [("", 0, 0.0, *([0] * len(buckets)))]
    for row in rows:
        counts = [float(row[3 + i]) for i in range(len(buckets))]
        pairs = [(repr(float(b)), c) for b, c in zip(buckets, counts, strict=True)]
        pairs.append(("+Inf", float(row[1])))
        family.add_metric([str(row[0])] if label else [], pairs, sum_value=float(row[2]))
    return family


# What a reaper pass did -> the cause it recovered an execution from (docs/operate.md, alerts).
RECOVERY_CAUSES = {
    "requeued": "worker_lost",
    "failed": "worker_lost_retries_spent",
    "timed_out": "worker_lost_past_deadline",
    "cancelled": "worker_lost_while_cancelling",
    "paused": "worker_lost_while_pausing",
    "redelivered": "message_lost",
    "woken": "slot_waiter_not_woken",
}


def _reaper_families(rows: Sequence[Any]) -> list[Metric]:
    age = GaugeMetricFamily(
        "agentexec_reaper_last_pass_age_seconds",
        "Seconds since the reaper's last pass (absent until it first runs; alert when it grows).",
    )
    passes = CounterMetricFamily("agentexec_reaper_passes", "Reaper passes that ran (not skipped).")
    recovered = CounterMetricFamily(
        "agentexec_reaper_recovered", "Executions the reaper moved on, by cause.", labels=["cause"]
    )
    totals: dict[str, Any] = {}
    if rows:
        seconds, totals, count = rows[0]
        age.add_metric([], float(seconds))
        passes.add_metric([], float(count))
    else:
        passes.add_metric([], 0.0)
    for key, cause in RECOVERY_CAUSES.items():
        recovered.add_metric([cause], float((totals or {}).get(key, 0)))
    return [age, passes, recovered]


def _retention_families(rows: Sequence[Any]) -> list[Metric]:
    age = GaugeMetricFamily(
        "agentexec_retention_last_run_age_seconds",
        "Seconds since the retention job last ran (absent until it first runs).",
    )
    deleted = CounterMetricFamily(
        "agentexec_retention_deleted", "Finished executions deleted by retention (RETENTION_DAYS)."
    )
    if rows:
        seconds, total = rows[0]
        age.add_metric([], float(seconds))
        deleted.add_metric([], float(total))
    else:
        deleted.add_metric([], 0.0)
    return [age, deleted]


def _periodic_families(rows: Sequence[Any]) -> list[Metric]:
    age = GaugeMetricFamily(
        "agentexec_periodic_last_run_age_seconds",
        "Seconds since beat's schedule tick or webhook dispatcher last ran, by task (absent until it runs).",
        labels=["task"],
    )
    runs = CounterMetricFamily(
        "agentexec_periodic_runs", "Passes of beat's periodic tasks, by task.", labels=["task"]
    )
    for task, seconds, count in rows:
        age.add_metric([str(task)], float(seconds))
        runs.add_metric([str(task)], float(count))
    return [age, runs]


WEBHOOK_STATUSES = ("pending", "delivering", "succeeded", "failed")


def _webhook_families(deliveries: Sequence[Any], disabled: Sequence[Any]) -> list[Metric]:
    by_status = GaugeMetricFamily(
        "agentexec_webhook_deliveries",
        "Webhook deliveries by status (failed: retried for WEBHOOK_RETRY_WINDOW in vain).",
        labels=["status"],
    )
    counts = {status: n for status, n in deliveries}
    for status in WEBHOOK_STATUSES:
        by_status.add_metric([status], float(counts.get(status, 0)))
    off = GaugeMetricFamily(
        "agentexec_webhooks_disabled", "Webhook endpoints disabled (by the API or after failed deliveries)."
    )
    off.add_metric([], float(disabled[0][0] if disabled else 0))
    return [by_status, off]


class ExecutionStatsCollector:
    """Execution figures computed from PostgreSQL at scrape time (see the module docstring)."""

    def __init__(self, stats: Callable[[], dict[str, Sequence[Any]]], cache_seconds: float = 2.0):
        self.stats = stats
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        """The families, from the cache when it is fresh; `agentexec_metrics_database_up` says if read."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.cache_seconds:
                try:
                    self._cached = (now, self._read())
                except Exception:  # PostgreSQL down: API figures still scrape
                    self._cached = None
                    up = GaugeMetricFamily(
                        "agentexec_metrics_database_up",
                        "1 when the execution figures could be read from PostgreSQL.",
                    )
                    up.add_metric([], 0)
                    yield up
                    return
            yield from self._cached[1]

    def _read(self) -> list[Metric]:
        rows = self.stats()
        up = GaugeMetricFamily(
            "agentexec_metrics_database_up", "1 when the execution figures could be read from PostgreSQL."
        )
        up.add_metric([], 1)
        by_state = GaugeMetricFamily("agentexec_executions", "Executions by current state.", labels=["state"])
        counts = {state: n for state, n in rows["by_state"]}
        for state in ExecutionState:
            by_state.add_metric([state.value], counts.get(state.value, 0))
        transitions = CounterMetricFamily(
            "agentexec_state_transitions",
            "Accepted state transitions (from_state is empty for the creation).",
            labels=["from_state", "to_state"],
        )
        for src, dst, n in rows["transitions"]:
            transitions.add_metric([src, dst], n)
        prompt, completion, calls = rows["tokens"][0]
        tokens = CounterMetricFamily(
            "agentexec_model_tokens", "Model tokens used by completed executions.", labels=["kind"]
        )
        tokens.add_metric(["prompt"], float(prompt))
        tokens.add_metric(["completion"], float(completion))
        model_calls = CounterMetricFamily("agentexec_model_calls", "Model calls of completed executions.")
        model_calls.add_metric([], float(calls))
        reaper = _reaper_families(rows["reaper"])
        return [
            *reaper,
            *_retention_families(rows["retention"]),
            *_periodic_families(rows["periodic"]),
            *_webhook_families(rows["webhook_deliveries"], rows["webhooks_disabled"]),
            up,
            by_state,
            transitions,
            tokens,
            model_calls,
            _histogram(
                "agentexec_execution_duration_seconds",
                "From first start to the final state, by final state.",
                "state",
                rows["duration"],
                DURATION_BUCKETS,
            ),
            _histogram(
                "agentexec_queue_wait_seconds",
                "Time spent QUEUED before each claim by a worker.",
                None,
                rows["queue_wait"],
                DURATION_BUCKETS,
            ),
            _histogram(
                "agentexec_model_call_seconds",
                "Model call latency: run time per model call of executions completed "
                "in one attempt (an estimate that includes the runner's own small overhead).",
                None,
                rows["model_call"],
                MODEL_BUCKETS,
            ),
        ]


def render(collector: ExecutionStatsCollector | None = None) -> bytes:
    """The Prometheus text exposition: every process's API figures plus the execution figures."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=os.environ.get(MULTIPROC_ENV))
    if collector is not None:
        registry.register(collector)
    return generate_latest(registry)
