"""The chat page in headless Chromium against ``fmbot web`` on the fake OpenAI server, whose
reply streams a word at a time (stream_delay), so a test sees it arrive."""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.browser import WAIT, console_errors, keep, screenshot, threaded_fake_openai, wait
from tests.fakes.openai_server import fake_image
from tests.test_queue_outage import PrivateRedis
from tests.web_server import WebServer, add_support_kb, openai_env, serving, web_env

WORD_DELAY = 0.15  # s between the fake model's words


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    tmp_path = tmp_path_factory.mktemp("web")
    with threaded_fake_openai(stream_delay=WORD_DELAY) as openai:
        env = openai_env(
            tmp_path,
            openai,
            FMBOT_IMAGE_MODEL="openai:dall-e-test",
            FMBOT_VISION_MODEL="openai:vision-test",
        )
        env = add_support_kb(env, tmp_path / "docs")
        with serving(env, tmp_path) as server:
            yield server


def open_chat(browser: webdriver.Chrome, web: WebServer, chat: str) -> None:
    browser.get(f"{web.url}/#{chat}")
    wait(browser).until(lambda d: d.find_element(By.ID, "chat-name").text == chat)
    wait(browser).until(lambda d: Select(d.find_element(By.ID, "mode")).options)


def type_message(browser: webdriver.Chrome, text: str) -> None:
    box = browser.find_element(By.ID, "message")
    box.send_keys(text, Keys.ENTER)


def bot_replies(browser: webdriver.Chrome) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, "#messages .msg.bot")


def streaming_text(browser: webdriver.Chrome) -> str | None:
    """The reply's text while it streams; read in one script so the reply cannot finish
    between looking at its class and reading its text."""
    text: str | None = browser.execute_script(
        'const n = document.querySelector("#messages .msg.bot.streaming");'
        "return n && n.textContent ? n.textContent : null;"
    )
    return text


