"""The pages behind FMBOT_WEB_TOKEN, in headless Chromium: log in once, the cookie does the rest;
and neither page breaks its own Content Security Policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser import console_errors, wait
from tests.web_server import WebServer, serving, web_env

TOKEN = "browser-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    tmp_path = tmp_path_factory.mktemp("web")
    with serving(web_env(tmp_path, FMBOT_WEB_TOKEN=TOKEN), tmp_path) as server:
        yield server


def test_log_in_once_then_chat(web: WebServer, browser: webdriver.Chrome) -> None:
    browser.get(f"{web.url}/#secret")
    # The fragment survives the redirect, as browsers keep it.
    wait(browser).until(lambda d: d.current_url.startswith(f"{web.url}/login"))
    field = browser.find_element(By.ID, "token")
    field.send_keys("not-the-token", Keys.ENTER)
    wait(browser).until(lambda d: "not the token" in d.find_element(By.TAG_NAME, "main").text)
    browser.find_element(By.ID, "token").send_keys(TOKEN, Keys.ENTER)
    wait(browser).until(lambda d: d.find_elements(By.ID, "message"))
    cookie = browser.get_cookie("fmbot_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    # Scripts cannot read the cookie, and the API answers the page without a token in it.
    assert "fmbot_session" not in browser.execute_script("return document.cookie")
    browser.get(f"{web.url}/#secret")
    wait(browser).until(lambda d: d.find_element(By.ID, "chat-name").text == "secret")
    browser.find_element(By.ID, "message").send_keys("behind the token", Keys.ENTER)
    wait(browser).until(
        lambda d: any(
            e.text == "echo: behind the token"
            for e in d.find_elements(By.CSS_SELECTOR, "#messages .msg.bot")
        )
    )
    assert TOKEN not in web.output()


def test_pages_keep_their_content_security_policy(
    web: WebServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(f"{web.url}/login")  # logged in by the test before, or log in now
    if browser.find_elements(By.ID, "token"):
        browser.find_element(By.ID, "token").send_keys(TOKEN, Keys.ENTER)
    console_errors(browser)  # what came before is not this test's
    for path, ready in (("/#csp", "message"), ("/playground?template=default", "source")):
        browser.get(f"{web.url}{path}")
        wait(browser).until(lambda d, r=ready: d.find_elements(By.ID, r))
        # The page's scripts ran: they filled what the server sent empty.
        wait(browser).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#mode option, #template option")
        )
        assert console_errors(browser) == [], path
    # An inline script, were one added, is blocked and reported: the check can fail.
    browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        "document.body.append(s);"
    )
    assert browser.execute_script("return window.ran") is None
    assert any("Content Security Policy" in e for e in console_errors(browser))
