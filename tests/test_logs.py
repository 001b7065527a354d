"""Log lines (issue 20): ``FMBOT_LOG_FORMAT=json`` writes one JSON object per line, with the turn's
chat, id, channel and model inside a turn and exceptions as fields; third-party loggers and
warnings go through the same formatter; no secret reaches a line at any level, and user text
none at info."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.dialog import DialogManager
from bot.errors import ConfigError
from bot.events import Incoming
from bot.observe import logs
from bot.settings import load_settings
from bot.urls import mask_url
from tests.conftest import script_finishes
from tests.fakes import FakeOpenAI, Fault
from tests.fakes.telegram_server import FakeTelegram
from tests.test_metrics import openai_manager, stopped_at_end
from tests.test_queue_outage import PrivateRedis
from tests.test_telegram import running
from tests.test_telegram_roles import base_env, exited, fmbot

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TELEGRAM_", "FMBOT_", "OPENAI_", "YANDEX_")):
            monkeypatch.delenv(name)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger also writes JSON lines (as configure() sets up) to a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter("json", ["sk-secret-key-1234567"]))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def parsed(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # fails on any line that is not JSON


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_a_turns_lines_carry_its_chat_id_channel_and_model_and_the_id_is_stored(
    openai: FakeOpenAI, json_lines: io.StringIO
) -> None:
    manager: DialogManager = await openai_manager(openai)
    openai.reply = "one two three four"
    openai.inject(Fault("cut", after=2))
    async for _ in manager.handle(Incoming("chat-9", "tell me")):
        pass
    [line] = [x for x in parsed(json_lines.getvalue()) if x["logger"] == "bot.dialog"]
    assert set(line) >= {"ts", "level", "logger", "message", "chat", "turn", "channel", "model"}
    assert line["level"] == "WARNING"
    assert (line["chat"], line["channel"], line["model"]) == (
        "chat-9",
        "console",
        "openai:gpt-test",
    )
    assert line["ts"].endswith("Z")
    _, stored = await manager.store.load("chat-9", last=2)
    assert stored[-1].meta["turn"] == line["turn"]  # the log line leads to the stored turn


def test_exceptions_are_fields_and_secrets_are_masked(json_lines: io.StringIO) -> None:
    log = logging.getLogger("some.library")
    try:
        raise ValueError("bad value with key sk-secret-key-1234567")
    except ValueError:
        log.exception("failed calling redis://user:hunter2pass@db:6379/0")
    log.info("headers: {'Authorization': 'Bearer abc.def-123', 'X-Other': 'x'}")
    exc, auth = parsed(json_lines.getvalue())
    assert exc["exc_type"] == "ValueError"
    assert "Traceback" in exc["traceback"] and "raise ValueError" in exc["traceback"]
    text = json_lines.getvalue()
    assert text.count("\n") == 2  # the traceback is a field, not extra lines
    for secret in ("sk-secret-key-1234567", "hunter2pass", "abc.def-123"):
        assert secret not in text
    assert "redis://user:****@db:6379/0" in exc["message"]
    assert "chat" not in exc  # outside a turn
    assert "Bearer ****" in auth["message"]


def test_secret_query_parameters_are_masked_in_any_url() -> None:
    scrub = logs.Scrubber()
    line = scrub(
        "connect redis://127.0.0.1:6379/0?password=hunter2pass&db=1 failed; "
        "{'url': 'https://api.example/v1?access_token=tok-99xyz'} "
        "redis+sentinel://a:26379,b:26379/main?sentinel_password=sent1nel%21x&password=Pw9"
    )
    for secret in ("hunter2pass", "tok-99xyz", "sent1nel", "Pw9"):
        assert secret not in line, line
    assert "?password=****&db=1 failed" in line  # other parameters and the text stay
    assert "access_token=****'}" in line
    # The same parameters as the URLs fmbot shows itself (bot.urls.mask_url).
    for url in (
        "redis://h:6379/0?password=abc123&db=2",
        "rediss://user:pw123456@h:6380/1?ssl_cert_reqs=none&api_key=k1k2k3",
        "redis+sentinel://h:26379/svc?Sentinel_Password=s3cr3t&socket_timeout=5",
        "https://h/p?secret=x1&credentials=y2&authz=z3&key=w4&page=3",
    ):
        assert scrub(url) == mask_url(url), url


@pytest.mark.parametrize(
    "before",
    ["", " ", "(", "'", "=", "x=-", "+", "connecting...", "url:", "a.b-"],
    ids=repr,
)
def test_url_passwords_are_masked_whatever_comes_before_the_url(before: str) -> None:
    line = logs.Scrubber()(f"{before}redis://user:hunter2pw@cache:6379/0 refused")
    assert line == f"{before}redis://user:****@cache:6379/0 refused"


def test_scrubbing_a_long_line_without_urls_stays_quick(tmp_path: Path) -> None:
    """A megabyte of base64 (a picture in a debug line) and one of a single word: the patterns
    scan each character a bounded number of times. In a process of its own with a timeout, so
    a pattern that rescans (seconds per 50 kB, hours per megabyte) fails here, not in a bot."""
    script = textwrap.dedent(
        """
        import base64, os
        from bot.observe.logs import Scrubber
        scrub = Scrubber(["some-secret-value"])
        for line in (
            base64.b64encode(os.urandom(750_000)).decode() + "://",
            "a" * 1_000_000 + "://x:y",
            "+a" * 500_000 + "://",
            "=" + "-a." * 300_000 + "://u:",
        ):
            assert scrub(line) == line
        print("ok")
        """
    )
    script_finishes(script, tmp_path)


def test_secret_values_include_the_secret_query_parameters_of_urls(tmp_path: Path) -> None:
    settings = load_settings(
        _env_file=None,
        FMBOT_HOME=str(tmp_path),
        FMBOT_STORE="redis://127.0.0.1:6379/0?password=p%40ss-word1&db=0",
        FMBOT_QUEUE_URL="redis+sentinel://:master-pw8@h:26379/main?sentinel_password=sentinel-pw7",
    )
    found = logs.secret_values(settings)
    assert {"p%40ss-word1", "p@ss-word1", "master-pw8", "sentinel-pw7"} <= set(found)
    assert "0" not in found  # db=0 is not a secret
    # Masked wherever they show, in a URL or not (redis-py quotes the decoded password).
    line = logs.Scrubber(found)("AUTH p@ss-word1 refused by sentinel (sentinel-pw7)")
    assert line == "AUTH **** refused by sentinel (****)"


def test_warnings_go_through_the_same_formatter(json_lines: io.StringIO) -> None:
    logging.captureWarnings(True)
    try:
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    [line] = parsed(json_lines.getvalue())
    assert line["logger"] == "py.warnings" and "an old API" in line["message"]


@pytest.mark.parametrize(
    ("name", "bad"), [("FMBOT_LOG_FORMAT", "xml"), ("FMBOT_LOG_LEVEL", "LOUD")]
)
def test_bad_log_settings_are_config_errors(name: str, bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(_env_file=None, FMBOT_HOME=str(tmp_path), **{name: bad})


async def test_a_configuration_error_is_one_json_line_too(tmp_path: Path) -> None:
    fake = FakeTelegram()
    env = base_env(fake, tmp_path, FMBOT_LOG_FORMAT="json", FMBOT_STORE="mongodb://db")
    proc = fmbot(env=env, cwd=tmp_path)
    assert await exited(proc, 30) == 2
    assert proc.stderr is not None
    [line] = parsed(proc.stderr.read().decode())
    assert line["level"] == "ERROR" and "FMBOT_STORE" in line["message"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_uncaught_exceptions_in_threads_and_del_are_log_lines_too(fmt: str, tmp_path: Path) -> None:
    """Python prints these itself, over many lines and unscrubbed, unless configure() routes
    them: then they are log lines of the format, their secrets masked."""
    script = textwrap.dedent(
        f"""
        import threading
        from bot.observe import logs

        logs.configure("{fmt}", "INFO", secrets=["sk-thread-secret-42"])

        def fail():
            raise RuntimeError("in a thread, with sk-thread-secret-42")

        thread = threading.Thread(target=fail, name="helper")
        thread.start()
        thread.join()

        class Finalized:
            def __del__(self):
                raise KeyError("from __del__")

        Finalized()
        raise ValueError("in the main thread")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMBOT_")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env | {"PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "sk-thread-secret-42" not in done.stderr
    if fmt == "text":
        assert done.stderr.startswith("ERROR fmbot: uncaught exception in thread helper\n")
        assert "RuntimeError: in a thread, with ****" in done.stderr
        assert "\nERROR fmbot: " in done.stderr and "KeyError: 'from __del__'" in done.stderr
        assert "\nCRITICAL fmbot: uncaught exception\n" in done.stderr
        return
    thread, unraisable, main = parsed(done.stderr)  # three lines, each one object
    assert (thread["exc_type"], thread["level"]) == ("RuntimeError", "ERROR")
    assert "helper" in thread["message"] and "in fail" in thread["traceback"]
    assert "sk-thread-secret-42" not in done.stderr
    assert unraisable["exc_type"] == "KeyError" and "__del__" in unraisable["message"]
    assert (main["exc_type"], main["level"]) == ("ValueError", "CRITICAL")


