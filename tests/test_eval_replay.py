"""``fmbot eval replay``: a turn stored by a real conversation (SQLite) run again with another
template version, its history as the bot saw it; ``--add-to`` appends it to a suite."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tests.eval_helpers import FMBOT, env, fake, fmbot, openai_env
from tests.fakes import FakeOpenAI

__all__ = ["env", "fake", "openai_env"]


async def chat_in_console(env: dict[str, str], chat: str, lines: list[str]) -> None:
    """A real conversation: `fmbot console` reading piped lines, stored in FMBOT_HOME's SQLite."""
    proc = await asyncio.create_subprocess_exec(
        FMBOT,
        "console",
        "--chat",
        chat,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate("\n".join(lines).encode() + b"\n"), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()


async def test_replay_a_stored_turn_with_another_template(
    tmp_path: Path, env: dict[str, str], fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    await chat_in_console(env, "shop", ["hello there", "second question", "third"])
    assert (Path(env["FMBOT_HOME"]) / "fmbot.db").is_file()
    (tmp_path / "draft.yaml").write_text(
        "name: draft\ninstruction: Answer in one line.\ntask: 'Q: {{ message }}'\n"
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "templates: [default]  # versions\ncases:\n  - message: first\n"
        "    assert: [{type: contains, value: first}]\n# a trailing comment\nthreshold: 1\n"
    )
    result = await fmbot(
        [
            "eval", "replay", "shop", "--turn", "2", "--template", "draft.yaml",
            "--model", "openai:gpt-test", "--add-to", str(suite),
        ],
        openai_env,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "echo: second question" in out  # the stored reply (the echo model answered then)
    assert "Echo: Q: second question" in out  # the new one, with the draft's task
    assert "turn 2 (2 message(s) of history" in out and "stored reply (default)" in out

    [request] = fake.requests_to("/chat/completions")
    sent = [(m["role"], m["content"]) for m in request.body["messages"]]
    assert sent == [
        ("system", "Answer in one line."),
        ("user", "hello there"),
        ("assistant", "echo: hello there"),
        ("user", "Q: second question"),
    ]

    text = suite.read_text()
    assert '  - message: "second question"\n# a trailing comment\n' in text
    assert text.startswith("templates: [default]  # versions\n")
    checked = await fmbot(["eval", "check", str(suite)], env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("OK: 2 case(s)")


async def test_replay_errors_say_what_to_do(tmp_path: Path, env: dict[str, str]) -> None:
    result = await fmbot(["eval", "replay", "nobody", "--template", "default"], env)
    assert result.returncode == 2 and "fmbot history" in result.stderr
    await chat_in_console(env, "c", ["hi"])
    result = await fmbot(["eval", "replay", "c", "--turn", "5", "--template", "default"], env)
    assert result.returncode == 2 and "user turns 1 to 1" in result.stderr
    result = await fmbot(["eval", "replay", "c", "--template", "nope"], env)
    assert result.returncode == 2 and "no valid template named 'nope'" in result.stderr
    flow = tmp_path / "flow.yaml"
    flow.write_text("templates: [default]\ncases: [{message: a}]\n")
    result = await fmbot(["eval", "replay", "c", "-t", "default", "--add-to", str(flow)], env)
    assert result.returncode == 2 and "not a block list" in result.stderr
    assert flow.read_text() == "templates: [default]\ncases: [{message: a}]\n"
