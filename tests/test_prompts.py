"""Template files: shipped ones are valid; errors carry path:line:column; edits reload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.dialog import DialogManager
from bot.errors import PromptError
from bot.events import Incoming, Notice
from bot.models.base import GenerationOptions
from bot.models.local import LocalModel
from bot.prompts.library import PromptLibrary
from bot.prompts.loader import check_directory, check_template, load_template
from bot.prompts.render import build_messages
from bot.prompts.variables import coerce_variables, parse_assignments
from bot.settings import shipped_prompts_dir
from bot.stores import open_store
from tests.doubles import Recording

SHIPPED = sorted(p for p in shipped_prompts_dir().iterdir() if p.suffix in (".yaml", ".md"))
#: The jobs generative models are bought for, in English and Russian where wording matters.
REQUIRED = {
    "default",
    "default-ru",
    "image-prompt",
    "product-description",
    "product-description-ru",
    "article",
    "article-ru",
    "news",
    "news-ru",
    "newsletter",
    "newsletter-ru",
    "translator",
    "translator-ru",
}


def test_templates_are_shipped() -> None:
    names = [load_template(p).name for p in SHIPPED]
    assert set(names) >= REQUIRED
    assert len(names) == len(set(names))  # no two files share a name
    assert any(p.suffix == ".md" for p in SHIPPED)  # the Markdown form is shipped too


def test_shipped_directory_checks_clean() -> None:
    report = check_directory(shipped_prompts_dir())
    assert report.problems == []
    assert {t.name for t in report.templates} >= REQUIRED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_template_is_valid_and_renders(path: Path) -> None:
    template = load_template(path)
    check_template(template)
    messages = build_messages(template, "Hello {{ name }}")
    assert messages[0].role == "system" and messages[0].text
    assert "{{" not in messages[0].text  # every variable has a default
    assert messages[-1].role == "user" and "Hello {{ name }}" in messages[-1].text


def test_user_text_is_never_rendered(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        'name: t\ninstruction: "Be {{ tone }}."\ntask: "Q: {{ message }}"\n'
        "variables:\n  tone: kind\n"
    )
    template = load_template(path)
    messages = build_messages(template, "{{ 7*7 }} {{ tone }} {% raw %}")
    assert messages[0].text == "Be kind."
    assert messages[-1].text == "Q: {{ 7*7 }} {{ tone }} {% raw %}"


def test_sandbox_blocks_unsafe_attribute_access(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("name: t\ninstruction: \"{{ ''.__class__.__mro__[1].__subclasses__() }}\"\n")
    with pytest.raises(PromptError, match=r"unsafe|access"):
        check_template(load_template(path))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_field_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ninstruction: hi\n  \ntemprature: 0.5\n")
    with pytest.raises(PromptError) as err:
        load_template(path)
    assert str(err.value) == f"{path}:4:1: temprature: unknown field"


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ninstruction: [unclosed\n")
    with pytest.raises(PromptError) as err:
        load_template(path)
    assert str(err.value).startswith(f"{path}:3:1: YAML syntax error")


def test_jinja_syntax_error_is_located_inside_a_block(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ninstruction: |\n  line one\n  line {{ two\n")
    with pytest.raises(PromptError) as err:
        load_template(path)
    assert str(err.value).startswith(f"{path}:4:1: instruction: template syntax error")


def test_type_error_in_options_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ninstruction: hi\noptions:\n  max_tokens: lots\n")
    with pytest.raises(PromptError) as err:
        load_template(path)
    assert str(err.value).startswith(f"{path}:4:15: options.max_tokens: Input should be")


def test_undefined_variable_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ndescription: d\ninstruction: Hello {{ who }}\n")
    template = load_template(path)
    with pytest.raises(PromptError) as err:
        check_template(template)
    assert str(err.value) == f"{path}:3:14: instruction: 'who' is undefined"


def test_library_reloads_edits_and_keeps_last_good(prompts_dir: Path) -> None:
    library = PromptLibrary(prompts_dir)
    path = prompts_dir / "extra.yaml"
    assert library.get("extra") is None

    path.write_text("name: extra\ninstruction: first\n")
    assert library.get("extra").instruction == "first"  # type: ignore[union-attr]

    path.write_text("name: extra\ninstruction: second version\n")
    bump_mtime(path)
    assert library.get("extra").instruction == "second version"  # type: ignore[union-attr]

    path.write_text("name: extra\ninstruction: {{ broken\n")
    bump_mtime(path)
    assert library.get("extra").instruction == "second version"  # type: ignore[union-attr]
    assert path in library.errors

    path.unlink()
    assert library.get("extra") is None
    assert path not in library.errors


def bump_mtime(path: Path) -> None:
    """Make a rewrite visible even on filesystems with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_undefined_variable_inside_a_block_is_located_on_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ninstruction: |\n  one\n  two\n  three {{ who }}\n")
    with pytest.raises(PromptError) as err:
        check_template(load_template(path))
    assert str(err.value) == f"{path}:5:1: instruction: 'who' is undefined"


