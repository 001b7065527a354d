"""The suite file: what to run (templates × models × cases) and what the replies must satisfy.

:func:`load_suite` reports every problem as ``path:line:column: message``, like ``fmbot prompts
check`` does for templates: YAML and field errors, unknown templates, template files with
problems, model specs or credentials that do not work, a cases table that cannot be read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from bot.batch import table
from bot.batch.job import check_columns
from bot.batch.model import batch_settings
from bot.batch.runner import MESSAGE_COLUMN
from bot.errors import ConfigError, KnowledgeError, PromptError
from bot.eval.assertions import Assertion
from bot.kb.index import kb_file
from bot.prompts.library import PromptLibrary
from bot.prompts.loader import file_problems
from bot.prompts.source import SourceMap, is_template_file, parse_yaml_file
from bot.prompts.template import PromptTemplate
from bot.settings import Settings

Scalar = str | int | float | bool
#: The judge's prompt: a shipped template authors can edit (FMBOT_PROMPTS_DIR).
JUDGE_TEMPLATE = "llm-rubric"
#: A cases table's optional column of each row's own assertions (JSON), like inline `assert`.
ASSERT_COLUMN = "assert"


class Case(BaseModel):
    """One inline case: a user message, template variables and assertions of its own."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    message: str = Field(min_length=1)
    vars: dict[str, Scalar] = Field(default_factory=dict)
    assertions: list[Assertion] = Field(default_factory=list, alias="assert")
    description: str = ""


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    description: str = ""
    #: Template names (FMBOT_PROMPTS_DIR) or files (relative to the suite): versions side by side.
    templates: list[str] = Field(min_length=1)
    #: Model specs; empty: FMBOT_TEXT_MODEL.
    models: list[str] = Field(default_factory=list)
    #: A table (.jsonl, .csv, .parquet with a 'message' column, relative to the suite) or cases.
    cases: str | list[Case]
    vars: dict[str, Scalar] = Field(default_factory=dict)
    assertions: list[Assertion] = Field(default_factory=list, alias="assert")
    threshold: float = Field(default=1.0, ge=0, le=1)
    judge: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _unquoted_specs(cls, value: Any) -> Any:
        # YAML reads an unquoted `- echo:` as the mapping {"echo": None}: the spec was meant.
        if isinstance(value, list):
            return [_spec(item) for item in value]
        return value

    @field_validator("judge", mode="before")
    @classmethod
    def _unquoted_judge(cls, value: Any) -> Any:
        return _spec(value)


def _spec(item: Any) -> Any:
    if isinstance(item, dict) and len(item) == 1:
        key, value = next(iter(item.items()))
        if isinstance(key, str) and value is None:
            return f"{key}:"
    return item


_ASSERTIONS = TypeAdapter(list[Assertion])


@dataclass(frozen=True, slots=True)
class Version:
    """One template version: as the suite names it, and what was loaded."""

    ref: str
    template: PromptTemplate
    source: str  # the file's text, recorded with the run

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class CaseRow:
    """A case as the runner takes it (message and variables) plus its own assertions."""

    values: dict[str, object]
    assertions: tuple[Assertion, ...]


@dataclass
class LoadedSuite:
    path: Path
    suite: Suite
    versions: list[Version]
    models: list[str]
    cases: list[CaseRow]
    judge: str | None
    judge_template: Version | None = None
    problems: list[PromptError] = field(default_factory=list)


def _is_file_ref(ref: str) -> bool:
    return "/" in ref or "\\" in ref or is_template_file(Path(ref))


def resolve_version(
    ref: str, base: Path, library: PromptLibrary | None, where: str
) -> tuple[Version | None, list[PromptError]]:
    if _is_file_ref(ref):
        path = base / ref
        if not path.is_file():
            return None, [PromptError(f"templates: no such template file {path}", where)]
        template, problems = file_problems(path)
        if template is None:
            # The file's own problems, at their own path:line:column.
            return None, problems or [PromptError(f"templates: {path} is not valid", where)]
        return Version(ref, template, path.read_text(encoding="utf-8-sig")), []
    template = library.get(ref) if library is not None else None
    if template is None or template.source is None:
        names = ", ".join(t.name for t in library.all()) if library is not None else ""
        return None, [
            PromptError(
                f"templates: no valid template named {ref!r} (valid: {names or 'none'}); give a "
                "name from `fmbot prompts list` or a file path",
                where,
            )
        ]
    return Version(ref, template, template.source.read_text(encoding="utf-8-sig")), []


