"""Rendering templates in a sandbox. The user's text is passed as data and never parsed as Jinja."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bot.errors import PromptError
from bot.events import Message
from bot.prompts.template import PromptTemplate

# Autoescape is off on purpose: prompts are plain text, not HTML.
environment = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
)


def render_text(source: str, variables: Mapping[str, object], where: str) -> str:
    try:
        return environment.from_string(source).render(**variables).strip()
    except TemplateSyntaxError as exc:
        raise PromptError(exc.message or str(exc), f"{where}:{exc.lineno}") from exc
    except TemplateError as exc:
        raise PromptError(str(exc), where) from exc
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise PromptError(f"{type(exc).__name__}: {exc}", where) from exc


def build_messages(
    template: PromptTemplate,
    message: str,
    history: Sequence[Message] = (),
    variables: Mapping[str, object] | None = None,
) -> list[Message]:
    """The exact messages for one turn: instruction, few-shot examples, history, the task."""
    values: dict[str, object] = {**template.variables, **(variables or {})}
    where = str(template.source or template.name)
    out = [Message("system", render_text(template.instruction, values, where + " (instruction)"))]
    for example in template.examples:
        out.append(Message("user", example.user))
        out.append(Message("assistant", example.assistant))
    out.extend(history)
    task = render_text(template.task, {**values, "message": message}, where + " (task)")
    out.append(Message("user", task))
    return out