def test_type_error_while_rendering_is_located(tmp_path: Path) -> None:
    path = write(
        tmp_path, "name: x\ninstruction: |\n  one\n  two {{ n + 'a' }}\nvariables:\n  n: 1\n"
    )
    with pytest.raises(PromptError) as err:
        check_template(load_template(path))
    assert str(err.value) == (
        f"{path}:4:1: instruction: TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    )


def test_undefined_variable_in_task_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, 'name: x\ninstruction: hi\ntask: "Q: {{ topic }} {{ message }}"\n')
    with pytest.raises(PromptError) as err:
        check_template(load_template(path))
    assert str(err.value) == f"{path}:3:7: task: 'topic' is undefined"


def test_variables_from_outside_take_the_defaults_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: x\ninstruction: '{{ n * 2 }} {{ f }} {{ b }} {{ s }}'\n"
        "variables:\n  n: 1\n  f: 0.5\n  b: false\n  s: text\n",
    )
    template = load_template(path)
    values = coerce_variables(
        template, {"n": "21", "f": "1.5", "b": "yes", "s": 7, "extra": "x"}, known_only=False
    )
    assert values == {"n": 21, "f": 1.5, "b": True, "s": "7", "extra": "x"}
    assert build_messages(template, "m", variables=values)[0].text == "42 1.5 True 7"
    with pytest.raises(ValueError, match=r"'n' takes an integer \(its default is 1\), not 'lots'"):
        coerce_variables(template, {"n": "lots"}, known_only=False)
    with pytest.raises(ValueError, match=r"no variable 'extra' \(its variables: b, f, n, s\)"):
        coerce_variables(template, {"extra": "x"}, known_only=True)
    assert parse_assignments(["a=1", "b==2", "c="]) == {"a": "1", "b": "=2", "c": ""}
    with pytest.raises(ValueError, match="not NAME=VALUE"):
        parse_assignments(["novalue"])


def test_check_lists_every_problem_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ninstruction: hi\ntemprature: 1\ncolour: red\n")
    (tmp_path / "b.yaml").write_text("name: b\ninstruction: '{{ x }}'\ntask: '{{ y }}'\n")
    (tmp_path / "c.yaml").write_text("name: a\ninstruction: fine\n")  # duplicate name
    (tmp_path / "d.yaml").write_text("name: d\ninstruction: fine\n")
    report = check_directory(tmp_path)
    a, b, c = (tmp_path / n for n in ("a.yaml", "b.yaml", "c.yaml"))
    assert [str(p) for p in report.problems] == [
        f"{a}:3:1: temprature: unknown field",
        f"{a}:4:1: colour: unknown field",
        f"{b}:2:14: instruction: 'x' is undefined",
        f"{b}:3:7: task: 'y' is undefined",
        f"{c}:1:7: name: 'a' is already the name of {a}; names must be unique (rename one)",
    ]
    assert [t.name for t in report.templates] == ["d"]


async def test_running_manager_picks_up_edits_additions_and_removals(
    local_model: LocalModel, prompts_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = Recording(local_model)
    store = await open_store("memory://")
    manager = DialogManager(
        store, model, PromptLibrary(prompts_dir), options=GenerationOptions(max_tokens=4)
    )

    async def system_prompt_of_next_turn(text: str = "Hi") -> str:
        before = len(model.requests)
        events = [e async for e in manager.handle(Incoming("chat", text))]
        assert len(model.requests) == before + 1, events
        return model.requests[-1][0].text

    try:
        assert (await system_prompt_of_next_turn()).startswith("You are fmbot,")

        default = prompts_dir / "default.yaml"
        default.write_text("name: default\ndescription: d\ninstruction: You are Zed, terse.\n")
        bump_mtime(default)
        assert await system_prompt_of_next_turn() == "You are Zed, terse."

        # An invalid edit keeps the last good version and logs where the problem is.
        default.write_text("name: default\ninstruction: You are {{ broken\n")
        bump_mtime(default)
        with caplog.at_level("ERROR", logger="bot.prompts.library"):
            assert await system_prompt_of_next_turn() == "You are Zed, terse."
        assert f"{default}:2:14: instruction: template syntax error" in caplog.text

        # A new Markdown file is offered by /mode and used once chosen.
        pirate = prompts_dir / "pirate.md"
        pirate.write_text("---\nname: pirate\ndescription: Arr\n---\nTalk like a pirate.\n")
        listing = [e async for e in manager.handle(Incoming("chat", "/mode"))]
        assert isinstance(listing[0], Notice) and "pirate — Arr" in listing[0].text
        [switched] = [e async for e in manager.handle(Incoming("chat", "/mode pirate"))]
        assert isinstance(switched, Notice) and "Switched to 'pirate'" in switched.text
        assert await system_prompt_of_next_turn() == "Talk like a pirate."

        # Removing the file falls back to the default template.
        pirate.unlink()
        assert await system_prompt_of_next_turn() == "You are Zed, terse."
    finally:
        await manager.aclose()
