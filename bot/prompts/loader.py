"""Reading template files, with every problem reported as ``path:line:column: message``.

:func:`load_template` and :func:`check_template` raise the first problem (what a running bot
needs); :func:`file_problems` and :func:`check_directory` collect all of them (what an author
fixing files needs, see ``fmbot prompts check``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError
from pydantic import ValidationError

from bot.errors import PromptError
from bot.prompts.render import Passage, RenderError, environment, render_text
from bot.prompts.source import TEMPLATE_SUFFIXES, SourceMap, is_template_file, parse_file
from bot.prompts.template import PromptTemplate

_TEXT_FIELDS = ("instruction", "task")
_SAMPLE_MESSAGE = "sample message"
_SAMPLE_PASSAGE = Passage(1, "sample passage", "sample.md", "Sample")
_MISSING = "no such file or directory; give a template file or a directory of them"
#: Stand-ins for required fields that are invalid or missing (already reported), so the
#: other fields can still be checked; an empty text renders without problems.
_PLACEHOLDERS: dict[str, object] = {"name": "unnamed", "instruction": ""}


def _validate(path: Path) -> tuple[SourceMap | None, list[PromptError], PromptTemplate | None]:
    """Parse and validate the fields; every validation error is reported, not just the first.

    Also returns the template to check the text of: the template itself when the fields are
    valid, else the template without its invalid fields (None if even that cannot be built), so
    one typo does not hide the next problem."""
    try:
        data, smap = parse_file(path)
    except PromptError as exc:
        return None, [exc], None
    try:
        return smap, [], PromptTemplate.model_validate({**data, "source": path})
    except ValidationError as exc:
        errors = exc.errors()
    problems = []
    for err in errors:
        loc = tuple(err["loc"])
        name = ".".join(str(p) for p in loc)
        unknown = err["type"] == "extra_forbidden"
        message = "unknown field" if unknown else err["msg"]
        problems.append(PromptError(f"{name}: {message}", smap.field(loc, key=unknown)))
    broken = {err["loc"][0] for err in errors if err["loc"]}
    return smap, problems, _without(data, broken, path)


def _without(data: dict[str, Any], broken: set[Any], path: Path) -> PromptTemplate | None:
    """The template with invalid fields dropped (required ones blanked), if that validates."""
    if "variables" in broken:
        return None  # without the declared variables every use of one would look undefined
    rest = {k: v for k, v in data.items() if k not in broken}
    rest.update({k: v for k, v in _PLACEHOLDERS.items() if k in broken})
    try:
        return PromptTemplate.model_validate({**rest, "source": path})
    except ValidationError:
        return None


def _syntax_problems(template: PromptTemplate, smap: SourceMap) -> dict[str, PromptError]:
    """The syntax error of each text field that has one, by field name."""
    problems = {}
    for name in _TEXT_FIELDS:
        try:
            environment.parse(getattr(template, name))
        except TemplateSyntaxError as exc:
            where = smap.text_line(name, exc.lineno)
            problems[name] = PromptError(f"{name}: template syntax error: {exc.message}", where)
    return problems


def _located(exc: RenderError, smap: SourceMap) -> PromptError:
    where = smap.text_line(exc.field, exc.line) if exc.line else smap.field((exc.field,))
    return PromptError(f"{exc.field}: {exc.detail}", where)


def _render_problems(
    template: PromptTemplate, smap: SourceMap | None, skip: Collection[str] = ()
) -> list[PromptError]:
    """Render each field once with the defaults: catches undefined variables and type errors.

    Fields in ``skip`` (syntax errors, already reported) are not rendered."""
    values: dict[str, object] = dict(template.variables)
    if template.knowledge:
        values["knowledge"] = [_SAMPLE_PASSAGE]  # what a turn passes: see build_messages
    fields = (
        ("instruction", template.instruction, values),
        ("task", template.task, {**values, "message": _SAMPLE_MESSAGE}),
    )
    problems: list[PromptError] = []
    for name, text, variables in fields:
        if name in skip:
            continue
        try:
            render_text(text, variables, str(template.source or template.name), name)
        except RenderError as exc:
            problems.append(_located(exc, smap) if smap is not None else exc)
    return problems


def _position(problem: PromptError) -> tuple[int, int]:
    """(line, column) from ``path:line:column``, for listing a file's problems top to bottom."""
    parts = (problem.location or "").rsplit(":", 2)
    try:
        return int(parts[-2]), int(parts[-1])
    except (IndexError, ValueError):
        return 0, 0


def file_problems(path: Path) -> tuple[PromptTemplate | None, list[PromptError]]:
    """The template in ``path`` (None if it cannot be built) and every problem found in it."""
    smap, problems, checkable = _validate(path)
    if checkable is not None and smap is not None:
        syntax = _syntax_problems(checkable, smap)
        problems += [*syntax.values(), *_render_problems(checkable, smap, skip=syntax)]
    return (None if problems else checkable), sorted(problems, key=_position)


def load_template(path: Path) -> PromptTemplate:
    """Parse and validate one template file; raise PromptError with a precise location."""
    smap, problems, template = _validate(path)
    if problems:
        raise problems[0]
    assert template is not None and smap is not None
    syntax = _syntax_problems(template, smap)
    if syntax:
        raise next(iter(syntax.values()))
    return template


def check_template(template: PromptTemplate) -> None:
    """Render once with a sample message: catches undefined variables and type errors."""
    smap: SourceMap | None = None
    if template.source is not None:
        try:
            _, smap = parse_file(template.source)
        except PromptError:
            smap = None  # the file changed under us; report without a file location
    problems = _render_problems(template, smap)
    if problems:
        raise problems[0]


@dataclass
class CheckReport:
    """What ``fmbot prompts check`` prints: valid templates and every problem, by file."""

    files: list[Path] = field(default_factory=list)
    templates: list[PromptTemplate] = field(default_factory=list)
    problems: list[PromptError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def template_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if is_template_file(p) and p.is_file())


def check_paths(paths: list[Path]) -> CheckReport:
    """Check template files and directories of them; two files may not share a name."""
    report = CheckReport()
    for path in paths:
        report.files.extend(template_files(path) if path.is_dir() else [path])
    owners: dict[str, Path] = {}
    for path in report.files:
        if not path.exists():
            # A problem like any other, so the paths given after it are still checked.
            report.problems.append(PromptError(_MISSING, f"{path}:1:1"))
            continue
        template, problems = file_problems(path)
        report.problems.extend(problems)
        # Names are compared even for invalid files: fixing one must not reveal a clash later.
        try:
            data, smap = parse_file(path)
        except PromptError:
            continue
        name = data.get("name")
        first = owners.setdefault(name, path) if isinstance(name, str) else path
        if first != path:
            report.problems.append(
                PromptError(
                    f"name: {name!r} is already the name of {first}; "
                    "names must be unique (rename one)",
                    smap.field(("name",)),
                )
            )
        elif template is not None:
            report.templates.append(template)
    return report


def check_directory(directory: Path) -> CheckReport:
    return check_paths([directory])


__all__ = [
    "TEMPLATE_SUFFIXES",
    "CheckReport",
    "check_directory",
    "check_paths",
    "check_template",
    "file_problems",
    "load_template",
    "render_text",
    "template_files",
]
