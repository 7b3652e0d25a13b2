"""The console's list filters and paging, the Flower link, a delayed execution's schedule and
the output shown when the streamed text is gone (real app, PostgreSQL, Redis and worker)."""

from __future__ import annotations

import re
from typing import Any

import redis
from sqlalchemy import text

from api.console import views
from app.deltas import stream_key
from tests.integration.conftest import wait_finished
from tests.integration.test_console import Tenant, _Bearer, section, signed_in
from tests.integration.test_console import acme as acme  # noqa: F401 - the tenant fixture
from tests.integration.test_console import console_app as console_app  # noqa: F401 - the app fixture


def _run(app: Any, key: str, body: dict[str, Any]) -> str:
    made = app.test_client().post("/v1/executions", headers={"Authorization": f"Bearer {key}"}, json=body)
    assert made.status_code == 201, made.get_data(as_text=True)
    return str(made.get_json()["id"])


def _listed(html: str) -> set[str]:
    """The execution ids the list links to."""
    return set(re.findall(r'href="/console/executions/([0-9a-f-]{36})"', html))


def test_the_list_filters_by_state_agent_error_code_and_created_time_and_pages(  # type: ignore[no-untyped-def]
    console_app,  # noqa: F811
    acme,  # noqa: F811
    session_factory,
    monkeypatch,
):
    h = {"Authorization": f"Bearer {acme.key}"}
    other = console_app.test_client().post("/v1/agents", json={"name": "acme-reader"}, headers=h).get_json()
    failed = _run(
        console_app,
        acme.key,
        {"agent_id": other["id"], "parameters": {"input": "x", "simulate": {"fail_permanently": True}}},
    )
    assert wait_finished(_Bearer(console_app, acme.key), failed)["error_code"] == "model_error_permanent"
    client = signed_in(console_app, acme.key)

    def listed(query: str) -> set[str]:
        resp = client.get(f"/console/executions?{query}")
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return _listed(resp.get_data(as_text=True))

    assert listed("") == {acme.done, acme.pending, failed}
    assert listed(f"agent_id={other['id']}") == {failed}
    assert listed(f"agent_id={acme.agent['id']}") == {acme.done, acme.pending}
    assert listed("error_code=model_error_permanent") == {failed}
    assert listed("error_code=timeout") == set()
    assert listed("state=FAILED&error_code=model_error_permanent") == {failed}
    with session_factory() as db:  # the finished one was made two days ago
        db.execute(
            text("UPDATE executions SET created_at = now() - interval '2 days' WHERE id = :id"),
            {"id": acme.done},
        )
        db.commit()
    assert listed("created_within=1440") == {acme.pending, failed}
    assert listed("created_within=") == {acme.done, acme.pending, failed}
    for bad in ("state=NOPE", "error_code=nope", "agent_id=12", "created_within=soon"):
        assert client.get(f"/console/executions?{bad}").status_code == 400, bad

    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    first = client.get("/console/executions").get_data(as_text=True)
    second = client.get("/console/executions?page=2").get_data(as_text=True)
    assert _listed(first) == {failed, acme.pending}  # newest first
    assert _listed(second) == {acme.done}
    assert "page 1 of 2" in first and 'rel="next"' in first and 'rel="prev"' in second
    filtered = client.get(f"/console/executions?agent_id={acme.agent['id']}&page=1").get_data(as_text=True)
    assert "page 1 of 1" in filtered and 'rel="next"' not in filtered


def test_the_celery_task_id_links_to_flower_when_flower_url_is_set(console_app, acme, monkeypatch):  # type: ignore[no-untyped-def]  # noqa: F811
    monkeypatch.delenv("FLOWER_URL", raising=False)
    client = signed_in(console_app, acme.key)
    task = _Bearer(console_app, acme.key).get(f"/v1/executions/{acme.done}").get_json()["celery_task_id"]
    assert task and f'href="http://flower.test:5555/task/{task}"' not in client.get(
        f"/console/executions/{acme.done}"
    ).get_data(as_text=True)
    monkeypatch.setenv("FLOWER_URL", "http://flower.test:5555/")
    page = client.get(f"/console/executions/{acme.done}").get_data(as_text=True)
    assert f'<a href="http://flower.test:5555/task/{task}">{task}</a>' in page