def stored_turns(web: WebServer, chat: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        turns: list[dict[str, object]] = httpx.get(f"{web.url}/api/chats/{chat}", timeout=5).json()[
            "turns"
        ]
        if turns:
            return turns
        time.sleep(0.1)
    raise AssertionError(f"chat {chat} stored nothing within {WAIT} s")


def test_a_reply_streams_into_the_page(
    web: WebServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    open_chat(browser, web, "stream")
    question = "Tell me how a reply streams into a page, a few words at a time"
    type_message(browser, question)
    partial = wait(browser).until(streaming_text)
    final = f"Echo: {question}"
    assert final.startswith(partial) and len(partial) < len(final)  # seen while under way
    wait(browser).until(lambda d: not streaming_text(d) and bot_replies(d)[-1].text == final)
    user = browser.find_elements(By.CSS_SELECTOR, "#messages .msg.user")
    assert [u.text for u in user] == [question]
    assert browser.find_element(By.CSS_SELECTOR, "#chats li.current").text == "stream"
    keep(screenshot(browser, tmp_path / "web-chat.png"), os.environ.get("FMBOT_SCREENSHOTS"))


def test_stop_ends_the_reply_and_it_is_stored_as_stopped(
    web: WebServer, browser: webdriver.Chrome
) -> None:
    open_chat(browser, web, "stop")
    words = " ".join(f"w{i}" for i in range(60))  # 60 × 0.15 s: long enough to stop
    type_message(browser, words)
    wait(browser).until(streaming_text)
    assert browser.find_element(By.ID, "send").get_attribute("disabled") is not None
    browser.find_element(By.ID, "stop").click()
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.bot.stopped"))
    wait(browser).until(lambda d: d.find_element(By.ID, "send").is_enabled())
    shown = browser.find_element(By.CSS_SELECTOR, ".msg.bot.stopped").text
    [_, bot] = stored_turns(web, "stop")
    assert bot["status"] == "stopped"
    # What was generated is stored; the page shows what reached it (perhaps a word less).
    full = f"Echo: {words}"
    stored = str(bot["text"])
    assert shown and full.startswith(shown) and len(shown) < len(full)
    assert full.startswith(stored) and len(shown) <= len(stored) < len(full)
    open_chat(browser, web, "stop")  # reloaded from the store: still marked
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.bot.stopped"))


def test_mode_switch_and_new_conversation(web: WebServer, browser: webdriver.Chrome) -> None:
    open_chat(browser, web, "modes")
    mode = Select(browser.find_element(By.ID, "mode"))
    assert mode.first_selected_option.text == "default"
    mode.select_by_value("translator")
    wait(browser).until(
        lambda d: "Switched to 'translator'" in d.find_element(By.ID, "messages").text
    )
    open_chat(browser, web, "modes")
    wait(browser).until(
        lambda d: Select(d.find_element(By.ID, "mode")).first_selected_option.text == "translator"
    )
    browser.find_element(By.ID, "new-chat").click()
    wait(browser).until(lambda d: d.find_element(By.ID, "chat-name").text.startswith("chat-"))
    assert browser.find_elements(By.CSS_SELECTOR, "#messages .msg") == []
    wait(browser).until(
        lambda d: Select(d.find_element(By.ID, "mode")).first_selected_option.text == "default"
    )


def test_enter_sends_shift_enter_adds_a_line_and_markdown_is_safe(
    web: WebServer, browser: webdriver.Chrome
) -> None:
    open_chat(browser, web, "markdown")
    box = browser.find_element(By.ID, "message")
    box.send_keys("**bold** <img src=x id=injected> [x](javascript:alert(1))")
    box.send_keys(Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "`code`")
    assert browser.find_elements(By.CSS_SELECTOR, "#messages .msg.user") == []  # not sent yet
    box.send_keys(Keys.ENTER)
    wait(browser).until(lambda d: bot_replies(d) and not streaming_text(d))
    [user] = browser.find_elements(By.CSS_SELECTOR, "#messages .msg.user")
    assert user.text == "**bold** <img src=x id=injected> [x](javascript:alert(1))\n`code`"
    [reply] = bot_replies(browser)
    wait(browser).until(lambda d: reply.find_elements(By.TAG_NAME, "code"))
    assert [s.text for s in reply.find_elements(By.TAG_NAME, "strong")] == ["bold"]
    assert [c.text for c in reply.find_elements(By.TAG_NAME, "code")] == ["code"]
    assert browser.find_elements(By.ID, "injected") == []  # shown as text, never as markup
    assert "<img src=x id=injected>" in reply.text
    assert reply.find_elements(By.TAG_NAME, "a") == []  # only http(s) links become links


def test_a_picture_is_shown_inline(web: WebServer, browser: webdriver.Chrome) -> None:
    open_chat(browser, web, "pictures")
    type_message(browser, "/image a red lighthouse")
    picture = wait(browser).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .msg.image img")
    )[0]
    head, _, data = (picture.get_attribute("src") or "").partition(",")
    assert head == "data:image/png;base64"
    assert base64.b64decode(data) == fake_image("a red lighthouse")  # the model's very bytes
    assert picture.get_attribute("alt") == "a red lighthouse"


def test_a_knowledge_answer_shows_its_sources(web: WebServer, browser: webdriver.Chrome) -> None:
    open_chat(browser, web, "knowledge")
    Select(browser.find_element(By.ID, "mode")).select_by_value("support")
    wait(browser).until(lambda d: "Switched to 'support'" in d.find_element(By.ID, "messages").text)
    type_message(browser, "How long is the warranty?")
    line = (
        wait(browser)
        .until(lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .msg.bot .sources"))[0]
        .text
    )
    # The fake model echoes its prompt, which cites both passages: both are listed, the
    # heading that is markup shown as text.
    assert line.startswith("Sources: [")
    assert "warranty.md — Warranty" in line
    assert "returns.md — Returns <img src=x id=injected>" in line
    assert browser.find_elements(By.ID, "injected") == []
    open_chat(browser, web, "knowledge")  # read back from the store: the same line
    again = wait(browser).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .msg.bot .sources")
    )
    assert [a.text for a in again] == [line]


def test_an_attached_picture_is_sent_seen_and_shown(
    web: WebServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    open_chat(browser, web, "seeing")
    photo = tmp_path / "leaf.jpg"
    Image.new("RGB", (64, 48), (30, 160, 40)).save(photo, "JPEG")
    browser.find_element(By.ID, "picture-file").send_keys(str(photo))
    wait(browser).until(lambda d: loaded(d, "#attachments img") == 1)
    type_message(browser, "what is it?")
    said_by_the_vision_model(browser, "I see 1 picture: 64x48 JPEG. Echo: what is it?")
    assert browser.find_elements(By.CSS_SELECTOR, "#attachments img") == []  # sent
    [user] = browser.find_elements(By.CSS_SELECTOR, "#messages .msg.user")
    assert user.text == "what is it?"
    wait(browser).until(lambda d: loaded(d, "#messages .msg.user img") == 1)

    text = tmp_path / "notes.png"  # named like a picture, but it is not one
    text.write_text("not a picture")
    browser.find_element(By.ID, "picture-file").send_keys(str(text))
    wait(browser).until(
        lambda d: (
            "notes.png: This file is not a picture I can read"
            in d.find_element(By.ID, "messages").text
        )
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#attachments img") == []

    open_chat(browser, web, "seeing")  # read back from the store: the picture is still there
    wait(browser).until(lambda d: loaded(d, "#messages .msg.user img") == 1)
    assert [e for e in console_errors(browser) if "Content Security Policy" in e] == []


#: Hands the page a file as a paste into the message box or a drop on the composer would.
HAND_OVER = """
const [how, name, encoded] = arguments;
const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
const files = new DataTransfer();
files.items.add(new File([bytes], name, { type: "image/png" }));
if (how === "paste") {
  document.getElementById("message").dispatchEvent(
    new ClipboardEvent("paste", { clipboardData: files, bubbles: true, cancelable: true }));
} else {
  document.getElementById("composer").dispatchEvent(
    new DragEvent("drop", { dataTransfer: files, bubbles: true, cancelable: true }));
}
"""


def test_a_picture_can_be_pasted_or_dropped(web: WebServer, browser: webdriver.Chrome) -> None:
    open_chat(browser, web, "pasting")
    for how, colour in (("paste", (200, 0, 0)), ("drop", (0, 0, 200))):
        out = io.BytesIO()
        Image.new("RGB", (32, 24), colour).save(out, "PNG")
        encoded = base64.b64encode(out.getvalue()).decode()
        browser.execute_script(HAND_OVER, how, f"{how}.png", encoded)
    wait(browser).until(lambda d: loaded(d, "#attachments img") == 2)
    browser.find_elements(By.CSS_SELECTOR, "#attachments button")[0].click()  # not that one
    wait(browser).until(lambda d: loaded(d, "#attachments img") == 1)
    type_message(browser, "and this?")
    said_by_the_vision_model(browser, "I see 1 picture: 32x24 JPEG. Echo: and this?")


def said_by_the_vision_model(browser: webdriver.Chrome, reply: str) -> None:
    """Waits for the reply to be whole: the fake's first words say what pictures it got."""
    wait(browser).until(
        lambda d: not streaming_text(d) and bot_replies(d) and bot_replies(d)[-1].text == reply
    )


def loaded(browser: webdriver.Chrome, selector: str) -> int:
    """How many of the images ``selector`` finds have loaded (the CSP lets them, and the server
    served a picture)."""
    count: int = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter((i) => i.complete && i.naturalWidth > 0).length;",
        selector,
    )
    return count


def notices(browser: webdriver.Chrome) -> list[str]:
    return [n.text for n in browser.find_elements(By.CSS_SELECTOR, "#messages .msg.notice.error")]


def test_a_store_outage_is_said_on_the_page_and_the_history_is_back_after(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """FMBOT_STORE=redis:// and its Redis goes away: opening a chat, switching to another and
    sending each say in the conversation what happened (the API's 503), none fails silently."""
    down = "the conversation store cannot be reached; try again in a moment"
    private = PrivateRedis(tmp_path)
    private.start(persist=True)
    try:
        with serving(web_env(tmp_path, FMBOT_STORE=private.url), tmp_path) as server:
            open_chat(browser, server, "kept")
            type_message(browser, "before the outage")
            wait(browser).until(
                lambda d: bot_replies(d) and bot_replies(d)[-1].text == "echo: before the outage"
            )
            private.stop()
            console_errors(browser)  # only this test's from here on
            browser.get(f"{server.url}/#switched")  # the same page: a switch, as a link does
            wait(browser).until(lambda d: d.find_element(By.ID, "chat-name").text == "switched")
            wait(browser).until(lambda d: any(down in n for n in notices(d)))
            browser.refresh()  # the page opened afresh
            wait(browser).until(lambda d: any(down in n for n in notices(d)))
            type_message(browser, "during the outage")
            wait(browser).until(lambda d: len(notices(d)) == 3)
            said = notices(browser)
            assert "temporarily unavailable" in said[1]  # the turn's own notice
            assert down in said[2]  # the refresh after it
            uncaught = [e for e in console_errors(browser) if "Uncaught" in e]
            assert uncaught == []
            private.start(persist=True)
            open_chat(browser, server, "kept")
            user = browser.find_elements(By.CSS_SELECTOR, "#messages .msg.user")
            assert [m.text for m in user] == ["before the outage"]
            assert [m.text for m in bot_replies(browser)] == ["echo: before the outage"]
    finally:
        private.stop()
