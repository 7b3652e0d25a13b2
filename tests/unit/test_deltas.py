"""Output deltas as pure logic: coalescing, ids and their order, the simulated stream, `reset`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app import events
from app.commands import ModelRequest, SimulatedProvider, split_text
from app.deltas import Appended, Coalescer, Cursor
from app.execution.event_emitter import OUTPUT_DELTA_FIELDS, output_delta_message
from app.execution.output import OutputStream
from app.models import Execution


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_chunk_goes_at_once_then_at_most_one_delta_per_interval():
    clock, sent = Clock(), []
    c = Coalescer(sent.append, clock=clock)
    c.write("a")
    clock.now += 0.01
    c.write("b")
    clock.now += 0.01
    c.write("c")
    assert sent == ["a"]
    clock.now += 0.05
    c.write("d")
    assert sent == ["a", "bcd"]


def test_sixty_four_piled_up_characters_go_without_waiting_for_the_interval():
    clock, sent = Clock(), []
    c = Coalescer(sent.append, clock=clock)
    c.write("x")
    for _ in range(70):
        c.write("y")
    assert sent == ["x", "y" * 64]
    c.flush()
    assert sent == ["x", "y" * 64, "y" * 6]
    c.flush()
    assert len(sent) == 3  # nothing left: no empty delta


def test_a_flood_of_one_character_tokens_becomes_few_deltas_that_join_to_the_text():
    clock, sent = Clock(), []
    c = Coalescer(sent.append, clock=clock)
    text = "".join(chr(97 + i % 26) for i in range(5000))
    for ch in text:
        clock.now += 0.0001  # 10,000 tokens a second
        c.write(ch)
    c.flush()
    assert "".join(sent) == text
    assert len(sent) <= 5000 / 64 + 2


@pytest.mark.parametrize(
    ("text", "cursor"),
    [("0", Cursor(0)), ("42", Cursor(42, -1)), ("42.0", Cursor(42, 0)), ("42.17", Cursor(42, 17))],
)
def test_an_event_id_parses_to_its_cursor_and_back(text: str, cursor: Cursor):
    assert Cursor.parse(text) == cursor
    assert str(cursor) == text


@pytest.mark.parametrize("text", ["", "x", "-1", "1.", ".1", "1.2.3", "1e3", "1" * 20])
def test_anything_else_is_not_an_event_id(text: str):
    assert Cursor.parse(text) is None


def test_a_logged_event_sorts_before_its_deltas_and_they_before_the_next_event():
    order = [Cursor(7), Cursor(7, 0), Cursor(7, 1), Cursor(7, 12), Cursor(8), Cursor(8, 0), Cursor(10)]
    assert sorted(reversed(order)) == order
    assert Cursor(7).stream_start == "7-0" and Cursor(7, 3).stream_start == "(7-3"


@pytest.mark.parametrize("pieces", [1, 3, 10, 1000])
def test_split_text_keeps_every_character_in_order(pieces: int):
    text = "The quick brown fox jumps over the lazy dog."
    parts = split_text(text, pieces)
    assert len(parts) == pieces and "".join(parts) == text


def test_the_simulated_provider_streams_its_output_in_chunks_and_alone_is_unchanged():
    streamed: list[str] = []
    provider = SimulatedProvider()
    request = ModelRequest(prompt="tell me a story", simulate={"chunks": 4}, on_delta=streamed.append)
    result = provider.generate(request)
    assert len(streamed) == 4 and "".join(streamed) == result["output"]
    assert provider.generate(ModelRequest(prompt="tell me a story", simulate={"chunks": 4})) == result


class FakeLog:
    def __init__(self) -> None:
        self.appended: list[tuple[Any, int, int, dict[str, Any]]] = []
        self.kept: list[Any] = []
        self.fail = False

    def append(
        self, execution_id: Any, attempt: int, floor: int, message: dict[str, Any], after: Any = None
    ) -> Appended | None:
        if self.fail:
            return None
        self.appended.append((execution_id, attempt, floor, message))
        return Appended(Cursor(floor, len(self.appended) - 1), len(self.appended) - 1)

    def keep(self, execution_id: Any) -> None:
        self.kept.append(execution_id)


def _execution(attempt: int) -> Execution:
    return Execution(id=uuid.uuid4(), agent_id=uuid.uuid4(), task_id=None, attempt=attempt)


def test_a_retried_attempt_marks_only_its_first_delivered_delta_with_reset():
    log = FakeLog()
    out = OutputStream(log, _execution(2), lambda known: known + 5)  # type: ignore[arg-type]
    log.fail = True
    out.call("draft").write("lost")  # Redis refused it: the next delta carries reset instead
    log.fail = False
    first = out.call("draft")
    first.write("hello ")
    first.flush()
    second = out.call("final")
    second.write("world")
    second.flush()
    payloads = [m["payload"] for *_, m in log.appended]
    assert [p["delta"] for p in payloads] == ["hello ", "world"]
    assert payloads[0]["reset"] is True and "reset" not in payloads[1]
    assert [p["step"] for p in payloads] == ["draft", "final"]
    assert [floor for _, _, floor, _ in log.appended] == [10, 15]  # the newest event, read per call
    out.close()
    assert log.kept == [out.execution.id]


def test_a_first_attempt_sends_no_reset():
    log = FakeLog()
    out = OutputStream(log, _execution(1), lambda known: known)  # type: ignore[arg-type]
    c = out.call(None)
    c.write("x")
    c.flush()
    assert "reset" not in log.appended[0][3]["payload"]


def test_the_delta_message_carries_the_contract_fields():
    message = output_delta_message(_execution(1), "s1", "abc", reset=True)
    assert message["type"] == events.OUTPUT_DELTA
    assert set(message["payload"]) | {"index"} == set(OUTPUT_DELTA_FIELDS)
    assert message["payload"]["delta"] == "abc" and message["payload"]["task_id"] is None


def test_a_call_places_its_deltas_after_the_runs_own_newest_published_event_without_a_log_read():
    from app.events import PROGRESS, EventBus

    bus = EventBus("redis://127.0.0.1:1/0")
    bus._down_until = float("inf")  # publishes are skipped (no connection in the unit tier)
    log = FakeLog()
    log.bus = bus  # type: ignore[attr-defined]
    execution = _execution(1)
    reads: list[int] = []
    out = OutputStream(log, execution, lambda known: reads.append(known) or 3)  # type: ignore[arg-type]
    out.call(None)  # nothing published by this process yet: the log is read
    assert out.floor == 3 and reads == [0]
    other = uuid.uuid4()
    bus.publish_many(
        [
            (PROGRESS, {"id": 9, "execution_id": str(execution.id)}),
            (PROGRESS, {"id": 11, "execution_id": str(other)}),
        ]
    )
    out.call("s1")
    assert out.floor == 9 and reads == [0]  # the progress event it just published, no read
    out.close()
    assert bus.newest_published(execution.id) == 0  # unwatched: nothing kept for it


def test_a_run_whose_completed_event_went_out_here_skips_the_separate_retention_refresh():
    from app.events import COMPLETED, PROGRESS, EventBus

    bus = EventBus("redis://127.0.0.1:1/0")
    bus.delta_retention_seconds = 3600
    scripted: list[list[str]] = []
    bus._script = lambda keys, args: scripted.append(keys)  # the publish script, without Redis
    ended, paused = _execution(1), _execution(1)
    for execution in (ended, paused):
        log = FakeLog()
        log.bus = bus  # type: ignore[attr-defined]
        out = OutputStream(log, execution, lambda known: known)  # type: ignore[arg-type]
        out.call(None).write("text")
        out.call(None).flush()
        bus.publish_many([(PROGRESS, {"id": 1, "execution_id": str(execution.id)})])
        if execution is ended:  # its end published by this process: the EXPIREs went with it
            bus.publish_many([(COMPLETED, {"id": 2, "execution_id": str(execution.id)})])
        out.close()
        assert log.kept == ([] if execution is ended else [execution.id])
    assert scripted[1] == [f"agentexec:deltas:{ended.id}", f"agentexec:deltas:{ended.id}:meta"]
    assert not bus.retention_restarted(ended.id)  # unwatched: nothing kept for it
