"""The playground's Evaluate view: a suite run for the template being edited with the unsaved
draft beside the saved version (the API, then headless Chromium): failures first, each cell
opening to its messages, reply and reasons; saving a worse draft asks first."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions

from tests.browser import console_errors, keep, screenshot, wait
from tests.fakes import FakeOpenAI
from tests.fakes.base import Recorded
from tests.web_server import WebServer, openai_env, serving, web_env

SUITE = """\
description: the translator keeps its task line
templates: [translator]
models: ["echo:"]
threshold: 1
cases:
  - message: Bonjour
    assert: [{type: contains, value: "Text to translate:"}]
  - message: Merci beaucoup
    assert: [{type: icontains, value: merci}]
"""
OTHER = 'templates: [default]\nmodels: ["echo:"]\ncases: [{message: hi}]\n'


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "translator.yaml").write_text(SUITE, encoding="utf-8")
    (suites / "other.yaml").write_text(OTHER, encoding="utf-8")
    with serving(web_env(tmp_path, FMBOT_WEB_SUITES=str(suites)), tmp_path) as server:
        yield server


def draft_of(tmp_path: Path) -> str:
    saved = (tmp_path / "prompts" / "translator.yaml").read_text(encoding="utf-8")
    assert "Text to translate:" in saved
    return saved.replace("Text to translate:", "Translate this:")


def test_the_api_runs_the_draft_beside_the_saved_version(web: WebServer, tmp_path: Path) -> None:
    listed = httpx.get(f"{web.url}/api/evals", params={"template": "translator"}, timeout=10)
    assert listed.status_code == 200
    [suite] = listed.json()["suites"]
    assert suite["name"] == "translator.yaml" and suite["cases"] == 2
    assert suite["problems"] == []

    body = {"suite": "translator.yaml", "template": "translator", "source": draft_of(tmp_path)}
    ran = httpx.post(f"{web.url}/api/evals/run", json=body, timeout=60)
    assert ran.status_code == 200, ran.text
    result = ran.json()
    assert result["pass_rates"] == {"saved": 1.0, "draft": 0.5}
    assert [(m["version"], m["passed"], m["cells"]) for m in result["matrix"]] == [
        ("saved", 2, 2),
        ("draft", 1, 2),
    ]
    first = result["cells"][0]  # failures first
    assert (first["version"], first["case"], first["pass"]) == ("draft", 0, False)
    assert first["failures"] == ["contains \"Text to translate:\": 'Text to translate:' not found"]
    assert first["messages"][-1] == {"role": "user", "text": "Translate this:\nBonjour"}
    assert first["reply"] == "echo: Translate this:\nBonjour"
    assert first["retrieved"] is None  # no knowledge: nothing retrieved (as the CLI's column)
    assert all(c["pass"] for c in result["cells"][1:])

    # Unchanged source: only the saved version runs. Bad requests say what to send.
    same = body | {"source": (tmp_path / "prompts" / "translator.yaml").read_text()}
    alone = httpx.post(f"{web.url}/api/evals/run", json=same, timeout=60).json()
    assert alone["pass_rates"] == {"saved": 1.0}
    wrong = httpx.post(f"{web.url}/api/evals/run", json=body | {"suite": "other.yaml"}, timeout=10)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "suite 'other.yaml' does not run template 'translator'"
    sneaky = httpx.post(f"{web.url}/api/evals/run", json=body | {"suite": "../x.yaml"}, timeout=10)
    assert sneaky.status_code == 400
    broken = body | {"source": "name: translator\ninstruction: '{{ oops'\n"}
    refused = httpx.post(f"{web.url}/api/evals/run", json=broken, timeout=10)
    assert refused.status_code == 422 and refused.json()["errors"][0]["line"] == 2


def test_evaluate_a_draft_open_a_failed_cell_and_be_warned_on_save(
    web: WebServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    path = tmp_path / "prompts" / "translator.yaml"
    saved, draft = path.read_text(encoding="utf-8"), draft_of(tmp_path)
    browser.get(f"{web.url}/playground?template=translator")
    box = browser.find_element(By.ID, "source")
    wait(browser).until(lambda d: box.get_attribute("value") == saved)
    wait(browser).until(lambda d: d.find_element(By.ID, "suite").text.startswith("translator"))
    browser.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))",
        box,
        draft,
    )
    browser.find_element(By.ID, "evaluate").click()
    status = browser.find_element(By.ID, "eval-status")
    wait(browser).until(lambda d: status.text == "Pass rate: saved 100%, draft 50%.")
    rows = browser.find_elements(By.CSS_SELECTOR, "#eval-matrix tr")
    assert [r.text for r in rows[1:]] == ["saved echo: 100% 2/2 1.00", "draft echo: 50% 1/2 0.50"]
    assert rows[2].get_attribute("class") == "below"  # under the suite's threshold

    cells = browser.find_elements(By.CSS_SELECTOR, "#eval-cells details")
    assert len(cells) == 4
    first = cells[0]
    assert first.text.startswith("✗ case 0 (Bonjour) · draft · echo: — contains")
    first.find_element(By.TAG_NAME, "summary").click()
    detail = first.find_element(By.CLASS_NAME, "detail")
    wait(browser).until(lambda d: detail.is_displayed())
    assert "Translate this:\nBonjour" in detail.text  # the rendered user message
    assert "echo: Translate this:" in first.find_element(By.CSS_SELECTOR, "pre.reply").text
    reason = first.find_element(By.CSS_SELECTOR, "li.fail").text
    assert reason == "✗ contains \"Text to translate:\": 'Text to translate:' not found"
    assert all(c.text.startswith("✓") for c in cells[1:])
    evaluate_heading = "arguments[0].parentElement.previousElementSibling.scrollIntoView()"
    browser.execute_script(evaluate_heading, browser.find_element(By.ID, "suite"))
    picture = screenshot(browser, tmp_path / "web-playground-evaluate.png")
    keep(picture, os.environ.get("FMBOT_SCREENSHOTS"))

    # Saving the worse draft asks first; declining keeps the file.
    browser.find_element(By.ID, "save").click()
    alert = wait(browser).until(expected_conditions.alert_is_present())
    assert alert.text == (
        "This draft passes 50% of suite translator.yaml, the saved version 100%. Save it anyway?"
    )
    alert.dismiss()
    save_status = browser.find_element(By.ID, "save-status")
    wait(browser).until(lambda d: save_status.text.startswith("Not saved: the draft passes"))
    assert path.read_text(encoding="utf-8") == saved
    browser.find_element(By.ID, "save").click()
    wait(browser).until(expected_conditions.alert_is_present()).accept()
    wait(browser).until(lambda d: save_status.text == "Saved translator.yaml.")
    assert path.read_text(encoding="utf-8") == draft
    # No script failed and the Content Security Policy blocked nothing (no favicon is served).
    assert [e for e in console_errors(browser) if "favicon.ico" not in e] == []


# A slow suite on the fake OpenAI server: each reply streams 30-odd words 0.3 s apart.
SLOW_CASES = 12
SLOW = 'templates: [translator]\nmodels: ["openai:gpt-test"]\ncases:\n' + "".join(
    f"  - message: slow {i} {' '.join(f'w{j}' for j in range(30))}\n" for i in range(SLOW_CASES)
)
QUICK = (
    'templates: [translator]\nmodels: ["openai:gpt-test"]\n'
    "cases: [{message: quick, assert: [{type: icontains, value: quick}]}]\n"
)
BUSY = (
    "an evaluation is already running (this page's or another's); wait for it to finish, "
    "or close or reload the page that started it, which stops it"
)
STOPPED = "evaluation of slow.yaml stopped: its client went away"
WITHIN = 30.0  # s for any one thing the test waits for


def slow_sent(openai: FakeOpenAI) -> int:
    return sum(is_slow(r) for r in openai.requests_to("/chat/completions"))


def is_slow(request: Recorded) -> bool:
    return "slow " in json.dumps(request.body)


async def logged(web: WebServer, line: str, times: int) -> None:
    """Until the server's log holds ``line`` ``times`` times."""
    async with asyncio.timeout(WITHIN):
        while web.output().count(line) < times:  # noqa: ASYNC110 (a file, not an event)
            await asyncio.sleep(0.05)


