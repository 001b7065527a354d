"""Replies rendered as Markdown in the chat page, in headless Chromium, on the echo model (which
repeats a message with its line breaks): the blocks a reply uses become elements, and markup in
a code block stays text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser import wait
from tests.web_server import WebServer, serving, web_env

LINES = [
    "Intro with **bold** and `code`",
    "# A heading",
    "- first item",
    "- second item",
    "1. numbered",
    "```",
    "<b>not bold</b>",
    "```",
    "See [the site](https://example.org/page) for more.",
]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    tmp_path: Path = tmp_path_factory.mktemp("web")
    with serving(web_env(tmp_path), tmp_path) as server:
        yield server


def test_markdown_blocks_become_elements(web: WebServer, browser: webdriver.Chrome) -> None:
    browser.get(f"{web.url}/#markdown")
    wait(browser).until(lambda d: d.find_element(By.ID, "chat-name").text == "markdown")
    box = browser.find_element(By.ID, "message")
    for i, line in enumerate(LINES):
        box.send_keys(line)
        if i < len(LINES) - 1:
            box.send_keys(Keys.SHIFT, Keys.ENTER, Keys.SHIFT)
    box.send_keys(Keys.ENTER)
    reply = (
        wait(browser)
        .until(lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .msg.bot:not(.streaming) a"))[
            0
        ]
        .find_element(By.XPATH, "ancestor::div[contains(@class, 'msg')]")
    )

    def texts(css: str) -> list[str]:
        return [e.text for e in reply.find_elements(By.CSS_SELECTOR, css)]

    assert texts("p strong") == ["bold"]
    assert texts("h3") == ["A heading"]  # "#" is shown two levels down: a reply is no page
    assert texts("ul > li") == ["first item", "second item"]
    assert texts("ol > li") == ["numbered"]
    assert texts("pre > code") == ["<b>not bold</b>"]
    assert reply.find_elements(By.CSS_SELECTOR, "pre b") == []
    [link] = reply.find_elements(By.TAG_NAME, "a")
    assert link.text == "the site" and link.get_attribute("href") == "https://example.org/page"
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    assert reply.find_element(By.TAG_NAME, "p").text == "echo: Intro with bold and code"
