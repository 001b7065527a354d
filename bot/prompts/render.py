"""Rendering templates in a sandbox. The user's text is passed as data and never parsed as Jinja."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from types import TracebackType

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bot.errors import PromptError
from bot.events import Message
from bot.prompts.template import PromptTemplate

# Autoescape is off on purpose: prompts are plain text, not HTML.
environment = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
)
_TEMPLATE_FILENAME = "<template>"  # what Jinja names frames of templates made from strings


class RenderError(PromptError):
    """A field failed to render. ``field`` and ``line`` (1-based, within the field's text) let
    the loader turn this into a ``path:line:column`` of the file."""

    def __init__(self, message: str, location: str, field: str, line: int | None) -> None:
        super().__init__(message, location)
        self.field = field
        self.line = line


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line that raised: Jinja rewrites tracebacks so template frames carry it."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


@functools.lru_cache(maxsize=512)
def _compiled(source: str) -> Template:
    """Compiling is most of the cost of rendering; templates change rarely, so reuse them."""
    return environment.from_string(source)


def render_text(
    source: str, variables: Mapping[str, object], where: str, field: str = "text"
) -> str:
    try:
        return _compiled(source).render(**variables).strip()
    except TemplateSyntaxError as exc:
        message = exc.message or str(exc)
        raise RenderError(message, f"{where}:{exc.lineno}", field, exc.lineno) from exc
    except TemplateError as exc:
        raise RenderError(str(exc), where, field, _template_line(exc.__traceback__)) from exc
    except (TypeError, ValueError, ArithmeticError) as exc:
        line = _template_line(exc.__traceback__)
        raise RenderError(f"{type(exc).__name__}: {exc}", where, field, line) from exc


def build_messages(
    template: PromptTemplate,
    message: str,
    history: Sequence[Message] = (),
    variables: Mapping[str, object] | None = None,
) -> list[Message]:
    """The exact messages for one turn: instruction, few-shot examples, history, the task."""
    values: dict[str, object] = {**template.variables, **(variables or {})}
    where = str(template.source or template.name)
    instruction = render_text(template.instruction, values, where + " (instruction)", "instruction")
    out = [Message("system", instruction)]
    for example in template.examples:
        out.append(Message("user", example.user))
        out.append(Message("assistant", example.assistant))
    out.extend(history)
    task = render_text(template.task, {**values, "message": message}, where + " (task)", "task")
    out.append(Message("user", task))
    return out
