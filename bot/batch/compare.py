"""Two batch runs side by side: per-row pairs and a summary, as data and as a static HTML page.

Rows are matched by the ``row`` column (the input row index), so runs over the same input line
up even if one of them failed part-way and was resumed.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from bot.batch import table
from bot.errors import ConfigError

_NEEDED = ("row", "reply", "status")


@dataclass(frozen=True, slots=True)
class RunRow:
    row: int
    message: str
    reply: str | None
    status: str
    error: str | None
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: int | None

    @property
    def tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


@dataclass(frozen=True, slots=True)
class Pair:
    row: int
    message: str
    a: RunRow | None
    b: RunRow | None

    @property
    def changed(self) -> bool:
        if self.a is None or self.b is None:
            return True
        return (self.a.reply, self.a.status) != (self.b.reply, self.b.status)


@dataclass(frozen=True, slots=True)
class RunStats:
    rows: int
    errors: int
    mean_latency_ms: float | None
    mean_input_tokens: float | None
    mean_output_tokens: float | None


@dataclass(frozen=True, slots=True)
class Comparison:
    name_a: str
    name_b: str
    pairs: list[Pair]
    stats_a: RunStats
    stats_b: RunStats

    @property
    def changed(self) -> int:
        return sum(p.changed for p in self.pairs)


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def load_run(path: Path) -> dict[int, RunRow]:
    """A results file of ``fmbot batch run``, by row. Blocking."""
    if not path.is_file():
        raise ConfigError("RUN", str(path), "give a results file written by `fmbot batch run`")
    try:
        data = table.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise ConfigError("RUN", str(path), f"not a readable Parquet file ({exc})") from None
    missing = [c for c in _NEEDED if c not in data.columns]
    if missing:
        raise ConfigError(
            "RUN",
            str(path),
            f"it has no {', '.join(missing)} column(s): give a file written by `fmbot batch run`",
        )
    rows: dict[int, RunRow] = {}
    for i, r in enumerate(data.rows):
        row = _int(r.get("row"))
        row = i if row is None else row
        rows[row] = RunRow(
            row=row,
            message=str(r.get("message") or ""),
            reply=_text(r.get("reply")),
            status=str(r.get("status") or ""),
            error=_text(r.get("error")),
            input_tokens=_int(r.get("input_tokens")),
            output_tokens=_int(r.get("output_tokens")),
            latency_ms=_int(r.get("latency_ms")),
        )
    return rows


def _mean(values: list[int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def stats(rows: dict[int, RunRow]) -> RunStats:
    values = list(rows.values())
    return RunStats(
        rows=len(values),
        errors=sum(r.status != "ok" for r in values),
        mean_latency_ms=_mean([r.latency_ms for r in values]),
        mean_input_tokens=_mean([r.input_tokens for r in values]),
        mean_output_tokens=_mean([r.output_tokens for r in values]),
    )


def compare_runs(path_a: Path, path_b: Path) -> Comparison:
    a, b = load_run(path_a), load_run(path_b)
    pairs = []
    for row in sorted(a.keys() | b.keys()):
        left, right = a.get(row), b.get(row)
        either = left if left is not None else right
        message = either.message if either is not None else ""
        pairs.append(Pair(row, message, left, right))
    return Comparison(str(path_a), str(path_b), pairs, stats(a), stats(b))


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_lines(c: Comparison) -> list[str]:
    a, b = c.stats_a, c.stats_b
    return [
        f"rows: A {a.rows}, B {b.rows}; changed (reply or status): {c.changed}",
        f"errors: A {a.errors}, B {b.errors}",
        f"mean latency ms: A {fmt(a.mean_latency_ms)}, B {fmt(b.mean_latency_ms)}",
        f"mean input tokens: A {fmt(a.mean_input_tokens, 1)}, B {fmt(b.mean_input_tokens, 1)}",
        f"mean output tokens: A {fmt(a.mean_output_tokens, 1)}, B {fmt(b.mean_output_tokens, 1)}",
    ]


# --- HTML ----------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: .4rem .6rem; vertical-align: top; text-align: left; }
td.text { white-space: pre-wrap; max-width: 32rem; }
tr.changed td { background: #fff8e1; }
.error { color: #b00020; }
.num { text-align: right; white-space: nowrap; }
"""


def escape(value: object) -> str:
    """Everything from the files is data: escape it, quotes included (it may sit in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _cell_reply(r: RunRow | None) -> str:
    if r is None:
        return '<td class="text">(no row)</td>'
    if r.status != "ok":
        return f'<td class="text error">{escape(r.error or r.status)}</td>'
    return f'<td class="text">{escape(r.reply)}</td>'


def _pair_of(a: object, b: object) -> str:
    return f"{escape('-' if a is None else a)} / {escape('-' if b is None else b)}"


def to_html(c: Comparison) -> str:
    """A self-contained page; every value from the runs is escaped."""
    rows = []
    for p in c.pairs:
        a, b = p.a, p.b
        rows.append(
            f'<tr class="{"changed" if p.changed else "same"}">'
            f'<td class="num">{p.row}</td><td class="text">{escape(p.message)}</td>'
            f"{_cell_reply(a)}{_cell_reply(b)}"
            f"<td>{_pair_of(a and a.status, b and b.status)}</td>"
            f'<td class="num">{_pair_of(a and a.tokens, b and b.tokens)}</td>'
            f'<td class="num">{_pair_of(a and a.latency_ms, b and b.latency_ms)}</td></tr>'
        )
    return page(
        f"fmbot batch: {c.name_a} vs {c.name_b}",
        c.name_a,
        c.name_b,
        summary_lines(c),
        "<table><thead><tr><th>row</th><th>message</th><th>reply A</th><th>reply B</th>"
        "<th>status A / B</th><th>tokens A / B</th><th>latency ms A / B</th></tr></thead>\n"
        f"<tbody>\n{chr(10).join(rows)}\n</tbody></table>\n",
    )


def page(title: str, name_a: str, name_b: str, summary: list[str], body: str) -> str:
    """A self-contained page comparing runs A and B: ``body`` is HTML already escaped; the
    title, names and summary lines are escaped here."""
    items = "".join(f"<li>{escape(line)}</li>" for line in summary)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n"
        f"<h1>{escape(title)}</h1>\n"
        f"<p>A: <code>{escape(name_a)}</code><br>B: <code>{escape(name_b)}</code></p>\n"
        f"<ul>{items}</ul>\n{body}</body></html>\n"
    )
