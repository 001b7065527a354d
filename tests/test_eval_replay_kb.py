"""``fmbot eval replay`` of a knowledge-base turn: the stored reply's own passages (read again
from the knowledge base by chunk id, checked by a digest of their text), or retrieved again once
they are gone or changed. A real conversation (``fmbot console``, SQLite), a real knowledge base
and e5."""

from __future__ import annotations

from pathlib import Path

from tests.eval_helpers import env, fmbot
from tests.kb_files import write_shop_docs
from tests.test_eval_replay import chat_in_console

__all__ = ["env"]

DRAFT = (
    "name: draft\nknowledge: support\nknowledge_top_k: 2\ninstruction: Answer in one line.\n"
    "task: |\n  {% for p in knowledge %}[{{ p.n }}] {{ p.text }}\n  {% endfor %}Q: {{ message }}\n"
)
REPLAY = ["eval", "replay", "shop", "--template", "draft.yaml"]


async def chat_grounded_in(path: Path, tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """Knowledge base ``support`` of ``path``, a console chat ``shop`` that used it, the draft
    template in ``tmp_path``; the environment to replay with."""
    env = env | {"FMBOT_KB_DIR": str(tmp_path / "kb")}
    built = await fmbot(["kb", "add", "support", str(path)], env)
    assert built.returncode == 0, built.stderr
    await chat_in_console(
        env | {"FMBOT_DEFAULT_MODE": "support"}, "shop", ["How long is the warranty?"]
    )
    (tmp_path / "draft.yaml").write_text(DRAFT)
    return env


async def test_replay_uses_the_turns_passages_while_they_exist(
    tmp_path: Path, env: dict[str, str]
) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    env = await chat_grounded_in(docs, tmp_path, env)
    result = await fmbot(REPLAY, env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # The shipped support template retrieves 4; the draft is given those same 4, in order.
    assert "passages: the 4 the stored reply was given" in out
    listed = out.split("passages: the 4")[1]
    assert "[1] warranty.md — Warranty" in listed and "[4]" in listed

    gone = await fmbot(["kb", "remove", "support", str(docs / "warranty.md")], env)
    assert gone.returncode == 0, gone.stderr
    again = await fmbot(REPLAY, env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (
        "passages: 2 retrieved again (the stored reply's passages are no longer in their "
        "knowledge bases as they were)" in again.stdout
    )
    listed = again.stdout.split("passages: 2 retrieved again")[1]
    assert "[1] " in listed and "warranty.md" not in listed


async def test_replay_retrieves_again_once_a_passages_file_was_indexed_again(
    tmp_path: Path, env: dict[str, str]
) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    warranty = docs / "warranty.md"
    # The only file: indexed again, its new chunks take the ids its old ones had (SQLite
    # gives a new row the highest id + 1), so the chunk ids alone would find the new text.
    env = await chat_grounded_in(warranty, tmp_path, env)
    before = await fmbot(REPLAY, env, cwd=tmp_path)
    assert before.returncode == 0, before.stdout + before.stderr
    assert "the stored reply was given" in before.stdout

    warranty.write_text(warranty.read_text().replace("two-year", "three-year"))
    again = await fmbot(["kb", "add", "support", str(warranty)], env)
    assert again.returncode == 0, again.stderr
    after = await fmbot(REPLAY, env, cwd=tmp_path)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "the stored reply was given" not in after.stdout
    assert (
        "retrieved again (the stored reply's passages are no longer in their knowledge bases "
        "as they were)" in after.stdout
    )
