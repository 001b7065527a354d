"""Template files as data plus a map back to lines and columns, for YAML and Markdown files.

A ``.yaml``/``.yml`` file is a mapping of fields. A ``.md`` file starts with YAML front matter
between two ``---`` lines; the Markdown body after it is the ``instruction``. Either way every
problem can be pointed at ``path:line:column`` of the file as the author sees it, so front-matter
lines and body lines are counted from the top of the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bot.errors import PromptError

YAML_SUFFIXES = (".yaml", ".yml")
MARKDOWN_SUFFIXES = (".md",)
TEMPLATE_SUFFIXES = YAML_SUFFIXES + MARKDOWN_SUFFIXES
#: Markdown files that document a folder rather than define a template.
NOT_TEMPLATES = frozenset({"readme.md"})
#: The field a Markdown body fills.
BODY_FIELD = "instruction"
_FENCE = "---"


def is_template_file(path: Path) -> bool:
    return path.suffix in TEMPLATE_SUFFIXES and path.name.lower() not in NOT_TEMPLATES


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Where fields of one file are. Lines and columns are 1-based, as editors show them."""

    path: Path
    root: yaml.Node | None
    #: Lines before the YAML text: 0 for a YAML file, 1 (the opening ``---``) for Markdown.
    yaml_offset: int = 0
    #: First line of the Markdown body, when the body is the instruction.
    body_line: int | None = None

    def at(self, line: int, column: int = 1) -> str:
        return f"{self.path}:{line}:{column}"

    def _mark(self, node: yaml.Node | None) -> str:
        if node is None:
            return self.at(1 + self.yaml_offset)
        mark = node.start_mark
        return self.at(mark.line + 1 + self.yaml_offset, mark.column + 1)

    def field(self, loc: tuple[Any, ...], *, key: bool = False) -> str:
        """Location of the value at ``loc`` (or its key, for unknown fields), else its parent."""
        if self.body_line is not None and loc[:1] == (BODY_FIELD,):
            return self.at(self.body_line)
        return self._mark(_node_for(self.root, loc, key=key))

    def text_line(self, name: str, lineno: int) -> str:
        """Location of line ``lineno`` (1-based) of the Jinja text in field ``name``."""
        if self.body_line is not None and name == BODY_FIELD:
            return self.at(self.body_line + lineno - 1)
        node = _node_for(self.root, (name,))
        if not isinstance(node, yaml.ScalarNode):
            return self._mark(node)
        if node.style in ("|", ">"):
            # A block scalar's text starts on the line after its indicator.
            return self.at(node.start_mark.line + 1 + self.yaml_offset + lineno)
        if lineno == 1:
            return self._mark(node)  # inline value: point at its first character
        return self.at(node.start_mark.line + self.yaml_offset + lineno)


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


def _parse_yaml(text: str, path: Path, offset: int) -> tuple[Any, yaml.Node | None]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (
            f"{path}:{mark.line + 1 + offset}:{mark.column + 1}"
            if mark
            else f"{path}:{1 + offset}:1"
        )
        raise PromptError(f"YAML syntax error: {exc.problem or exc}", where) from exc
    except yaml.reader.ReaderError as exc:
        # Not a MarkedYAMLError: it carries a character offset, not a line and column.
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        raise PromptError(
            f"YAML syntax error: control character U+{exc.character:04X} is not allowed; "
            "in a double-quoted value write it as an escape (e.g. \\e for ESC)",
            f"{path}:{line + offset}:{column}",
        ) from exc
    return data, root


def _split_front_matter(source: str, path: Path) -> tuple[str, str, int]:
    """(front matter, body, 1-based line where the body starts) of a Markdown template."""
    lines = source.splitlines(keepends=True)
    if not lines or lines[0].strip() != _FENCE:
        raise PromptError(
            "a Markdown template starts with YAML front matter: put a line '---', the fields "
            "(name, description, ...), another '---', then the instruction",
            f"{path}:1:1",
        )
    for i in range(1, len(lines)):
        if lines[i].rstrip() in (_FENCE, "..."):
            return "".join(lines[1:i]), "".join(lines[i + 1 :]), i + 2
    raise PromptError(
        "the front matter is not closed: add a line '---' after the fields", f"{path}:1:1"
    )


def _yaml_mapping(source: str, path: Path, what: str) -> tuple[dict[str, Any], SourceMap]:
    data, root = _parse_yaml(source, path, 0)
    if not isinstance(data, dict):
        raise PromptError(f"{what} must be a YAML mapping of fields", f"{path}:1:1")
    return data, SourceMap(path, root)


def parse_yaml_file(path: Path, what: str) -> tuple[dict[str, Any], SourceMap]:
    """A YAML file that holds a mapping (``what`` names it in errors: "an eval suite"), with
    its source map; PromptError locates unreadable files and syntax errors."""
    try:
        source = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read the file: {exc}", f"{path}:1:1") from exc
    return _yaml_mapping(source, path, what)


def parse_file(path: Path) -> tuple[dict[str, Any], SourceMap]:
    """The file's fields (Markdown body as ``instruction``) and its source map.

    Raises PromptError for unreadable files, syntax errors and a body that clashes with an
    ``instruction`` field; field values are validated later, against :class:`PromptTemplate`.
    """
    try:
        source = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read the file: {exc}", f"{path}:1:1") from exc
    if path.suffix not in MARKDOWN_SUFFIXES:
        return _yaml_mapping(source, path, "a template")

    front, body, body_line = _split_front_matter(source, path)
    data, root = _parse_yaml(front, path, 1)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PromptError("the front matter must be a YAML mapping of fields", f"{path}:2:1")
    if not body.strip():
        # No body: the instruction may still be a front-matter field (located there).
        return data, SourceMap(path, root, yaml_offset=1)
    smap = SourceMap(path, root, yaml_offset=1, body_line=body_line)
    if BODY_FIELD in data:
        where = SourceMap(path, root, yaml_offset=1).field((BODY_FIELD,), key=True)
        raise PromptError(
            f"{BODY_FIELD}: given twice, in the front matter and as the Markdown body; "
            "keep one (the body is usually easier to edit)",
            where,
        )
    return {**data, BODY_FIELD: body}, smap
