"""Output deltas end to end: from the provider's chunks to SSE and JSON, replayed exactly.

Real PostgreSQL, Redis and Celery worker (the `api` fixture); the openai provider against
pytest-httpserver; a private redis-server for the restart.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from typing import Any

import pytest

from app.deltas import Cursor
from app.events import COMPLETED, OUTPUT_DELTA, PROGRESS, STATE_CHANGED
from app.schemas import AgentCreate, ExecutionCreate
from tests.conftest import wait_for
from tests.integration.conftest import wait_finished
from tests.integration.redis_server import OwnRedis
from tests.integration.test_openai_provider import _sse, _submit, openai_service  # noqa: F401

SSE = {"Accept": "text/event-stream"}


def read_frames(
    api: Any, execution_id: str, last_id: str | None = None, query: str = "", stop_after: int | None = None
) -> list[dict[str, Any]]:
    """The frames of one SSE connection as a client parses them; cut after `stop_after` frames
    (or at a heartbeat: nothing is coming now)."""
    headers = dict(SSE) | ({"Last-Event-ID": last_id} if last_id is not None else {})
    resp = api.get(f"/v1/executions/{execution_id}/events{query}", headers=headers, buffered=False)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    frames: list[dict[str, Any]] = []
    buffer = ""
    try:
        for chunk in resp.response:
            text = chunk.decode() if isinstance(chunk, bytes) else chunk
            if stop_after is not None and text.startswith(":"):
                break
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
                if "data" in fields and "id" in fields:
                    frames.append(
                        {"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])}
                    )
            if stop_after is not None and len(frames) >= stop_after:
                break
    finally:
        resp.close()
    return frames


def step_texts(messages: list[dict[str, Any]]) -> dict[str | None, str]:
    """A client's view of the output: per step, its deltas joined; `reset` drops the step's text."""
    texts: dict[str | None, str] = {}
    for m in messages:
        if m["type"] == OUTPUT_DELTA:
            p = m["payload"]
            texts[p["step"]] = ("" if p.get("reset") else texts.get(p["step"], "")) + p["delta"]
    return texts


def _agent(api: Any) -> str:
    resp = api.post(
        "/v1/agents", json={"name": f"streamer-{uuid.uuid4().hex[:6]}", "system_prompt": "Be brief."}
    )
    assert resp.status_code == 201
    return str(resp.get_json()["id"])


def _pipeline(api: Any, steps: int, latency_ms: int, chunks: int, **extra: Any) -> str:
    body = {
        "agent_id": _agent(api),
        "parameters": {
            "type": "pipeline",
            "input": "a long story about deltas, ids and the order of things " * 2,
            "steps": [{"name": f"s{i}", "prompt": f"step {i}: {{input}}"} for i in range(steps)],
            "simulate": {"latency_ms": latency_ms, "chunks": chunks},
        },
    } | extra
    resp = api.post("/v1/executions", json=body)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return str(resp.get_json()["id"])


def _key(frame_id: str) -> Cursor:
    cursor = Cursor.parse(frame_id)
    assert cursor is not None
    return cursor


def test_the_deltas_of_a_simulated_pipeline_join_to_each_steps_stored_output(api):
    execution_id = _pipeline(api, steps=3, latency_ms=300, chunks=7)
    frames = read_frames(api, execution_id)
    done = wait_finished(api, execution_id)
    assert done["state"] == "COMPLETED"
    messages = [f["data"] for f in frames]
    assert messages[-1]["type"] == COMPLETED
    outputs = {name: cp["output"] for name, cp in done["context"]["steps"].items()}
    assert step_texts(messages) == outputs
    deltas = [m for m in messages if m["type"] == OUTPUT_DELTA]
    assert [m["payload"]["index"] for m in deltas] == list(range(len(deltas)))
    assert not any(m["payload"].get("reset") for m in deltas)
    assert {tuple(sorted(m["payload"])) for m in deltas} == {
        ("agent_id", "delta", "execution_id", "index", "step", "task_id")
    }
    keys = [_key(f["id"]) for f in frames]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    # Each step's deltas come after its progress event and before the next one's.
    order = [(m["type"], m["payload"].get("message") or m["payload"].get("step")) for m in messages]
    for i in range(3):
        progress = order.index((PROGRESS, f"Step s{i}"))
        first_delta = order.index((OUTPUT_DELTA, f"s{i}"))
        assert progress < first_delta


def test_a_standard_task_streams_its_result_output(api):
    resp = api.post(
        "/v1/executions",
        json={"agent_id": _agent(api), "parameters": {"input": "hello there", "simulate": {"chunks": 5}}},
    )
    execution_id = resp.get_json()["id"]
    frames = read_frames(api, execution_id)
    done = wait_finished(api, execution_id)
    assert step_texts([f["data"] for f in frames]) == {None: done["result"]["output"]}


def test_random_disconnects_rebuild_exactly_the_same_ids_and_text(api):
    """At least 50 reconnects at random points, a pause and a resume (events written by the
    API while deltas stream) in the middle: the frames collected across all connections are
    exactly those of one uninterrupted replay, and their text is the stored output."""
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    execution_id = _pipeline(api, steps=5, latency_ms=1500, chunks=30)
    collected: list[dict[str, Any]] = []
    last: str | None = None
    connections = 0
    paused = resumed = False
    deadline = time.monotonic() + 90
    while not collected or collected[-1]["event"] != COMPLETED:
        assert time.monotonic() < deadline, f"seed {seed}: no completion after {connections} connections"
        use_query = rng.random() < 0.3 and last is not None
        frames = read_frames(
            api,
            execution_id,
            None if use_query else last,
            f"?after={last}" if use_query else "",
            stop_after=rng.randint(1, 3),
        )
        collected += frames
        if frames:
            last = frames[-1]["id"]
            connections += 1
        else:
            time.sleep(0.02)
        deltas = sum(f["event"] == OUTPUT_DELTA for f in collected)
        if not paused and deltas >= 15:
            assert api.post(f"/v1/executions/{execution_id}/pause").status_code in (200, 202)
            paused = True
        if (
            paused
            and not resumed
            and api.get(f"/v1/executions/{execution_id}").get_json()["state"] == "PAUSED"
        ):
            assert api.post(f"/v1/executions/{execution_id}/resume").status_code == 200
            resumed = True
    assert connections >= 50, f"seed {seed}: only {connections} connections"
    assert resumed, f"seed {seed}"
    done = wait_finished(api, execution_id)
    replay = read_frames(api, execution_id)
    assert [f["id"] for f in collected] == [f["id"] for f in replay], f"seed {seed}"
    assert [f["data"] for f in collected] == [f["data"] for f in replay], f"seed {seed}"
    keys = [_key(f["id"]) for f in collected]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), f"seed {seed}"
    outputs = {name: cp["output"] for name, cp in done["context"]["steps"].items()}
    assert step_texts([f["data"] for f in collected]) == outputs, f"seed {seed}"
    every = ",".join((STATE_CHANGED, PROGRESS, COMPLETED, OUTPUT_DELTA))
    as_json = api.get(f"/v1/executions/{execution_id}/events?limit=1000&types={every}").get_json()["items"]
    assert [str(e["id"]) for e in as_json] == [f["id"] for f in replay]


def test_a_retried_attempt_announces_itself_with_reset(api):
    resp = api.post(
        "/v1/executions",
        json={
            "agent_id": _agent(api),
            "parameters": {"input": "try again", "simulate": {"fail_times": 1, "chunks": 4}},
            "max_retries": 2,
        },
    )
    execution_id = resp.get_json()["id"]
    done = wait_finished(api, execution_id, timeout=40)
    assert done["state"] == "COMPLETED" and done["attempt"] == 2
    deltas = [f["data"] for f in read_frames(api, execution_id) if f["event"] == OUTPUT_DELTA]
    assert deltas[0]["payload"]["reset"] is True
    assert not any(d["payload"].get("reset") for d in deltas[1:])
    assert step_texts(deltas) == {None: done["result"]["output"]}


def test_types_keeps_only_those_types_in_the_stream_and_in_json(api):
    execution_id = _pipeline(api, steps=2, latency_ms=200, chunks=4)
    only_states = read_frames(api, execution_id, query=f"?types={STATE_CHANGED}")
    assert only_states and {f["event"] for f in only_states} == {STATE_CHANGED}  # and it ended
    wait_finished(api, execution_id)
    only_deltas = read_frames(api, execution_id, query=f"?types={OUTPUT_DELTA}&types={COMPLETED}")
    assert {f["event"] for f in only_deltas} == {OUTPUT_DELTA, COMPLETED}
    url = f"/v1/executions/{execution_id}/events?limit=1000"
    logged = api.get(url).get_json()["items"]
    assert logged and OUTPUT_DELTA not in {e["type"] for e in logged}  # JSON: deltas when asked
    assert all(isinstance(e["id"], int) for e in logged)
    json_deltas = api.get(f"{url}&types={OUTPUT_DELTA}").get_json()["items"]
    assert [e["id"] for e in json_deltas] == [f["id"] for f in only_deltas if f["event"] == OUTPUT_DELTA]
    both = api.get(f"{url}&types={PROGRESS},{COMPLETED}").get_json()["items"]
    assert {e["type"] for e in both} == {PROGRESS, COMPLETED}
    page = api.get(f"{url.replace('1000', '3')}&after={json_deltas[1]['id']}&types={OUTPUT_DELTA}").get_json()
    assert [e["id"] for e in page["items"]] == [e["id"] for e in json_deltas[2:5]]
    bad = api.get(f"{url}&types=agent.execution.nope")
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    assert api.get(url, headers={"Last-Event-ID": "12.x"}).status_code == 422


def test_the_deltas_of_a_streamed_openai_answer_join_to_its_output(openai_service, httpserver):  # noqa: F811
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_data(
        _sse(["Hel", "lo", ", ", "wor", "ld", "!"]), content_type="text/event-stream"
    )
    ex = _submit(openai_service, stream=True)
    assert openai_service.task_runner.run(ex.id, 1, "w") == "COMPLETED"
    from api.replay import Replay

    items = list(Replay(openai_service, ex.id, Cursor(0)).read())
    deltas = [i.message for i in items if i.type == OUTPUT_DELTA]
    assert deltas and "".join(d["payload"]["delta"] for d in deltas) == "Hello, world!"
    assert openai_service.get_execution(ex.id).result["output"] == "Hello, world!"
    assert items[-1].type == COMPLETED


@pytest.fixture
def own_redis():  # type: ignore[no-untyped-def]
    server = OwnRedis().start()
    yield server
    server.cleanup()


def test_a_stream_survives_a_redis_restart_and_ends_resumably(
    settings, session_factory, clean_db, dispatcher, own_redis
):
    """Redis is killed and started again (empty) while a run streams: the stream does not
    hang, keeps its ids growing, ends with the completion, and a reconnect from its last id
    ends at once with nothing new (deltas lost with the flushed Redis are in `result`)."""
    from api.sse import EventStream
    from app.bootstrap import build_service
    from app.events import EventBus

    svc = build_service(
        background_tasks=dispatcher,
        settings=settings,
        session_factory=session_factory,
        event_bus=EventBus(own_redis.url, socket_timeout=0.3, backoff_seconds=0.3),
    )
    try:
        agent = svc.create_agent(AgentCreate(name="restart", system_prompt="Be brief."))
        ex, _ = svc.create_execution(
            ExecutionCreate(
                agent_id=agent.id,
                parameters={
                    "type": "pipeline",
                    "input": "survive",
                    "steps": [{"name": f"s{i}", "prompt": "{input}"} for i in range(4)],
                    "simulate": {"latency_ms": 1200, "chunks": 12},
                },
            )
        )
        runner = threading.Thread(target=svc.run_attempt, args=(ex.id, 1, "w"), daemon=True)
        frames: list[str] = []
        stream = EventStream(svc, ex.id, 0, heartbeat_seconds=0.5, poll_seconds=0.2)
        reader = threading.Thread(target=lambda: frames.extend(stream), daemon=True)
        runner.start()
        reader.start()
        wait_for(lambda: sum(OUTPUT_DELTA in f for f in frames) >= 3, what="the first deltas")
        own_redis.stop()
        time.sleep(0.5)  # the restart itself: Redis is away for a moment
        own_redis.start()
        runner.join(60)
        reader.join(30)
        assert not reader.is_alive(), "the stream hangs after the Redis restart"
        ids = [_key(line[4:]) for f in frames for line in f.splitlines() if line.startswith("id: ")]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert f"event: {COMPLETED}" in frames[-1]
        assert svc.get_execution(ex.id).state == "COMPLETED"
        after = list(EventStream(svc, ex.id, Cursor.parse(str(ids[-1])) or Cursor(), heartbeat_seconds=0.5))
        assert not any(f.startswith("retry:") or "\nid: " in f or f.startswith("id: ") for f in after)
    finally:
        if svc.control_hub is not None:
            svc.control_hub.stop()


def test_an_end_written_by_the_api_restarts_the_deltas_retention(api, settings):
    """A paused execution cancelled through the API (no run writes that end): its deltas are
    kept DELTA_RETENTION_SECONDS from the end all the same."""
    import redis

    from app.deltas import meta_key, stream_key

    execution_id = _pipeline(api, steps=3, latency_ms=600, chunks=6)
    client = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: client.exists(stream_key(execution_id)), what="the first deltas")
    assert api.post(f"/v1/executions/{execution_id}/pause").status_code in (200, 202)
    wait_for(lambda: api.get(f"/v1/executions/{execution_id}").get_json()["state"] == "PAUSED", what="PAUSED")
    client.expire(stream_key(execution_id), 5)  # as if the pause had lasted nearly the retention
    assert api.post(f"/v1/executions/{execution_id}/cancel").status_code == 200
    assert client.ttl(stream_key(execution_id)) > settings.delta_retention_seconds - 60
    assert client.ttl(meta_key(execution_id)) > settings.delta_retention_seconds - 60
    deltas = [f for f in read_frames(api, execution_id) if f["event"] == OUTPUT_DELTA]
    assert deltas and deltas[0]["data"]["payload"]["step"] == "s0"


def test_a_writer_whose_deltas_redis_lost_goes_on_after_what_clients_were_sent(settings):
    """Redis lost an execution's deltas (a flush, a restart without persistence) while its run
    streams: the run's next delta comes after the last one it appended (`E.k+1`, index + 1),
    not `E.0` and index 0 again, which a client resuming from `E.k` would never be sent."""
    import redis

    from app.deltas import DeltaLog, meta_key, stream_key
    from app.events import EventBus

    bus = EventBus(settings.redis_url)
    log = DeltaLog(bus, retention_seconds=60, maxlen=100)
    execution_id = uuid.uuid4()
    message = {"type": OUTPUT_DELTA, "payload": {"delta": "x"}}
    last = None
    for _ in range(3):
        last = log.append(execution_id, 1, 10, message, last)
    assert last is not None and (str(last.cursor), last.index) == ("10.2", 2)
    redis.Redis.from_url(settings.redis_url).delete(stream_key(execution_id), meta_key(execution_id))

    went = log.append(execution_id, 1, 10, message, last)
    assert went is not None and (str(went.cursor), went.index) == ("10.3", 3)
    after = log.append(execution_id, 1, 10, message, went)
    assert after is not None and (str(after.cursor), after.index) == ("10.4", 4)
    resumed = log.read(execution_id, last.cursor, fence=0, count=10)  # a client that had 10.2
    assert [(str(d.cursor), d.message["payload"]["index"]) for d in resumed] == [("10.3", 3), ("10.4", 4)]
