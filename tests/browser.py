"""Headless Chromium for the page tests: Debian's ``chromium`` and ``chromium-driver`` (installed
by .ci/run), driven by Selenium pointed at both binaries, so Selenium Manager never runs and
nothing downloads a browser. Also the fake OpenAI server on a loop of its own, since Selenium's
calls block the test's thread."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from tests.fakes import FakeOpenAI

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 20.0  # s for anything a page should show, on a busy 2-core machine
PAGE_LOAD = 30.0  # s


def chromium() -> webdriver.Chrome:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            "The browser tests need Debian's chromium and chromium-driver: "
            "apt-get install chromium chromium-driver (.ci/run does)."
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for console_errors()
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_LOAD)
    driver.set_script_timeout(WAIT)
    return driver


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The page's console errors since the last call: a script that failed, or anything the
    Content Security Policy blocked (an inline script or style would be)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver: webdriver.Chrome, seconds: float = WAIT) -> WebDriverWait[webdriver.Chrome]:
    """Polls until a condition holds. The pages replace elements as they refresh (the mode
    list, the messages), so an element found a moment ago may be gone: look again."""
    return WebDriverWait(
        driver, seconds, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    )


def screenshot(driver: webdriver.Chrome, path: Path) -> Path:
    """A test artefact; kept in the test's tmp folder (pytest keeps the last runs')."""
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


def keep(path: Path, folder: str | None) -> None:
    """Copy an artefact to ``folder`` when given (FMBOT_SCREENSHOTS, for the README's)."""
    if folder:
        shutil.copy(path, Path(folder) / path.name)


@contextlib.contextmanager
def threaded_fake_openai(**fields: Any) -> Iterator[FakeOpenAI]:
    """A FakeOpenAI serving from its own thread and loop, stopped when the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
    thread.start()

    async def started() -> FakeOpenAI:
        fake = FakeOpenAI(**fields)
        await fake.start()
        return fake

    fake = asyncio.run_coroutine_threadsafe(started(), loop).result(WAIT)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()
