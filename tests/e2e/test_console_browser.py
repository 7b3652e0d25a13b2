"""The operator console in a real browser: Debian's chromium driven by selenium through the
system chromedriver (no browser download), against gunicorn and a real Celery worker.

Signs in, watches a running pipeline reach 100% and COMPLETED without a reload, cancels a
running one with its button, and saves screenshots at 1280 and 390 px under var/screenshots/.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.harness import pipeline
from tests.integration.conftest import ROOT, Server, start_gunicorn
from tests.processes import stop_process

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = ROOT / "var" / "screenshots"
AXE = ROOT / "var" / "cache" / "axe-core" / "axe.min.js"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


@pytest.fixture(scope="module")
def console_server(settings, celery_worker, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """gunicorn as the Procfile starts it, with authentication on (the console signs in with a key)."""
    log = tmp_path_factory.mktemp("console") / "gunicorn.log"
    server = start_gunicorn(log, AUTH_ENABLED="true", RATE_LIMIT="0")
    try:
        yield server
    finally:
        stop_process(server.process)


@pytest.fixture
def key(service) -> str:  # type: ignore[no-untyped-def]
    plaintext, _ = service.keys.create("console-e2e", "browser")
    return str(plaintext)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are missing: run scripts/services.sh as root")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_window_size(*WIDTHS["desktop"])
    try:
        yield driver
    finally:
        driver.quit()


def _api(server: Server, key: str) -> httpx.Client:
    return server.client(headers={"Authorization": f"Bearer {key}"})


def _run(api: httpx.Client, agent_id: str, steps: int, latency_ms: int) -> str:
    resp = api.post("/v1/executions", json={"agent_id": agent_id, "parameters": pipeline(steps, latency_ms)})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _shoot(driver: Any, name: str) -> list[Path]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, size in WIDTHS.items():
        driver.set_window_size(*size)
        path = SHOTS / f"{name}-{label}.png"
        driver.save_screenshot(str(path))
        paths.append(path)
        # It reads at this width: nothing makes the page itself scroll sideways (a wide table
        # scrolls inside its own box).
        wide = driver.execute_script(
            "const r = document.documentElement; return r.scrollWidth - r.clientWidth;"
        )
        assert wide <= 0, f"{path.name}: the page is {wide} px wider than the {size[0]} px window"
        print(f"screenshot {path}")
    driver.set_window_size(*WIDTHS["desktop"])
    return paths


def _text_is(driver: Any, element_id: str, text: str, timeout: float) -> None:
    """Wait for `text` in the element; on a timeout, say what the page showed instead."""
    try:
        WebDriverWait(driver, timeout).until(ec.text_to_be_present_in_element((By.ID, element_id), text))
    except TimeoutException:
        shown = {i: driver.find_element(By.ID, i).text for i in (element_id, "live", "why", "events")}
        raise AssertionError(f"{text!r} not shown within {timeout} s: {shown}") from None


def _count(driver: Any, state: str) -> int:
    return int(driver.find_element(By.CSS_SELECTOR, f".count[data-state='{state}']").text)


def _output(driver: Any) -> dict[str, str]:
    """The output the execution page shows, by step."""
    return dict(
        driver.execute_script(
            "return Array.from(document.querySelectorAll('#output .output-step'))"
            ".map(b => [b.dataset.step, b.querySelector('pre').textContent]);"
        )
    )


def _sign_in(driver: Any, server: Server, key: str) -> None:
    driver.get(f"{server.url}/console/executions")
    WebDriverWait(driver, 20).until(ec.url_contains("/console/sign-in"))
    driver.find_element(By.ID, "api_key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    # The sign-in page's own URL holds `next=/console/executions`: wait for the list itself,
    # or the next driver.get races the sign-in's redirect (which then wins: a flaky test).
    WebDriverWait(driver, 20).until(lambda d: urlsplit(d.current_url).path == "/console/executions")


def test_an_operator_watches_a_pipeline_finish_and_cancels_another(console_server, key, browser):  # type: ignore[no-untyped-def]
    api = _api(console_server, key)
    agent = api.post("/v1/agents", json={"name": f"browser-{uuid.uuid4().hex[:6]}"}).json()
    wait = WebDriverWait(browser, 20)

    _sign_in(browser, console_server, key)

    # The counts at the top follow the store without a reload.
    browser.get(f"{console_server.url}/console/executions")
    browser.execute_script("window.__sameDocument = true;")  # gone if the page reloads
    completed = _count(browser, "COMPLETED")
    quick = _run(api, agent["id"], steps=1, latency_ms=10)
    WebDriverWait(browser, 20).until(lambda d: _count(d, "COMPLETED") == completed + 1)
    assert browser.execute_script("return window.__sameDocument === true;"), "the page reloaded"
    assert api.get(f"/v1/executions/{quick}").json()["state"] == "COMPLETED"

    running = _run(api, agent["id"], steps=5, latency_ms=1200)
    browser.get(f"{console_server.url}/console/executions")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"a[href='/console/executions/{running}']")))
    _shoot(browser, "executions")
    browser.find_element(By.CSS_SELECTOR, f"a[href='/console/executions/{running}']").click()
    wait.until(ec.presence_of_element_located((By.ID, "progress")))
    browser.execute_script("window.__sameDocument = true;")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "progress").get_attribute("value") not in ("0", "100")
    )
    # The output streams in while it runs: a step's text grows piece by piece before it ends.
    first = WebDriverWait(browser, 30).until(lambda d: _output(d).get("s3"))
    WebDriverWait(browser, 30).until(lambda d: len(_output(d).get("s3", "")) > len(first))
    _text_is(browser, "state", "COMPLETED", 60)
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "progress").get_attribute("value") == "100"
    )
    assert browser.execute_script("return window.__sameDocument === true;"), "the page reloaded"
    stored = api.get(f"/v1/executions/{running}").json()["context"]["steps"]
    assert _output(browser) == {name: step["output"] for name, step in stored.items()}
    _shoot(browser, "execution-completed")

    doomed = _run(api, agent["id"], steps=10, latency_ms=3000)
    browser.get(f"{console_server.url}/console/executions/{doomed}")
    _text_is(browser, "state", "RUNNING", 60)
    browser.execute_script("window.__sameDocument = true;")
    wait.until(ec.element_to_be_clickable((By.ID, "action-cancel"))).click()
    wait.until(ec.alert_is_present()).accept()
    _text_is(browser, "state", "CANCELLED", 30)
    assert browser.execute_script("return window.__sameDocument === true;"), "the page reloaded"
    assert api.get(f"/v1/executions/{doomed}").json()["state"] == "CANCELLED"
    _shoot(browser, "execution-cancelled")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not [e for e in errors if "Content Security Policy" in e["message"]], errors


def _axe_source() -> str:
    """axe-core's axe.min.js from the npm registry (`npm pack`), cached under var/cache/."""
    if not AXE.exists():
        if not shutil.which("npm"):
            pytest.fail(
                "npm is missing: the accessibility check needs axe-core (scripts/services.sh installs npm)"
            )
        AXE.parent.mkdir(parents=True, exist_ok=True)
        packed = subprocess.run(
            ["npm", "pack", "axe-core@4", "--silent", "--pack-destination", str(AXE.parent)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if packed.returncode != 0:
            pytest.fail(f"npm pack axe-core failed: {packed.stderr[-300:]}")
        with tarfile.open(AXE.parent / packed.stdout.strip().splitlines()[-1]) as archive:
            member = archive.extractfile("package/axe.min.js")
            assert member is not None
            AXE.write_bytes(member.read())
    return AXE.read_text()


def test_every_console_page_has_no_serious_accessibility_violation(console_server, key, browser):  # type: ignore[no-untyped-def]
    axe = _axe_source()
    api = _api(console_server, key)
    agent = api.post("/v1/agents", json={"name": f"axe-{uuid.uuid4().hex[:6]}"}).json()
    execution = _run(api, agent["id"], steps=2, latency_ms=10)
    browser.get(f"{console_server.url}/console/sign-in")
    pages = ["/console/sign-in"]
    _sign_in(browser, console_server, key)
    pages += [
        "/console/executions",
        f"/console/executions/{execution}",
        "/console/agents",
        f"/console/agents/{agent['id']}",
    ]
    found: dict[str, list[str]] = {}
    for page in pages:
        if page == "/console/sign-in":
            continue  # checked below, signed out
        browser.get(console_server.url + page)
        found[page] = _serious(browser, axe)
    browser.delete_all_cookies()
    browser.get(console_server.url + "/console/sign-in")
    found["/console/sign-in"] = _serious(browser, axe)
    assert not any(found.values()), found


def _serious(driver: Any, axe: str) -> list[str]:
    """The serious and critical axe-core violations of the current page (WCAG 2 A and AA)."""
    driver.execute_script(axe)
    driver.set_script_timeout(30)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21aa', 'best-practice']})"
        ".then(r => done(r.violations.map(v => [v.id, v.impact, v.nodes.length])))"
        ".catch(e => done([['axe-error', 'critical', String(e)]]));"
    )
    print(f"axe {driver.current_url}: {result or 'no violations'}")
    return [
        f"{rule} ({impact}, {nodes} nodes)"
        for rule, impact, nodes in result
        if impact in ("serious", "critical")
    ]


LOOKUP = {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}


def test_an_operator_answers_an_agents_tool_call_from_its_page(console_server, key, browser):  # type: ignore[no-untyped-def]
    api = _api(console_server, key)
    agent = api.post("/v1/agents", json={"name": f"tooly-{uuid.uuid4().hex[:6]}", "tools": [LOOKUP]}).json()
    made = api.post(
        "/v1/executions",
        json={
            "agent_id": agent["id"],
            "parameters": {
                "type": "agent",
                "input": "what is x?",
                "simulate": {
                    "latency_ms": 300,
                    "tool_calls": [[{"name": "lookup", "arguments": {"q": "x"}}]],
                },
            },
        },
    )
    assert made.status_code == 201, made.text
    execution = made.json()["id"]
    _sign_in(browser, console_server, key)
    browser.get(f"{console_server.url}/console/executions/{execution}")
    browser.execute_script("window.__sameDocument = true;")
    try:
        field = WebDriverWait(browser, 30).until(ec.visibility_of_element_located((By.ID, "output-call_1_0")))
    except TimeoutException:
        row = api.get(f"/v1/executions/{execution}").json()
        page = browser.find_element(By.TAG_NAME, "body").text[:300]
        raise AssertionError(
            f"no tool-output field: API says {row['state']}; the page {browser.current_url} shows {page!r}"
        ) from None
    _text_is(browser, "state", "REQUIRES_ACTION", 10)
    assert "lookup" in browser.find_element(By.ID, "tool-calls").text
    found = _serious(browser, _axe_source())
    _shoot(browser, "execution-requires-action")
    assert not found, found
    field.send_keys("typed in the browser")
    browser.find_element(By.ID, "submit-outputs").click()
    alert = WebDriverWait(browser, 10).until(ec.alert_is_present())
    assert "1 tool call" in alert.text
    alert.accept()
    _text_is(browser, "state", "COMPLETED", 30)
    assert not browser.find_element(By.ID, "required-action").is_displayed()
    assert browser.execute_script("return window.__sameDocument === true;"), "the page reloaded"
    result = api.get(f"/v1/executions/{execution}").json()["result"]["output"]
    assert "lookup=typed in the browser" in result
    WebDriverWait(browser, 10).until(lambda d: "lookup=typed in the browser" in "".join(_output(d).values()))
