"""Checking and saving a template's source: the checks of ``fmbot prompts check``, then an
atomic write into the prompts folder (running bots hot-reload it; a reader never sees half).

Blocking file work: the routes run these functions in a thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bot.errors import PromptError
from bot.prompts.library import PromptLibrary
from bot.prompts.loader import file_problems
from bot.prompts.source import TEMPLATE_SUFFIXES, parse_file
from bot.prompts.template import PromptTemplate

#: A template name (PromptTemplate.name), never a path: no slash, no leading dot.
NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem of a source, at the line and column an editor shows (1-based)."""

    line: int
    column: int
    message: str

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def problem(error: PromptError) -> Problem:
    parts = (error.location or "").rsplit(":", 2)
    try:
        return Problem(int(parts[-2]), int(parts[-1]), error.detail)
    except (IndexError, ValueError):
        return Problem(1, 1, error.detail)


def file_of(library: PromptLibrary, name: str) -> Path:
    """The file of template ``name``: the loaded one's, else one named after it (a file that
    does not load yet, being fixed), else a new ``NAME.yaml``."""
    template = library.get(name)
    if template is not None and template.source is not None:
        return template.source
    for suffix in TEMPLATE_SUFFIXES:
        path = library.directory / f"{name}{suffix}"
        if path.is_file():
            return path
    return library.directory / f"{name}.yaml"


def draft(source: str, path: Path, name: str) -> tuple[PromptTemplate | None, list[Problem]]:
    """``source`` checked as if saved as ``path``: the template (None when it has problems) and
    every problem, with a name other than ``name`` among them."""
    with tempfile.TemporaryDirectory(prefix="fmbot-draft-") as folder:
        copy = Path(folder) / path.name  # same suffix: YAML or Markdown front matter
        copy.write_text(source, encoding="utf-8")
        template, problems = file_problems(copy)
        found = [problem(p) for p in problems]
        if template is not None and template.name != name:
            _, smap = parse_file(copy)
            at = problem(PromptError("", smap.field(("name",))))
            found.append(
                Problem(
                    at.line,
                    at.column,
                    f"name: this is template {name!r}; keep `name: {name}` "
                    f"(save it under {template.name!r} to make a new one)",
                )
            )
    return (None if found else template), found


def save(path: Path, source: str) -> None:
    """Write ``source`` to ``path`` atomically: a temporary file beside it (not a template
    file, so no library loads it), flushed, then renamed over it."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(source)
            file.flush()
            os.fsync(file.fileno())
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