async def test_a_closed_page_stops_its_evaluation_and_a_second_one_is_refused(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    suites, scratch = tmp_path / "suites", tmp_path / "scratch"
    suites.mkdir()
    scratch.mkdir()
    (suites / "slow.yaml").write_text(SLOW, encoding="utf-8")
    (suites / "quick.yaml").write_text(QUICK, encoding="utf-8")
    run = "/api/evals/run"
    slow = {"suite": "slow.yaml", "template": "translator"}
    quick = {"suite": "quick.yaml", "template": "translator"}
    async with FakeOpenAI(stream_delay=0.3) as openai:
        env = openai_env(
            tmp_path,
            openai,
            FMBOT_WEB_SUITES=str(suites),
            FMBOT_LOG_LEVEL="INFO",
            TMPDIR=str(scratch),  # where the evaluation's scratch directory goes
        )
        with serving(env, tmp_path) as web:

            async def page() -> None:
                """A page evaluating the slow suite, closed by cancelling this."""
                async with httpx.AsyncClient(base_url=web.url, timeout=WITHIN) as own:
                    await own.post(run, json=slow)

            async def close_once_sending(page: asyncio.Task[None], since: float) -> None:
                await openai.wait_for_request(lambda r: is_slow(r) and r.at > since, WITHIN)
                page.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await page

            async with httpx.AsyncClient(base_url=web.url, timeout=WITHIN) as client:
                # The page is closed with the slow suite's first replies under way: fmbot
                # closes their streams and sends no other case; the lock is free at once.
                await close_once_sending(asyncio.create_task(page()), 0.0)
                async with asyncio.timeout(WITHIN):
                    await openai.disconnected.wait()
                await logged(web, STOPPED, 1)  # written once the run has ended
                sent = slow_sent(openai)
                assert 0 < sent < SLOW_CASES
                ran = await client.post(run, json=quick)
                assert ran.status_code == 200, ran.text
                assert ran.json()["pass_rates"] == {"saved": 1.0}
                assert slow_sent(openai) == sent

                # While one runs, another is refused with what to do, in the API and the page.
                since = time.monotonic()
                running = asyncio.create_task(page())
                await openai.wait_for_request(lambda r: is_slow(r) and r.at > since, WITHIN)
                busy = await client.post(run, json=quick)
                assert busy.status_code == 409 and busy.json() == {"error": BUSY}
                browser.get(f"{web.url}/playground?template=translator")
                wait(browser).until(lambda d: "quick.yaml" in d.find_element(By.ID, "suite").text)
                browser.find_element(By.ID, "evaluate").click()
                status = browser.find_element(By.ID, "eval-status")
                wait(browser).until(lambda d: status.text == BUSY)
                assert browser.find_element(By.ID, "evaluate").is_enabled()
                await close_once_sending(running, since)
                await logged(web, STOPPED, 2)
                again = await client.post(run, json=quick)  # from the cache: no request
                assert again.status_code == 200 and again.json()["pass_rates"] == {"saved": 1.0}
            output = web.output()
    assert slow_sent(openai) < 2 * SLOW_CASES
    assert "Exception in ASGI application" not in output, output
    assert "Traceback" not in output, output
    # Nothing half-written: cache entries are whole replies, no temporary file is left, and the
    # stopped runs' scratch directories are gone.
    cache = tmp_path / "home" / "cache" / "eval"
    entries = [p for p in cache.rglob("*") if p.is_file()]
    replies = [json.loads(p.read_text(encoding="utf-8"))["reply"] for p in entries]
    assert all(p.suffix == ".json" and not p.name.startswith(".") for p in entries), entries
    assert any("quick" in r for r in replies), replies
    assert all(r.endswith("w29") for r in replies if "slow " in r), replies
    assert list(scratch.iterdir()) == []
