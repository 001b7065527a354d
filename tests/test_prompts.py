"""Template files: shipped ones are valid; errors carry path:line:column; edits reload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.errors import PromptError
from bot.prompts.library import PromptLibrary
from bot.prompts.loader import check_template, load_template
from bot.prompts.render import build_messages
from bot.settings import shipped_prompts_dir

SHIPPED = sorted(shipped_prompts_dir().glob("*.yaml"))


def test_templates_are_shipped() -> None:
    assert "default" in {load_template(p).name for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_template_is_valid_and_renders(path: Path) -> None:
    template = load_template(path)
    check_template(template)
    messages = build_messages(template, "Hello {{ name }}")
    assert messages[0].role == "system" and messages[0].text
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