def _validation_problems(
    exc: ValidationError, smap: SourceMap, data: dict[str, Any]
) -> list[PromptError]:
    # ``cases`` is a file or a list: report only the branch the author wrote.
    other = "list[Case]" if isinstance(data.get("cases"), str) else "str"
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if loc[:2] == ("cases", other):
            continue
        # A union (cases: file or list) reports each branch; name the field once, plainly.
        loc = tuple(p for p in loc if p not in ("str", "list[Case]"))
        name = ".".join(str(p) for p in loc)
        unknown = err["type"] == "extra_forbid" or err["type"] == "extra_forbidden"
        message = "unknown field" if unknown else err["msg"].removeprefix("Value error, ")
        problems.append(PromptError(f"{name}: {message}", smap.field(loc, key=unknown)))
    # The two branches of a union report the same place twice; keep one of each.
    unique: dict[str, PromptError] = {str(p): p for p in problems}
    return list(unique.values())


def _table_cases(path: Path, where: str) -> tuple[list[CaseRow], list[PromptError]]:
    try:
        data = table.read_input(path)
        check_columns(data.columns, path)
    except ConfigError as exc:
        return [], [PromptError(f"cases: {exc.accepted}", where)]
    rows, problems = [], []
    for number, row in enumerate(data.rows):
        values = {k: v for k, v in row.items() if k != ASSERT_COLUMN}
        try:
            own = _row_assertions(row.get(ASSERT_COLUMN))
        except (ValueError, ValidationError) as exc:
            detail = str(exc).replace("\n", " ")
            problems.append(
                PromptError(
                    f"cases: row {number} of {path.name}: its {ASSERT_COLUMN!r} cell is not a "
                    f"JSON list of assertions ({detail[:500]})",
                    where,
                )
            )
            own = ()
        rows.append(CaseRow(values, own))
    return rows, problems


def _row_assertions(cell: object) -> tuple[Assertion, ...]:
    """A table row's own assertions: its ``assert`` cell, JSON (a list of assertions or one)."""
    if cell is None or (isinstance(cell, str) and not cell.strip()):
        return ()
    found = json.loads(cell) if isinstance(cell, str) else cell
    items = found if isinstance(found, list) else [found]
    return tuple(_ASSERTIONS.validate_python(items))


def _inline_cases(cases: list[Case]) -> list[CaseRow]:
    return [CaseRow({MESSAGE_COLUMN: c.message, **c.vars}, tuple(c.assertions)) for c in cases]


def _position(problem: PromptError) -> tuple[str, int, int]:
    path, _, rest = (problem.location or "").rpartition(":")
    path, _, line = path.rpartition(":")
    try:
        return path, int(line), int(rest)
    except ValueError:
        return path, 0, 0


def _strings(value: Any) -> list[tuple[int, str]]:
    """(index, text) of the text items of a list as written (fields that failed validation
    are still checked this far, so one typo does not hide the next problem)."""
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(map(_spec, value)) if isinstance(item, str)]


def load_suite(path: Path, settings: Settings) -> LoadedSuite:
    """The suite in ``path`` with its templates, models and cases; ``problems`` lists what is
    wrong (when any, the rest may be partial and must not be run)."""
    empty = Suite(templates=["-"], cases=[])
    try:
        data, smap = parse_yaml_file(path, "an eval suite")
    except PromptError as exc:
        return LoadedSuite(path, empty, [], [], [], None, problems=[exc])
    suite: Suite | None
    try:
        suite = Suite.model_validate(data)
        problems: list[PromptError] = []
    except ValidationError as exc:
        suite, problems = None, _validation_problems(exc, smap, data)

    base = path.parent
    library = PromptLibrary(settings.prompts_dir) if settings.prompts_dir.is_dir() else None
    versions = []
    for i, ref in _strings(data.get("templates")):
        version, found = resolve_version(ref, base, library, smap.field(("templates", i)))
        problems += found
        if version is not None:
            versions.append(version)
            problems += _knowledge_problems(version, settings, smap.field(("templates", i)))

    models = [spec for _, spec in _strings(data.get("models"))] or [settings.text_model]
    for i, spec in _strings(data.get("models")):
        try:
            batch_settings(spec, False)  # the spec and its credentials
        except ConfigError as exc:
            problems.append(PromptError(f"models: {exc.accepted}", smap.field(("models", i))))

    judge = _spec(data.get("judge"))
    if isinstance(judge, str):
        try:
            batch_settings(judge, False)
        except ConfigError as exc:
            problems.append(PromptError(f"judge: {exc.accepted}", smap.field(("judge",))))

    cases: list[CaseRow] = []
    if isinstance(data.get("cases"), str):
        cases, found = _table_cases(base / data["cases"], smap.field(("cases",)))
        problems += found
    elif suite is not None and isinstance(suite.cases, list):
        cases = _inline_cases(suite.cases)
        if not cases:
            problems.append(PromptError("cases: give at least one case", smap.field(("cases",))))

    judge_version = None
    if suite is not None:
        judge_version = _judge_problems(suite, cases, base, library, settings, smap, problems)
        problems += _cites_problems(suite, cases, versions, smap)
    problems.sort(key=_position)
    if suite is None:
        return LoadedSuite(path, empty, versions, models, cases, None, problems=problems)
    return LoadedSuite(path, suite, versions, models, cases, suite.judge, judge_version, problems)