@pytest.mark.parametrize(
    "command", [["adapters.cli", "config"], ["bot.queue.worker_main"]], ids=["fmbot", "worker"]
)
def test_json_from_a_dotenv_file_applies_to_configuration_errors(
    command: list[str], tmp_path: Path
) -> None:
    """FMBOT_LOG_FORMAT in .env alone: the settings' error is still a JSON line, no traceback."""
    (tmp_path / ".env").write_text("FMBOT_LOG_FORMAT=json\nFMBOT_STORE=bogus://x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "TELEGRAM_"))}
    done = subprocess.run(
        [sys.executable, "-m", *command],
        env=env | {"PYTHONPATH": str(ROOT), "FMBOT_HOME": str(tmp_path / "home")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    [line] = parsed(done.stderr)
    assert line["level"] == "ERROR" and "traceback" not in line
    assert "FMBOT_STORE" in line["message"] and "use sqlite:///PATH" in line["message"]


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[tuple[PrivateRedis, str]]:
    server = PrivateRedis(tmp_path)
    password = "redis-pass-Zq81xw"
    server.start(persist=False)
    admin = redis.Redis(port=server.port, socket_timeout=5)
    admin.config_set("requirepass", password)  # after start: start() pings without one
    admin.close()
    yield server, password
    server.stop()


async def test_no_secret_at_debug_and_no_user_text_at_info(
    tmp_path: Path, openai: FakeOpenAI, locked_redis: tuple[PrivateRedis, str]
) -> None:
    """A whole bot at DEBUG, JSON: the token, the API key, the Redis password (given as
    ``?password=``, which redis-py takes too) and the Authorization header never show; the
    user's words only below INFO."""
    server, password = locked_redis
    openai.reply = "a reply"
    async with FakeTelegram() as fake:
        env = base_env(
            fake,
            tmp_path,
            FMBOT_LOG_FORMAT="json",
            FMBOT_LOG_LEVEL="DEBUG",
            FMBOT_STORE=f"redis://127.0.0.1:{server.port}/0?password={password}",
            FMBOT_TEXT_MODEL="openai:gpt-test",
            OPENAI_BASE_URL=openai.base_url,
            OPENAI_API_KEY=openai.api_key or "",
        )
        alice = fake.user(5150, "Alice")
        chat = fake.private_chat(alice)
        proc = fmbot(env=env, cwd=tmp_path)
        async with stopped_at_end(proc):
            fake.push_text(chat, alice, "my private words qwerty")
            await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 60)
            openai.inject(Fault("status", status=500), times=10)  # errors are logged too
            fake.push_text(chat, alice, "second private words asdfgh")
            await fake.wait_for(lambda: len(fake.bot_messages(chat["id"])) >= 2, 60)
            await asyncio.sleep(0.5)
    assert proc.stderr is not None
    lines = parsed(proc.stderr.read().decode())  # nothing but JSON
    assert any(x["level"] == "DEBUG" for x in lines)
    loggers = {x["logger"].split(".")[0] for x in lines}
    assert {"aiogram", "bot"} <= loggers, loggers  # the libraries' lines come through too
    assert any(x["level"] == "ERROR" and x["logger"] == "bot.models.http" for x in lines)
    text = json.dumps(lines)
    token_secret = fake.token.split(":", 1)[1]
    for secret in (token_secret, openai.api_key, password):
        assert secret and secret not in text, secret
    assert "Bearer sk" not in text
    for line in lines:
        if LEVELS[line["level"]] >= logging.INFO:
            assert "qwerty" not in line["message"] and "asdfgh" not in line["message"], line


async def logged(out: io.StringIO, text: str, within: float = 10) -> dict[str, Any]:
    """The first JSON line whose message has ``text``, once written."""
    async with asyncio.timeout(within):
        while True:
            found = [x for x in parsed(out.getvalue()) if text in x["message"]]
            if found:
                return found[0]
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("refused", ["final", "stopped"])
async def test_telegram_refusing_a_reply_is_logged_with_its_turn(
    openai: FakeOpenAI, json_lines: io.StringIO, prompts_dir: Path, refused: str
) -> None:
    """The bot's Telegram channel against the fake Bot API: Telegram refuses the reply's final
    message (403: blocked) or, after /stop, its stopped text (400: chat gone). The turn has
    ended by then; the warning still names it, and its id leads to the stored reply."""
    model = (await openai_manager(openai)).model
    async with FakeTelegram() as fake:
        alice = fake.user(6160, "Alice")
        chat = fake.private_chat(alice)
        async with running(fake, prompts_dir, model) as bot:
            if refused == "final":
                openai.reply = "Here is the **answer**."
                fake.fail_next(
                    "sendMessage",
                    403,
                    "Forbidden: bot was blocked by the user",
                    when=lambda p: bool(p.get("entities")),  # the final, formatted message
                )
                fake.push_text(chat, alice, "a question")
            else:
                openai.reply = " ".join(f"word{i}" for i in range(40))
                openai.stream_delay = 0.1  # still streaming when stopped
                fake.push_text(chat, alice, "tell a long story")
                await fake.wait_for(lambda: bool(fake.drafts), 10)
                fake.fail_next("sendMessage", 400, "Bad Request: chat not found")
                fake.push_text(chat, alice, "/stop")
            line = await logged(json_lines, "could not deliver a reply")
        assert not fake.bot_messages(chat["id"])  # refused indeed
        turns = await bot.store.read(f"tg:{chat['id']}")
    assert line["logger"] == "adapters.telegram.replies" and line["level"] == "WARNING"
    assert (line["chat"], line["channel"]) == (f"tg:{chat['id']}", "telegram")
    [_, reply] = turns
    assert reply.meta["status"] == ("complete" if refused == "final" else "stopped")
    assert reply.meta["turn"] == line["turn"]


def test_lines_go_to_stderr_as_it_is_when_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command run in-process (a test's CliRunner) swaps stderr for a buffer and closes it
    afterwards: later lines go to the stderr of their moment, not to the closed buffer (which
    made every later line a "--- Logging error ---")."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        logs.configure("text", "INFO")
        logging.getLogger("fmbot.test").warning("while the command ran")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("fmbot.test").warning("after it")
        assert second.getvalue() == "WARNING fmbot.test: after it\n"
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
