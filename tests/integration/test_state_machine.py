"""The guarded state machine on real PostgreSQL, and its events over real Redis."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid

import pytest
from sqlalchemy import func, select

from app.errors import ExecutionNotFoundError, InvalidExecutionStateError, InvalidProgressError
from app.events import EventBus, execution_channel
from app.execution.transitions import TRANSITIONS, validate_transition
from app.models import Execution, ExecutionEvent, ExecutionStateHistory
from app.schemas import ExecutionProgressUpdate
from app.schemas import ExecutionState as S
from tests.conftest import wait_for
from tests.integration.redis_server import OwnRedis


def _insert(session_factory, agent, state: S, n: int = 1, attempt: int = 1) -> list[uuid.UUID]:  # type: ignore[no-untyped-def]
    ids = [uuid.uuid4() for _ in range(n)]
    with session_factory() as s:
        s.execute(
            Execution.__table__.insert(),
            [
                {
                    "id": i,
                    "agent_id": agent.id,
                    "parameters": {"type": "standard"},
                    "state": state.value,
                    "context": {},
                    "metadata": {},
                    "attempt": attempt,
                }
                for i in ids
            ],
        )
        s.commit()
    return ids


def _counts(session_factory, model, execution_id) -> int:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return s.scalar(select(func.count()).select_from(model).where(model.execution_id == execution_id))


def test_every_pair_of_states_is_accepted_or_refused_as_the_table_says(service, agent, session_factory):  # type: ignore[no-untyped-def]
    pairs = list(itertools.product(S, S))
    ids = _insert(session_factory, agent, S.PENDING, len(pairs))
    with session_factory() as s:
        for eid, (current, _) in zip(ids, pairs, strict=True):
            s.execute(Execution.__table__.update().where(Execution.id == eid).values(state=current.value))
        s.commit()
    for eid, (current, target) in zip(ids, pairs, strict=True):
        if validate_transition(current, target):
            row = service.state_manager.change_state(eid, target, "matrix")
            assert row.state == target.value
            assert _counts(session_factory, ExecutionStateHistory, eid) == 1
        else:
            with pytest.raises(InvalidExecutionStateError) as info:
                service.state_manager.change_state(eid, target, "matrix")
            assert current.value in str(info.value) and target.value in str(info.value)
            assert service.repository.get_by_id(eid).state == current.value
            assert _counts(session_factory, ExecutionStateHistory, eid) == 0
            assert _counts(session_factory, ExecutionEvent, eid) == 0


def test_side_effects_set_timestamps_and_emit_completed_on_final_states(service, agent, dispatcher):  # type: ignore[no-untyped-def]
    from app.schemas import ExecutionCreate

    ex, _ = service.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
    assert ex.state == "QUEUED" and ex.queued_at is not None and ex.attempt == 1
    assert dispatcher.started[-1][:2] == (ex.id, 1)
    running = service.state_manager.change_state(ex.id, S.RUNNING, expected_attempt=1)
    assert running.started_at is not None and running.heartbeat_at is not None
    done = service.state_manager.change_state(ex.id, S.FAILED, "boom", values={"error_message": "boom"})
    assert done.completed_at is not None
    types = [e.type for e in service.get_events(ex.id)]
    assert types[-2:] == ["agent.execution.state_changed", "agent.execution.completed"]
    again = service.state_manager.change_state(ex.id, S.QUEUED, "retry")
    assert again.attempt == 2 and again.completed_at is None and again.error_message is None


def test_an_unknown_execution_is_not_found(service):  # type: ignore[no-untyped-def]
    with pytest.raises(ExecutionNotFoundError):
        service.state_manager.change_state(uuid.uuid4(), S.QUEUED)


def test_a_stale_attempt_changes_nothing(service, agent, session_factory):  # type: ignore[no-untyped-def]
    [eid] = _insert(session_factory, agent, S.RUNNING, attempt=3)
    for target in (S.COMPLETED, S.QUEUED, S.FAILED):
        with pytest.raises(InvalidExecutionStateError) as info:
            service.state_manager.change_state(eid, target, expected_attempt=2)
        assert "attempt 3" in str(info.value)
    with pytest.raises(InvalidExecutionStateError):
        service.progress_tracker.update_progress(
            eid, ExecutionProgressUpdate(percentage=5), expected_attempt=2
        )
    row = service.repository.get_by_id(eid)
    assert row.state == "RUNNING" and row.progress_percentage == 0
    assert _counts(session_factory, ExecutionStateHistory, eid) == 0


ROUNDS = 500
THREADS = 8


def test_racing_transitions_have_exactly_one_winner_per_round(service, agent, session_factory, capsys):  # type: ignore[no-untyped-def]
    targets = [S.COMPLETED, S.FAILED, S.TIMED_OUT, S.PAUSING, S.CANCELLING, S.QUEUED, S.PAUSED, S.CANCELLED]
    assert len(targets) == THREADS
    ids = _insert(session_factory, agent, S.RUNNING, ROUNDS)
    barrier = threading.Barrier(THREADS)
    wins = [[0] * THREADS for _ in range(ROUNDS)]
    refused = [0]
    lock = threading.Lock()

    def contender(k: int) -> None:
        for r, eid in enumerate(ids):
            barrier.wait()
            try:
                service.state_manager.change_state(
                    eid, targets[(k + r) % THREADS], f"race {r}", expected_state=S.RUNNING
                )
                wins[r][k] = 1
            except InvalidExecutionStateError:
                with lock:
                    refused[0] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=contender, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    assert [sum(w) for w in wins] == [1] * ROUNDS
    assert refused[0] == ROUNDS * (THREADS - 1)
    with session_factory() as s:
        hist = s.execute(
            select(ExecutionStateHistory.execution_id, ExecutionStateHistory.to_state).where(
                ExecutionStateHistory.execution_id.in_(ids)
            )
        ).all()
        changed = s.execute(
            select(ExecutionEvent.execution_id, ExecutionEvent.payload).where(
                ExecutionEvent.execution_id.in_(ids), ExecutionEvent.type == "agent.execution.state_changed"
            )
        ).all()
        states = dict(s.execute(select(Execution.id, Execution.state).where(Execution.id.in_(ids))).all())
    assert len(hist) == ROUNDS
    assert sorted((h.execution_id, h.to_state) for h in hist) == sorted(
        (e.execution_id, e.payload["new_state"]) for e in changed
    )
    assert all(states[h.execution_id] == h.to_state for h in hist)
    with capsys.disabled():
        print(
            f"\n[race] rounds={ROUNDS} threads={THREADS} winners={ROUNDS} refused={refused[0]} "
            f"attempts/s={ROUNDS * THREADS / elapsed:.0f} accepted transitions/s={ROUNDS / elapsed:.0f} "
            f"elapsed={elapsed:.2f}s"
        )


def _listen(
    bus: EventBus, channels: list[str], sink: list, ready: threading.Event, stop: threading.Event
) -> None:
    ps = bus.pubsub()
    ps.subscribe(*channels)
    ready.set()
    while not stop.is_set():
        msg = ps.get_message(timeout=0.2)
        if msg and msg["type"] == "message":
            sink.append((msg["channel"].decode(), json.loads(msg["data"])))
    ps.close()


def _of(got: list, execution_id: uuid.UUID) -> list:
    """The messages about one execution (the type channels are shared by every publisher)."""
    return [(ch, m) for ch, m in got if m.get("execution_id") == str(execution_id)]


def test_a_redis_subscriber_receives_every_event_on_both_channels(service, agent):  # type: ignore[no-untyped-def]
    from app.schemas import ExecutionCreate

    ex, _ = service.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False)
    )
    channels = [
        execution_channel(ex.id),
        "agent.execution.state_changed",
        "agent.execution.progress",
        "agent.execution.completed",
    ]
    got: list = []
    ready, stop = threading.Event(), threading.Event()
    listener = threading.Thread(target=_listen, args=(service.event_bus, channels, got, ready, stop))
    listener.start()
    ready.wait(5)
    try:
        service.start_execution(ex.id)
        service.state_manager.change_state(ex.id, S.RUNNING)
        service.progress_tracker.update_progress(
            ex.id, ExecutionProgressUpdate(percentage=50, message="half")
        )
        service.state_manager.change_state(ex.id, S.COMPLETED, values={"result": {"output": "o"}})
        logged = service.get_events(ex.id)[1:]  # the creation event was published before we listened
        wait_for(
            lambda: len(_of(got, ex.id)) >= 2 * len(logged), timeout=10, what="all events on both channels"
        )
    finally:
        stop.set()
        listener.join()
    got = _of(got, ex.id)
    on_exec = [m for ch, m in got if ch == execution_channel(ex.id)]
    on_type = [m for ch, m in got if ch != execution_channel(ex.id)]
    assert [m["id"] for m in on_exec] == [e.id for e in logged]
    assert sorted(m["id"] for m in on_type) == [e.id for e in logged]
    assert [m["id"] for m in on_exec] == sorted({m["id"] for m in on_exec})
    for message, row in zip(on_exec, logged, strict=True):
        assert message["type"] == row.type
        assert message["payload"] == row.payload
        assert message["execution_id"] == str(ex.id)
        assert message["created_at"] == row.created_at.isoformat()
    assert any(ch == "agent.execution.completed" for ch, _ in got)


def test_transitions_commit_while_redis_is_down_and_events_flow_again_after(
    settings,
    session_factory,  # type: ignore[no-untyped-def]
    clean_db,
    dispatcher,
):
    from app.bootstrap import build_service
    from app.schemas import AgentCreate, ExecutionCreate

    own = OwnRedis().start()
    try:
        bus = EventBus(own.url, socket_timeout=0.5, backoff_seconds=0.2)
        svc = build_service(
            background_tasks=dispatcher, settings=settings, session_factory=session_factory, event_bus=bus
        )
        agent = svc.create_agent(AgentCreate(name="redis-down"))
        ex, _ = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
        own.stop()
        started = time.monotonic()
        svc.state_manager.change_state(ex.id, S.RUNNING)
        svc.progress_tracker.update_progress(ex.id, ExecutionProgressUpdate(percentage=10))
        assert time.monotonic() - started < 5
        assert svc.get_execution(ex.id).state == "RUNNING"
        assert [e.type for e in svc.get_events(ex.id)][-2:] == [
            "agent.execution.state_changed",
            "agent.execution.progress",
        ]
        own.start()
        got: list = []
        ready, stop = threading.Event(), threading.Event()
        listener = threading.Thread(target=_listen, args=(bus, [execution_channel(ex.id)], got, ready, stop))
        listener.start()
        ready.wait(5)
        try:

            def publish_again():  # type: ignore[no-untyped-def]
                svc.progress_tracker.update_progress(ex.id, ExecutionProgressUpdate(percentage=20 + len(got)))
                return got

            wait_for(publish_again, timeout=10, interval=0.3, what="events after Redis came back")
        finally:
            stop.set()
            listener.join()
        assert got[0][1]["type"] == "agent.execution.progress"
    finally:
        own.cleanup()


def test_progress_refuses_bad_percentages_and_states_and_merges_context(service, agent, session_factory):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    [eid] = _insert(session_factory, agent, S.QUEUED)
    with pytest.raises(InvalidExecutionStateError) as info:
        service.progress_tracker.update_progress(eid, ExecutionProgressUpdate(percentage=1))
    assert info.value.current_state == "QUEUED"
    service.state_manager.change_state(eid, S.RUNNING)
    for bad in (-1, 100.5, 1000):
        with pytest.raises(ValidationError):
            ExecutionProgressUpdate(percentage=bad)
    service.progress_tracker.update_progress(
        eid, ExecutionProgressUpdate(percentage=30, message="a", context_update={"a": 1})
    )
    row = service.progress_tracker.update_progress(
        eid, ExecutionProgressUpdate(percentage=30, message="b", context_update={"b": 2})
    )
    assert row.context == {"a": 1, "b": 2} and row.progress_message == "b"
    with pytest.raises(InvalidProgressError):
        service.progress_tracker.update_progress(eid, ExecutionProgressUpdate(percentage=29))
    with pytest.raises(ExecutionNotFoundError):
        service.progress_tracker.update_progress(uuid.uuid4(), ExecutionProgressUpdate(percentage=1))
    service.state_manager.change_state(eid, S.PAUSING)
    with pytest.raises(InvalidExecutionStateError) as info:
        service.progress_tracker.update_progress(eid, ExecutionProgressUpdate(percentage=90))
    assert info.value.current_state == "PAUSING"
    assert set(TRANSITIONS)  # the table module is the one the manager validates with
