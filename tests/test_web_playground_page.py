"""The playground in headless Chromium: break a template and see the error at its line, fix and
save it, the rendered messages show the change, and a run on two models side by side."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.browser import keep, screenshot, wait
from tests.conftest import free_port
from tests.web_server import WebServer, serving, web_env

SLOW = "echo:?chunks=5&delay=0.3"
BREAK = " {% if %}"  # a syntax error Jinja reports on this very line
FIX = " Always check twice."


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    with serving(web_env(tmp_path, FMBOT_WEB_MODELS=SLOW), tmp_path) as server:
        yield server


def rendered(browser: webdriver.Chrome) -> list[str]:
    return [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#rendered .rendered pre")]


def to_end_of(box: WebElement, line: int) -> None:
    """The caret to the end of ``line`` (1-based), with the keys an author would press."""
    box.click()
    box.send_keys(Keys.CONTROL, Keys.HOME)
    box.send_keys(*[Keys.DOWN] * (line - 1), Keys.END)


def test_break_fix_save_render_and_run(
    web: WebServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    path = tmp_path / "prompts" / "translator.yaml"
    original = path.read_text(encoding="utf-8")
    browser.get(f"{web.url}/playground?template=translator")
    box = browser.find_element(By.ID, "source")
    wait(browser).until(lambda d: box.get_attribute("value") == original)
    wait(browser).until(rendered)
    assert not any("Always check twice." in text for text in rendered(browser))

    # Type into the first line of the instruction, as an author would.
    line = original.splitlines().index("instruction: |") + 2
    to_end_of(box, line)
    box.send_keys(BREAK)
    error = wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#errors li"))[0]
    assert error.get_attribute("data-line") == str(line)
    assert error.text.startswith(f"line {line}, column ") and "syntax error" in error.text
    marked = browser.find_elements(By.CSS_SELECTOR, "#gutter .bad")
    assert [m.text for m in marked] == [str(line)]
    wait(browser).until(lambda d: "Fix the problems" in d.find_element(By.ID, "rendered").text)
    keep(
        screenshot(browser, tmp_path / "web-playground-error.png"),
        os.environ.get("FMBOT_SCREENSHOTS"),
    )
    browser.find_element(By.ID, "save").click()
    wait(browser).until(lambda d: "Not saved" in d.find_element(By.ID, "save-status").text)
    assert path.read_text(encoding="utf-8") == original  # untouched

    to_end_of(box, line)  # the caret left the box with the click on Save
    box.send_keys(*[Keys.BACKSPACE] * len(BREAK), FIX)
    wait(browser).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#errors li"))
    assert browser.find_elements(By.CSS_SELECTOR, "#gutter .bad") == []
    wait(browser).until(lambda d: any(FIX.strip() in text for text in rendered(d)))
    browser.find_element(By.ID, "save").click()
    wait(browser).until(
        lambda d: d.find_element(By.ID, "save-status").text == "Saved translator.yaml."
    )
    saved = path.read_text(encoding="utf-8")
    assert saved.splitlines()[line - 1] == original.splitlines()[line - 1] + FIX
    # Saved, the template itself renders the change (no draft sent).
    body = {"template": "translator", "message": "bonjour"}
    messages = httpx.post(f"{web.url}/api/render", json=body, timeout=10).json()["messages"]
    assert FIX.strip() in messages[0]["text"]

    Select(browser.find_element(By.ID, "model-b")).select_by_value(SLOW)
    browser.find_element(By.ID, "run").click()
    for column in ("run-a", "run-b"):
        wait(browser).until(
            lambda d, c=column: (
                ": complete," in d.find_element(By.CSS_SELECTOR, f"#{c} .stats").text
            )
        )
    task = rendered(browser)[-1]
    outputs = [o.text for o in browser.find_elements(By.CSS_SELECTOR, ".run .output")]
    assert outputs == [f"echo: {task}"] * 2
    stats = [s.text for s in browser.find_elements(By.CSS_SELECTOR, ".run .stats")]
    assert stats[0].startswith("echo:?chunks=4: complete, ") and " out tokens, " in stats[0]
    assert stats[1].startswith(f"{SLOW}: complete, ") and "first token" in stats[1]
    browser.execute_script("arguments[0].scrollLeft = 0", box)  # the picture shows line starts
    keep(screenshot(browser, tmp_path / "web-playground.png"), os.environ.get("FMBOT_SCREENSHOTS"))


def test_failures_are_said_where_their_result_would_be(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    """A run whose model cannot be reached says why beside its stats (the final event used to
    overwrite the notice), and a save the server refuses (a source over 1 MB: 413) says so
    instead of doing nothing."""
    port = free_port()  # nothing listens there: the model's server is down
    env = web_env(
        tmp_path,
        FMBOT_WEB_MODELS="openai:gpt-test",
        OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
        OPENAI_API_KEY="sk-test",
    )
    with serving(env, tmp_path) as web:
        browser.get(f"{web.url}/playground?template=translator")
        path = tmp_path / "prompts" / "translator.yaml"
        original = path.read_text(encoding="utf-8")
        box = browser.find_element(By.ID, "source")
        wait(browser).until(lambda d: box.get_attribute("value") == original)
        wait(browser).until(rendered)

        Select(browser.find_element(By.ID, "model-a")).select_by_value("openai:gpt-test")
        browser.find_element(By.ID, "run").click()
        stats = browser.find_element(By.CSS_SELECTOR, "#run-a .stats")
        wait(browser, 60).until(lambda d: ": error, " in stats.text)
        status, why = stats.text.split(" — ", 1)  # the final event's figures, then the notice
        assert status.startswith("openai:gpt-test: error, tokens not reported, ")
        assert why.startswith("Could not reach the OpenAI-compatible server at 127.0.0.1:"), why

        big = original + "# " + "x" * 1_100_000 + "\n"
        browser.execute_script("arguments[0].value = arguments[1]", box, big)
        browser.find_element(By.ID, "save").click()
        saved = browser.find_element(By.ID, "save-status")
        wait(browser).until(lambda d: saved.text.startswith("Not saved: "))
        assert path.read_text(encoding="utf-8") == original
