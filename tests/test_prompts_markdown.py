"""Markdown templates: YAML front matter holds the fields, the body is the instruction.

Every location counts lines from the top of the file: front matter and body alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.errors import PromptError
from bot.prompts.library import PromptLibrary
from bot.prompts.loader import check_directory, check_template, load_template
from bot.prompts.render import build_messages


def md(tmp_path: Path, text: str, name: str = "t.md") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problem(path: Path, *, render: bool = False) -> str:
    with pytest.raises(PromptError) as err:
        template = load_template(path)
        if render:
            check_template(template)
    return str(err.value)


def test_front_matter_fields_and_body_instruction(tmp_path: Path) -> None:
    path = md(
        tmp_path,
        "---\nname: writer\ndescription: Writes\ntask: 'Topic: {{ message }}'\n"
        "variables:\n  tone: warm\noptions:\n  max_tokens: 50\n"
        "examples:\n  - user: a\n    assistant: b\nallow_images: false\n---\n\n"
        "# Role\n\nYou write in a {{ tone }} tone.\n",
    )
    template = load_template(path)
    check_template(template)
    assert (template.name, template.description, template.allow_images) == (
        "writer",
        "Writes",
        False,
    )
    assert template.options.max_tokens == 50
    messages = build_messages(template, "{{ tone }} cats", variables={"tone": "dry"})
    assert [(m.role, m.text) for m in messages] == [
        ("system", "# Role\n\nYou write in a dry tone."),
        ("user", "a"),
        ("assistant", "b"),
        ("user", "Topic: {{ tone }} cats"),  # the user's text is data, never rendered
    ]


def test_instruction_may_be_a_front_matter_field_without_a_body(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\ninstruction: Be brief.\n---\n\n")
    assert build_messages(load_template(path), "x")[0].text == "Be brief."


def test_unknown_field_in_front_matter(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\ntemprature: 0.5\n---\nBody\n")
    assert problem(path) == f"{path}:3:1: temprature: unknown field"


def test_type_error_in_front_matter(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\noptions:\n  max_tokens: lots\n---\nBody\n")
    assert problem(path).startswith(f"{path}:4:15: options.max_tokens: Input should be")


def test_yaml_syntax_error_in_front_matter(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\n- item\n---\nBody\n")
    assert problem(path).startswith(f"{path}:3:1: YAML syntax error")


def test_jinja_syntax_error_in_body_counts_front_matter_lines(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\ndescription: d\n---\nline one\nline two\nline {{ three\n")
    assert problem(path).startswith(f"{path}:7:1: instruction: template syntax error")


def test_undefined_variable_in_body_is_located_on_its_line(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\n---\n\nHello.\nI am {{ who }}.\n")
    assert problem(path, render=True) == f"{path}:6:1: instruction: 'who' is undefined"


def test_type_error_in_body_is_located_on_its_line(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\nvariables:\n  n: 1\n---\nA\nB {{ n + 'x' }}\n")
    assert problem(path, render=True) == (
        f"{path}:7:1: instruction: TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    )


def test_undefined_variable_in_front_matter_task(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\ntask: 'Q: {{ nope }}'\n---\nBody\n")
    assert problem(path, render=True) == f"{path}:3:7: task: 'nope' is undefined"


def test_missing_instruction_points_at_the_front_matter(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\n---\n")
    assert problem(path) == f"{path}:2:1: instruction: Field required"


def test_instruction_given_twice(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\ninstruction: one\n---\ntwo\n")
    assert problem(path).startswith(f"{path}:3:1: instruction: given twice")


def test_no_front_matter(tmp_path: Path) -> None:
    path = md(tmp_path, "# Just Markdown\n")
    assert problem(path).startswith(f"{path}:1:1: a Markdown template starts with YAML front")


def test_unclosed_front_matter(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: t\nBody\n")
    assert problem(path) == (
        f"{path}:1:1: the front matter is not closed: add a line '---' after the fields"
    )


def test_readme_in_a_template_folder_is_not_a_template(prompts_dir: Path) -> None:
    (prompts_dir / "README.md").write_text("# Our templates\n")
    assert check_directory(prompts_dir).problems == []
    assert not PromptLibrary(prompts_dir).errors


def test_library_serves_markdown_and_keeps_last_good(tmp_path: Path) -> None:
    path = md(tmp_path, "---\nname: m\n---\nfirst\n")
    library = PromptLibrary(tmp_path)
    assert library.get("m").instruction.strip() == "first"  # type: ignore[union-attr]
    path.write_text("---\nname: m\n---\nsecond {{ oops\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert library.get("m").instruction.strip() == "first"  # type: ignore[union-attr]
    assert str(library.errors[path]).startswith(f"{path}:4:1: instruction: template syntax")


def test_readme_examples_are_valid_and_equivalent(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Prompt templates", 1)[1].split("\n## ", 1)[0]
    yaml_text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    md_text = section.split("```markdown\n", 1)[1].split("```", 1)[0]
    from_yaml = load_template(md(tmp_path, yaml_text, "d.yaml"))
    from_md = load_template(md(tmp_path, md_text, "d.md"))
    check_template(from_yaml)
    check_template(from_md)
    same = {"name", "description", "task", "variables", "options", "examples", "allow_images"}
    assert from_yaml.model_dump(include=same) == from_md.model_dump(include=same)
    assert build_messages(from_md, "x")[0].text.startswith(build_messages(from_yaml, "x")[0].text)