def uses(suite: Suite, cases: list[CaseRow], kind: str) -> bool:
    """Whether an assertion of type ``kind`` applies to some case."""
    return any(a.type == kind for a in suite.assertions) or any(
        a.type == kind for c in cases for a in c.assertions
    )


def _first_use(suite: Suite, kind: str, smap: SourceMap) -> str:
    """Where the suite first names an assertion of type ``kind`` (its cases table if there)."""
    for i, a in enumerate(suite.assertions):
        if a.type == kind:
            return smap.field(("assert", i))
    if isinstance(suite.cases, list):
        for ci, case in enumerate(suite.cases):
            for ai, a in enumerate(case.assertions):
                if a.type == kind:
                    return smap.field(("cases", ci, "assert", ai))
    return smap.field(("cases",))


def _knowledge_problems(version: Version, settings: Settings, where: str) -> list[PromptError]:
    """A knowledge template's cases retrieve passages as the bot does: its knowledge bases
    must be built (FMBOT_EMBED_MODEL is checked with the settings)."""
    template = version.template
    if not template.knowledge:
        return []
    problems = []
    for name in template.knowledge:
        try:
            built = kb_file(settings.knowledge_dir, name).is_file()
        except KnowledgeError as exc:
            problems.append(PromptError(f"templates: {version.ref}: {exc}", where))
            continue
        if not built:
            problems.append(
                PromptError(
                    f"templates: {version.ref} answers from knowledge base {name!r}, which is "
                    f"not built in {settings.knowledge_dir}; build it with: fmbot kb add {name} "
                    "PATH...",
                    where,
                )
            )
    return problems


def _cites_problems(
    suite: Suite,
    cases: list[CaseRow],
    versions: list[Version],
    smap: SourceMap,
) -> list[PromptError]:
    """``cites`` checks the passages a knowledge template retrieved: every version must have
    ``knowledge``. (``similar``'s embedder, FMBOT_EMBED_MODEL, is checked with the settings;
    its credentials when the run connects.)"""
    problems = []
    ungrounded = [v.ref for v in versions if not v.template.knowledge]
    if uses(suite, cases, "cites") and ungrounded:
        problems.append(
            PromptError(
                f"cites: checks the passages a knowledge-base template retrieved, but "
                f"{', '.join(ungrounded)} has no `knowledge:`",
                _first_use(suite, "cites", smap),
            )
        )
    return problems


def _judge_problems(
    suite: Suite,
    cases: list[CaseRow],
    base: Path,
    library: PromptLibrary | None,
    settings: Settings,
    smap: SourceMap,
    problems: list[PromptError],
) -> Version | None:
    """The judge's template when llm-rubric assertions need it; its problems go to
    ``problems``."""
    if not uses(suite, cases, "llm-rubric"):
        return None
    if suite.judge is None:
        problems.append(
            PromptError(
                "judge: llm-rubric assertions need a judge model; add e.g. "
                "`judge: openai:gpt-4o-mini`",
                smap.at(1),
            )
        )
    where = smap.field(("judge",))
    version, found = resolve_version(JUDGE_TEMPLATE, base, library, where)
    if found:
        problems.append(
            PromptError(
                f"judge: the judge's prompt, template {JUDGE_TEMPLATE!r}, is not valid or not in "
                f"{settings.prompts_dir}; copy the shipped prompts/{JUDGE_TEMPLATE}.yaml there "
                "(`fmbot prompts check` shows what is wrong with it)",
                where,
            )
        )
    return version


def as_run(loaded: LoadedSuite) -> str:
    """The suite as run, as YAML: every field resolved (models, cases) and the source of every
    template version, so a run records exactly what produced it."""
    import yaml

    data: dict[str, Any] = loaded.suite.model_dump(by_alias=True, exclude_none=True, mode="json")
    data["models"] = loaded.models
    data["template_sources"] = {v.ref: v.source for v in loaded.versions}
    if loaded.judge_template is not None:
        data["judge_template_source"] = loaded.judge_template.source
    data["resolved_cases"] = [
        {
            "values": json.loads(json.dumps(c.values, default=str)),
            "assert": [a.model_dump(exclude_none=True) for a in c.assertions],
        }
        for c in loaded.cases
    ]
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
