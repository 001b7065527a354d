"""``fmbot prompts list/check/render`` as a user runs them: real processes, real files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import shipped_prompts_dir
from bot.stores import Turn, open_store

FMBOT = shutil.which("fmbot", path=str(Path(sys.executable).parent)) or "fmbot"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FMBOT, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.fixture
def env(tmp_path: Path, prompts_dir: Path) -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "YANDEX_", "OPENAI_"))
    }
    return clean | {"FMBOT_HOME": str(tmp_path / "home"), "FMBOT_PROMPTS_DIR": str(prompts_dir)}


def test_list_shows_name_description_and_file(env: dict[str, str], prompts_dir: Path) -> None:
    result = run(["prompts", "list"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(list(shipped_prompts_dir().iterdir()))
    by_name = {line.split()[0]: line for line in lines}
    assert "General assistant" in by_name["default"]
    assert by_name["default"].endswith(f"({prompts_dir / 'default.yaml'})")
    assert by_name["article"].endswith(f"({prompts_dir / 'article.md'})")
    assert result.stderr == ""


def test_list_mentions_invalid_files(env: dict[str, str], prompts_dir: Path) -> None:
    (prompts_dir / "bad.yaml").write_text("name: bad\n")
    result = run(["prompts", "list"], env)
    assert result.returncode == 0
    assert "bad" not in result.stdout.split()
    assert "1 file(s) have problems" in result.stderr and "fmbot prompts check" in result.stderr


def test_check_passes_on_shipped_templates(env: dict[str, str], prompts_dir: Path) -> None:
    result = run(["prompts", "check"], env)
    assert result.returncode == 0, result.stdout
    count = len(list(prompts_dir.iterdir()))
    ok, *notes = result.stdout.splitlines()
    assert ok == f"OK: {count} template(s) in {prompts_dir}."
    # The shipped `support` template names a knowledge base a fresh install has not built.
    assert notes == [
        f"note: {prompts_dir / 'support.yaml'} uses knowledge base 'support', not built in "
        f"{Path(env['FMBOT_HOME']) / 'kb'}; build it with: fmbot kb add support PATH..."
    ]


def test_check_lists_every_problem_and_exits_1(env: dict[str, str], prompts_dir: Path) -> None:
    a = prompts_dir / "a.yaml"
    a.write_text("name: a\ninstruction: hi\ntemprature: 1\noptions:\n  max_tokens: lots\n")
    b = prompts_dir / "b.md"
    b.write_text("---\nname: b\n---\nline one\nHello {{ who }}\n")
    c = prompts_dir / "c.md"
    c.write_text("---\nname: c\n---\n{% if %}\n")
    result = run(["prompts", "check"], env)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        f"{a}:3:1: temprature: unknown field",
        f"{a}:5:15: options.max_tokens: Input should be a valid integer, unable to parse "
        "string as an integer",
        f"{b}:5:1: instruction: 'who' is undefined",
        f"{c}:4:1: instruction: template syntax error: Expected an expression, got 'end of "
        "statement block'",
    ]
    files = len(list(prompts_dir.iterdir()))
    assert lines[4].startswith(f"4 problem(s) in 3 of {files} file(s).")
    assert len(lines) == 5


def test_check_given_paths(env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "good.md"
    good.write_text("---\nname: g\n---\nHi\n")
    assert run(["prompts", "check", str(good)], env).stdout == f"OK: 1 template(s) in {good}.\n"


def test_check_reports_a_missing_path_and_checks_the_others(
    env: dict[str, str], tmp_path: Path
) -> None:
    good, missing, bad = tmp_path / "good.yaml", tmp_path / "missing.yaml", tmp_path / "bad.md"
    good.write_text("name: g\ninstruction: Hi\n")
    bad.write_text("---\nname: b\n---\nHello {{ who }}\n")
    result = run(["prompts", "check", str(good), str(missing), str(bad)], env)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{missing}:1:1: no such file or directory; give a template file or a directory of them",
        f"{bad}:4:1: instruction: 'who' is undefined",
        "2 problem(s) in 2 of 3 file(s). Fix them and run `fmbot prompts check` again; running "
        "bots keep serving the last good version of each file meanwhile.",
    ]
    assert result.stderr == ""


def test_check_reports_text_problems_next_to_field_problems(
    env: dict[str, str], tmp_path: Path
) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "name: mine\ninstruction: |\n  Write for {{ audience }}.\ntemprature: 0.5\n"
        'task: "{{ message }"\n'
    )
    result = run(["prompts", "check", str(mine)], env)
    assert result.returncode == 1
    assert result.stdout.splitlines()[:3] == [
        f"{mine}:3:1: instruction: 'audience' is undefined",
        f"{mine}:4:1: temprature: unknown field",
        f"{mine}:5:7: task: template syntax error: unexpected '}}'",
    ]
    assert result.stdout.splitlines()[3].startswith("3 problem(s) in 1 of 1 file(s).")


def test_check_locates_a_control_character_in_yaml(env: dict[str, str], tmp_path: Path) -> None:
    raw = tmp_path / "raw.yaml"
    raw.write_text('name: raw\ninstruction: "Hi \x1b[2J"\n')
    result = run(["prompts", "check", str(raw)], env)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith(
        f"{raw}:2:18: YAML syntax error: control character U+001B is not allowed"
    )


def test_render_prints_the_exact_messages(env: dict[str, str]) -> None:
    args = ["product-description", "-m", "Oak desk {{ 7*7 }}", "--var", "words=80"]
    result = run(["prompts", "render", *args, "--var", "tone=dry"], env)
    assert result.returncode == 0, result.stderr
    system, user = result.stdout.split("\n\n[2] user\n")
    assert system.startswith("[1] system\nYou are an experienced e-commerce copywriter.\n")
    assert "for online shoppers in a dry tone, about 80 words." in system
    assert user == "Product details:\nOak desk {{ 7*7 }}\n"


def test_render_with_history_from_the_store(env: dict[str, str], tmp_path: Path) -> None:
    async def seed() -> None:
        (tmp_path / "home").mkdir()
        store = await open_store(f"sqlite:///{tmp_path / 'home' / 'fmbot.db'}")
        await store.append("work", Turn("user", "First question"), Turn("assistant", "Answer"))
        await store.aclose()

    asyncio.run(seed())
    result = run(["prompts", "render", "default", "-m", "Next", "--history", "work"], env)
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.rstrip("\n").split("\n\n")
    assert blocks[0].startswith("# history: 2 stored message(s) of chat 'work'")
    assert "NOT trimmed" in blocks[0]
    assert blocks[1].startswith("[1] system\nYou are fmbot")
    assert blocks[2:] == ["[2] user\nFirst question", "[3] assistant\nAnswer", "[4] user\nNext"]


def test_render_json(env: dict[str, str]) -> None:
    result = run(["prompts", "render", "translator-ru", "-m", "Hello", "--json"], env)
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["text"] == "Текст для перевода:\nHello"


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["nope", "-m", "x"], "fmbot: configuration error: NAME='nope' is not valid: no valid"),
        (["default", "-m", "x", "--var", "colour=red"], "fmbot: configuration error: --var="),
        (["news", "-m", "x", "--var", "words=many"], "fmbot: configuration error: --var="),
    ],
)
def test_render_configuration_errors_are_one_line(
    env: dict[str, str], args: list[str], start: str
) -> None:
    result = run(["prompts", "render", *args], env)
    assert result.returncode == 2
    assert result.stderr.startswith(start) and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_missing_prompts_dir_is_a_configuration_error(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["prompts", "list"], env | {"FMBOT_PROMPTS_DIR": str(tmp_path / "none")})
    assert result.returncode == 2
    assert result.stderr.startswith("fmbot: configuration error: FMBOT_PROMPTS_DIR=")


def test_render_shows_control_sequences_instead_of_sending_them(
    env: dict[str, str], prompts_dir: Path
) -> None:
    (prompts_dir / "raw.md").write_text(
        '---\nname: raw\nvariables: {title: "\\e]0;pwned\\a"}\n---\nClear \x1b[2J {{ title }}\n'
    )
    result = run(["prompts", "render", "raw", "-m", "Hi \x1b[31mred\x9b"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "[1] system\nClear ^[[2J ^[]0;pwned^G\n\n[2] user\nHi ^[[31mred\\x9b\n"
    )
    as_json = run(["prompts", "render", "raw", "-m", "Hi \x9b", "--json"], env)
    assert as_json.returncode == 0, as_json.stderr
    assert not any(c in as_json.stdout for c in "\x1b\x07\x9b")
    texts = [m["text"] for m in json.loads(as_json.stdout)]
    assert texts == ["Clear \x1b[2J \x1b]0;pwned\x07", "Hi \x9b"]  # the data, exactly
