"""Rendering templates in a sandbox. The user's text is passed as data and never parsed as Jinja."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bot.errors import PromptError
from bot.events import Message, Source
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


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved passage as templates see it: ``{{ p.n }}``, ``p.text``, ``p.source``,
    ``p.heading`` (``n`` numbers the sources line of the reply)."""

    n: int
    text: str
    source: str
    heading: str

    @property
    def label(self) -> str:
        return Source(self.n, self.source, self.heading).label


@functools.lru_cache(maxsize=1024)
def uses_variable(source: str, name: str) -> bool:
    """Whether template text ``source`` reads variable ``name`` (False if it does not parse).
    Cached: every turn asks (where the passages go), and the analysis runs Jinja's code
    generator over the parsed template, most of a turn's CPU with the echo model."""
    try:
        return name in meta.find_undeclared_variables(environment.parse(source))
    except TemplateSyntaxError:
        return False


IN_INSTRUCTION = "in the instruction, where it places {{ knowledge }}"
IN_TASK = "in the user message, where the task places {{ knowledge }}"
CONTEXT_BLOCK = "in a Context block before the user message"


def knowledge_placement(template: PromptTemplate, stable_prefix: bool) -> str:
    """Where a turn's passages go (``fmbot prompts render`` says it; build_messages does it)."""
    if uses_variable(template.task, "knowledge"):
        return IN_TASK
    if not stable_prefix and uses_variable(template.instruction, "knowledge"):
        return IN_INSTRUCTION
    return CONTEXT_BLOCK


def context_block(passages: Sequence[Passage]) -> str:
    """The passages for a template that does not place ``{{ knowledge }}`` itself."""
    parts = [f"[{p.n}] {p.label}\n{p.text}" for p in passages]
    return "Context (cite passages as [n]):\n\n" + "\n\n".join(parts)


def build_messages(
    template: PromptTemplate,
    message: str,
    history: Sequence[Message] = (),
    variables: Mapping[str, object] | None = None,
    *,
    knowledge: Sequence[Passage] | None = None,
    stable_prefix: bool = False,
) -> list[Message]:
    """The exact messages for one turn: instruction, few-shot examples, history, the task.

    A template with ``knowledge:`` gets the retrieved passages (``knowledge``, none if None)
    as ``{{ knowledge }}`` in the instruction and the task; where neither places them, a
    "Context" block goes before the task. With ``stable_prefix`` (a model that reuses its
    cached prompt prefix: the local one) passages never go into the instruction: they change
    every turn and would make it compute the whole prompt again."""
    values: dict[str, object] = {**template.variables, **(variables or {})}
    where = str(template.source or template.name)
    passages = list(knowledge or [])
    grounded = bool(template.knowledge)
    in_instruction = knowledge_placement(template, stable_prefix) == IN_INSTRUCTION
    if grounded:
        # The local model sees an empty list there; its passages follow in the task.
        values["knowledge"] = passages if in_instruction else []
    instruction = render_text(template.instruction, values, where + " (instruction)", "instruction")
    out = [Message("system", instruction)]
    for example in template.examples:
        out.append(Message("user", example.user))
        out.append(Message("assistant", example.assistant))
    out.extend(history)
    task_values = {**values, "message": message}
    if grounded:
        task_values["knowledge"] = passages
    task = render_text(template.task, task_values, where + " (task)", "task")
    if passages and knowledge_placement(template, stable_prefix) == CONTEXT_BLOCK:
        task = f"{context_block(passages)}\n\n{task}"
    out.append(Message("user", task))
    return out
