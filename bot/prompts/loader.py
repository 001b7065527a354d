"""Reading template files, with every problem reported as ``path:line:column: message``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jinja2 import TemplateSyntaxError
from pydantic import ValidationError

from bot.errors import PromptError
from bot.prompts.render import environment, render_text
from bot.prompts.template import PromptTemplate

TEMPLATE_SUFFIXES = (".yaml", ".yml")
_TEXT_FIELDS = ("instruction", "task")


def _node_for(root: yaml.Node | None, loc: tuple[Any, ...], key: bool = False) -> yaml.Node | None:
    """The YAML node at ``loc`` (mapping keys and sequence indexes), or the closest parent.

    With ``key`` the last step returns the mapping key rather than its value (unknown fields).
    """
    node = root
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if k.value == part), None)
            if entry is None:
                return node
            node = entry[0] if key and i == len(loc) - 1 else entry[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            break
    return node


def _where(path: Path, node: yaml.Node | None) -> str:
    if node is None:
        return f"{path}:1:1"
    return f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _text_line(path: Path, node: yaml.Node | None, lineno: int) -> str:
    """Location of line ``lineno`` (1-based) inside a YAML string value."""
    if node is None:
        return f"{path}:{lineno}:1"
    block = isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")
    first = node.start_mark.line + (2 if block else 1)  # 1-based line where the text starts
    return f"{path}:{first + lineno - 1}:1"


def load_template(path: Path) -> PromptTemplate:
    """Parse and validate one template file; raise PromptError with a precise location."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read the file: {exc}", f"{path}:1:1") from exc
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else f"{path}:1:1"
        raise PromptError(f"YAML syntax error: {exc.problem or exc}", where) from exc
    if not isinstance(data, dict):
        raise PromptError("a template must be a YAML mapping of fields", f"{path}:1:1")
    try:
        template = PromptTemplate.model_validate({**data, "source": path})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc)
        unknown = err["type"] == "extra_forbidden"
        message = "unknown field" if unknown else err["msg"]
        where = _where(path, _node_for(root, loc, key=unknown))
        raise PromptError(f"{field}: {message}", where) from exc
    for name in _TEXT_FIELDS:
        try:
            environment.parse(getattr(template, name))
        except TemplateSyntaxError as exc:
            where = _text_line(path, _node_for(root, (name,)), exc.lineno)
            raise PromptError(f"{name}: template syntax error: {exc.message}", where) from exc
    return template


def check_template(template: PromptTemplate) -> None:
    """Render once with a sample message: catches undefined variables and type errors."""
    from bot.prompts.render import build_messages

    try:
        build_messages(template, "sample message")
    except PromptError as exc:
        path = template.source
        if path is None:
            raise
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        field = "task" if "(task)" in (exc.location or "") else "instruction"
        raise PromptError(
            f"{field}: {exc.detail}", _where(path, _node_for(root, (field,)))
        ) from exc


__all__ = ["TEMPLATE_SUFFIXES", "check_template", "load_template", "render_text"]
