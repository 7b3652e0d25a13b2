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


def _sign_in(driver: Any, server: Server, key: str) -> None:
    driver.get(f"{server.url}/console/executions")
    WebDriverWait(driver, 20).until(ec.url_contains("/console/sign-in"))
    driver.find_element(By.ID, "api_key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(driver, 20).until(ec.url_contains("/console/executions"))


def test_an_operator_watches_a_pipeline_finish_and_cancels_another(console_server, key, browser):  # type: ignore[no-untyped-def]
    api = _api(console_server, key)
    agent = api.post("/v1/agents", json={"name": f"browser-{uuid.uuid4().hex[:6]}"}).json()
    wait = WebDriverWait(browser, 20)

    _sign_in(browser, console_server, key)

    running = _run(api, agent["id"], steps=5, latency_ms=1200)
    browser.get(f"{console_server.url}/console/executions")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"a[href='/console/executions/{running}']")))
    _shoot(browser, "executions")
    browser.find_element(By.CSS_SELECTOR, f"a[href='/console/executions/{running}']").click()
    wait.until(ec.presence_of_element_located((By.ID, "progress")))
    browser.execute_script("window.__sameDocument = true;")  # gone if the page reloads
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "progress").get_attribute("value") not in ("0", "100")
    )
    _text_is(browser, "state", "COMPLETED", 60)
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "progress").get_attribute("value") == "100"
    )
    assert browser.execute_script("return window.__sameDocument === true;"), "the page reloaded"
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
