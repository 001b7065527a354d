"""A cell shown whole (the web playground's Evaluate view): the exact messages it sent, rendered
again as the runner rendered them (the case's values, the suite's vars, its recorded passages)."""

from __future__ import annotations

from bot.batch.runner import make_cases, render_case
from bot.errors import FmbotError
from bot.eval.run import Cell, cell_value
from bot.eval.suite import LoadedSuite, Version
from bot.events import Message
from bot.kb.index import Hit


def _hits(passages: list[dict[str, object]] | None) -> tuple[Hit, ...]:
    return tuple(
        Hit(
            source=str(p.get("source", "")),
            heading=str(p.get("heading", "")),
            text=str(p.get("text", "")),
            score=float(str(p.get("score", 0.0))),
            chunk_id=int(str(p.get("chunk", 0))),
            kb=str(p.get("kb", "")),
        )
        for p in passages or []
    )


def cell_messages(
    loaded: LoadedSuite, version: Version, cell: Cell, stable_prefix: bool = False
) -> tuple[list[Message], str | None]:
    """(the messages ``cell`` sent, None) or ([], why they cannot be rendered: the case's
    values do not fit the template, which is also why the cell failed)."""
    fixed = {k: str(cell_value(v)) for k, v in loaded.suite.vars.items()}
    values = {k: cell_value(v) for k, v in loaded.cases[cell.key.case].values.items()}
    [case] = make_cases([values], fixed)
    try:
        messages = render_case(version.template, fixed, case, _hits(cell.passages), stable_prefix)
    except (FmbotError, ValueError) as exc:
        return [], str(exc)
    return messages, None
