"""The ``fmbot`` command as a user runs it: real processes, real SQLite file, real model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pexpect
import pytest
import redis

FMBOT = shutil.which("fmbot", path=str(Path(sys.executable).parent)) or "fmbot"


def run(
    args: list[str], env: dict[str, str], stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FMBOT, *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "YANDEX_", "OPENAI_"))
    }
    # Short replies keep the real model quick; a separate home keeps the user's data untouched.
    return clean | {"FMBOT_HOME": str(tmp_path / "home"), "FMBOT_MAX_TOKENS": "12"}


def test_help_lists_every_command(env: dict[str, str]) -> None:
    result = run(["--help"], env)
    assert result.returncode == 0
    for command in ("console", "history", "config", "prompts", "batch", "eval"):
        assert command in result.stdout


def test_piped_console_answers_each_line_and_exits_zero(env: dict[str, str]) -> None:
    result = run(["console"], env, stdin="Hello!\n\nWhat is 2+2?\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 2 and all(line.strip() for line in lines)
    assert result.stdout.endswith("\n")
    assert "Traceback" not in result.stderr


def test_conversation_survives_restart_and_history_prints_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert run(["console", "--chat", "work"], env, stdin="First message\n").returncode == 0
    assert run(["console", "--chat", "work"], env, stdin="Second message\n").returncode == 0
    assert (tmp_path / "home" / "fmbot.db").is_file()  # the default embedded store
    shown = run(["history", "work"], env)
    turns = [line for line in shown.stdout.splitlines() if not line.startswith("  ")]
    assert turns[0] == "user: First message"
    assert turns[1].startswith("assistant: ")
    assert turns[2] == "user: Second message"
    assert turns[3].startswith("assistant: ")
    listing = run(["history"], env)
    assert listing.stdout.startswith("work\t4 messages\t")


def test_history_turns_counts_exchanges(env: dict[str, str]) -> None:
    env |= {"FMBOT_HISTORY_TURNS": "2", "FMBOT_TEXT_MODEL": "echo:"}
    assert run(["console", "--chat", "c"], env, stdin="one\ntwo\nthree\n").returncode == 0
    shown = run(["history", "c"], env).stdout.splitlines()
    assert shown == ["user: two", "assistant: echo: two", "user: three", "assistant: echo: three"]


def test_commands_work_in_piped_mode(env: dict[str, str]) -> None:
    result = run(
        ["console", "--chat", "c"],
        env,
        stdin="Hi\n/mode default-ru\n/new\n/help\n/exit\nnot read\n",
    )
    assert result.returncode == 0
    assert "Switched to 'default-ru'" in result.stdout
    assert "Started a new conversation." in result.stdout
    assert "/exit" in result.stdout  # the console's help includes its own command
    assert run(["history", "c"], env).stdout == ""  # /new cleared it; "not read" never sent


def test_config_prints_settings_with_secrets_masked(env: dict[str, str]) -> None:
    secret = "AQVN-very-secret-key"
    env |= {"YANDEX_API_KEY": secret, "FMBOT_STORE": "redis://:hunter2pass@127.0.0.1:6379/3"}
    result = run(["config"], env)
    assert result.returncode == 0
    assert "FMBOT_TEXT_MODEL=local:smollm2" in result.stdout
    assert "YANDEX_API_KEY=********" in result.stdout
    assert "FMBOT_STORE=redis://:****@127.0.0.1:6379/3" in result.stdout
    assert secret not in result.stdout + result.stderr
    assert "hunter2pass" not in result.stdout + result.stderr
    env["FMBOT_STORE"] = "redis://127.0.0.1:6379/0?password=querysecret&db=1"
    result = run(["config"], env)
    assert "FMBOT_STORE=redis://127.0.0.1:6379/0?password=****&db=1" in result.stdout
    assert "querysecret" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FMBOT_STORE", "mongodb://x", "FMBOT_STORE='mongodb://x' is not valid: use sqlite:///"),
        ("FMBOT_STORE", "bad://", "FMBOT_STORE='bad://' is not valid: use sqlite:///"),
        ("FMBOT_TEXT_MODEL", "gpt5", "FMBOT_TEXT_MODEL='gpt5' is not valid: use local:smollm2"),
        ("FMBOT_PROMPTS_DIR", "/nonexistent/prompts", "FMBOT_PROMPTS_DIR='/nonexistent/prompts'"),
        ("FMBOT_MAX_TOKENS", "lots", "FMBOT_MAX_TOKENS='lots' is not valid"),
        ("FMBOT_DEFAULT_MODE", "nope", "FMBOT_DEFAULT_MODE='nope' is not valid"),
        ("FMBOT_BUSY_POLICY", "drop", "FMBOT_BUSY_POLICY='drop' is not valid: Input should be"),
        ("FMBOT_HISTORY_TTL", "soon", "FMBOT_HISTORY_TTL='soon' is not valid: give seconds"),
        ("FMBOT_IMAGE_MODEL", "dalle", "FMBOT_IMAGE_MODEL='dalle' is not valid: use yandex:"),
        ("FMBOT_HISTORY_TTL", "nan", "FMBOT_HISTORY_TTL='nan' is not valid"),
        ("FMBOT_HISTORY_TTL", "1e300", "FMBOT_HISTORY_TTL='1e300' is not valid"),
        (
            "FMBOT_STORE",
            "redis://:hunter2@127.0.0.1:abc/0",
            "FMBOT_STORE='redis://:****@127.0.0.1:abc/0' is not valid: give redis://",
        ),
        (
            "FMBOT_QUEUE_URL",
            "redis://:hunter2@127.0.0.1:abc/0",
            "FMBOT_QUEUE_URL='redis://:****@127.0.0.1:abc/0' is not valid: give redis://",
        ),
        (
            "FMBOT_QUEUE_URL",
            "redis://127.0.0.1:6379/0?password=hunter2&colour=red",
            "FMBOT_QUEUE_URL='redis://127.0.0.1:6379/0?password=****&colour=red' is not valid: "
            "give redis://[:PASSWORD@]HOST:PORT/DB (",
        ),
        (
            "FMBOT_QUEUE_URL",
            "kafka://127.0.0.1:9092",
            "FMBOT_QUEUE_URL='kafka://127.0.0.1:9092' is not valid: use redis://",
        ),
        (
            "FMBOT_STORE",
            "redis+sentinel://:hunter2@s1:26379/mymaster?sentinel_password=hunter2&x=1",
            "FMBOT_STORE='redis+sentinel://:****@s1:26379/mymaster?sentinel_password=****&x=1' "
            "is not valid: unknown option x",
        ),
    ],
)
def test_bad_setting_is_one_line_exit_2_no_traceback(
    env: dict[str, str], variable: str, value: str, expected: str
) -> None:
    result = run(["console"], env | {variable: value}, stdin="Hi\n")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "hunter2" not in result.stderr
    assert result.stdout == ""


def test_prompts_dir_that_is_a_file_is_rejected(env: dict[str, str], tmp_path: Path) -> None:
    not_a_dir = tmp_path / "prompts.yaml"
    not_a_dir.write_text("name: x\n")
    result = run(["console"], env | {"FMBOT_PROMPTS_DIR": str(not_a_dir)}, stdin="Hi\n")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"fmbot: configuration error: FMBOT_PROMPTS_DIR='{not_a_dir}' is not valid: "
        "give a readable directory of template files"
    )


def test_console_on_the_redis_store(env: dict[str, str], redis_server: str) -> None:
    chat = f"cli-redis-{uuid.uuid4().hex[:8]}"
    env |= {"FMBOT_STORE": redis_server}
    try:
        assert run(["console", "--chat", chat], env, stdin="Hello\n").returncode == 0
        shown = run(["history", chat], env).stdout
        assert shown.startswith("user: Hello\nassistant: ")
        assert chat in run(["history"], env).stdout
    finally:
        client = redis.Redis.from_url(redis_server)
        client.delete(f"fmbot:{{{chat}}}:turns", f"fmbot:{{{chat}}}:state")
        client.zrem("fmbot:chats", chat)
        client.close()


def test_bad_setting_in_dotenv_file_is_reported(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FMBOT_STORE=ftp://nowhere\n")
    result = subprocess.run(
        [FMBOT, "config"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 2
    assert "FMBOT_STORE='ftp://nowhere'" in result.stderr


def test_interactive_console_streams_and_exits(env: dict[str, str]) -> None:
    # A pseudo-terminal makes stdin a TTY: the prompt_toolkit session, not the piped mode.
    env |= {"PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
    child = pexpect.spawn(
        FMBOT, ["console", "--chat", "tty"], env=env, encoding="utf-8", timeout=60
    )
    try:
        child.expect("Type /help")
        child.expect("you>")
        child.send("Hello there\r")
        child.expect("bot>")
        child.expect("you>")
        child.send("/help\r")
        child.expect("/exit")
        child.expect("you>")
        child.send("/exit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    shown = [line for line in run(["history", "tty"], env).stdout.splitlines() if line[:1] != " "]
    assert shown[0] == "user: Hello there" and shown[1].startswith("assistant: ")