def test_a_delayed_execution_shows_when_it_goes_on_the_queue(console_app, acme):  # type: ignore[no-untyped-def]  # noqa: F811
    later = _run(
        console_app,
        acme.key,
        {"agent_id": acme.agent["id"], "parameters": {"input": "x"}, "delay_seconds": 3600},
    )
    row = _Bearer(console_app, acme.key).get(f"/v1/executions/{later}").get_json()
    assert row["state"] == "PENDING" and row["scheduled_at"]
    page = signed_in(console_app, acme.key).get(f"/console/executions/{later}").get_data(as_text=True)
    assert 'id="scheduled-at"' in page and row["scheduled_at"][:19] in page
    assert re.search(r"Scheduled: it goes on the queue at \d\d:\d\d:\d\d UTC \(in 59 min \d+ s\)", page), page


def test_the_output_falls_back_to_the_stored_step_outputs_once_the_streamed_text_is_gone(  # type: ignore[no-untyped-def]
    console_app,  # noqa: F811
    acme,  # noqa: F811
    settings,
):
    steps = [{"name": "draft", "prompt": "{input}"}, {"name": "polish", "prompt": "polish {steps.draft}"}]
    ran = _run(
        console_app,
        acme.key,
        {"agent_id": acme.agent["id"], "parameters": {"type": "pipeline", "input": "tides", "steps": steps}},
    )
    wait_finished(_Bearer(console_app, acme.key), ran)
    client = signed_in(console_app, acme.key)
    live = section(client.get(f"/console/executions/{ran}").get_data(as_text=True), "output-h")
    assert "As the model wrote it" in live and 'data-step="draft"' in live and 'data-step="polish"' in live
    redis.Redis.from_url(settings.redis_url).delete(stream_key(ran))  # retention passed
    stored = section(client.get(f"/console/executions/{ran}").get_data(as_text=True), "output-h")
    assert (
        "stored step outputs" in stored and 'data-step="draft"' in stored and 'data-step="polish"' in stored
    )
    assert live.split("</p>", 1)[1] == stored.split("</p>", 1)[1]  # the same text, whichever source


def test_another_tenants_pages_are_not_listed_or_counted(console_app, acme):  # type: ignore[no-untyped-def]  # noqa: F811
    other = Tenant(console_app, "globex")
    client = signed_in(console_app, acme.key)
    assert _listed(client.get("/console/executions").get_data(as_text=True)) == {acme.done, acme.pending}
    assert sum(client.get("/console/executions/counts").get_json().values()) == 2
    assert "globex-writer" not in client.get("/console/agents").get_data(as_text=True)
    assert other.done not in client.get(f"/console/agents/{acme.agent['id']}").get_data(as_text=True)


def test_an_execution_page_reads_at_most_page_items_and_streams_the_rest(console_app, acme, monkeypatch):  # type: ignore[no-untyped-def]  # noqa: F811
    """A long log does not make one page load read all of it: the page's stream goes on after
    the last item the page read."""
    client = signed_in(console_app, acme.key)
    everything = client.get(f"/console/executions/{acme.done}").get_data(as_text=True)
    ids = re.findall(r'data-last-event-id="([^"]+)"', everything)
    monkeypatch.setattr(views, "PAGE_ITEMS", 2)
    page = client.get(f"/console/executions/{acme.done}").get_data(as_text=True)
    first_two = re.findall(r'data-last-event-id="([^"]+)"', page)
    events = _Bearer(console_app, acme.key).get(f"/v1/executions/{acme.done}/events").get_json()
    assert len(events["items"] if isinstance(events, dict) else events) > 2
    assert first_two == [str(_nth_event_id(console_app, acme, 2))] and first_two != ids, (first_two, ids)


def _nth_event_id(app: Any, tenant: Any, n: int) -> str:
    got = _Bearer(app, tenant.key).get(f"/v1/executions/{tenant.done}/events").get_json()
    items = got["items"] if isinstance(got, dict) else got
    return str(items[n - 1]["id"])
